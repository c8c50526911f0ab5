"""Drives fuzz cases (tests/engine/fuzz_events.py) through a real WebSocket and checks every answer, while a
well-behaved session beside it keeps asking questions and checking the replies."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

import websockets

from tests.engine.fuzz_events import Case, Step
from tests.engine.realtime_client import RealtimeTestClient, transcript_of

ANSWER_TIMEOUT_S = 10.0
REPLY_TIMEOUT_S = 120.0  # a whole reply from the real models, on a busy machine


@dataclass
class FuzzTally:
    hostile_sent: int = 0
    setup_sent: int = 0
    errors: int = 0
    closes: Counter = field(default_factory=Counter)  # close code → count
    codes: Counter = field(default_factory=Counter)
    categories: Counter = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)

    @property
    def unanswered(self) -> int:
        return self.hostile_sent - self.errors - sum(self.closes.values())


def is_reply_event(event: dict) -> bool:
    """An event of a response in progress, not an answer to the event just sent."""
    return event["type"].startswith("response.") or (
        event["type"] in ("conversation.item.created", "conversation.item.done")
        and event["item"]["role"] == "assistant")


def check_answer(step: Step, answer: dict) -> str | None:
    """Why `answer` is not the right answer to `step`, or None."""
    if step.expect != "error":
        return None if answer["type"] == step.expect else f"expected {step.expect}, got {answer}"
    if answer["type"] != "error":
        return f"expected an error, got {str(answer)[:300]}"
    error = answer["error"]
    if error.get("code") == "server_error":
        return f"internal error: {error}"
    if step.codes and error.get("code") not in step.codes:
        return f"code {error.get('code')!r} not in {sorted(step.codes)}: {error.get('message', '')[:200]}"
    if error.get("event_id") != step.event_id:
        return f"event_id {str(error.get('event_id'))[:40]!r} echoed, expected {step.event_id!r}"
    if not error.get("message") or len(error["message"]) > 1000:
        return f"error message missing or {len(error.get('message') or '')} characters long"
    if len(json.dumps(answer)) > 4000:
        return f"answer of {len(json.dumps(answer))} bytes to a bad event"
    return None


async def run_lockstep(url: str, token: str, cases: Iterable[Case], tally: FuzzTally) -> None:
    """Each step sent alone and its answer awaited: answers are matched one for one."""
    client = await RealtimeTestClient.connect(url, token)
    try:
        for case in cases:
            tally.categories[case.category] += 1
            case_start = len(client.events)
            for step in case.steps:
                try:
                    if step.payload is None:  # wait for the end of what the case started
                        if not any(e["type"] == step.expect for e in client.events[case_start:]):
                            await client.expect(step.expect, REPLY_TIMEOUT_S)
                        continue
                    await client.send_raw(step.payload)
                    if step.expect == "error":
                        tally.hostile_sent += 1
                    else:
                        tally.setup_sent += 1
                    answer = await client.next_event(ANSWER_TIMEOUT_S)
                    while is_reply_event(answer) and answer["type"] != step.expect:  # a reply streaming meanwhile
                        answer = await client.next_event(ANSWER_TIMEOUT_S)
                except asyncio.TimeoutError:
                    recent = [e["type"] for e in client.events[-6:]]
                    tally.failures.append(f"{case.category}: {str(step.payload)[:160]!r}: no {step.expect} in "
                                          f"time (last events: {recent})")
                    return  # answers can no longer be matched one for one
                if answer["type"] == "error":
                    tally.errors += 1
                    tally.codes[answer["error"].get("code")] += 1
                problem = check_answer(step, answer)
                if problem:
                    tally.failures.append(f"{case.category}: {str(step.payload)[:160]!r}: {problem}")
    finally:
        await client.close()


async def run_flood(url: str, token: str, events: list[str], tally: FuzzTally, *, read_delay_s: float = 0.0) -> None:
    """All events sent as fast as the socket takes them, read concurrently (or only after `read_delay_s`:
    a client that does not read must not make the server buffer without bound)."""
    client = await RealtimeTestClient.connect(url, token)
    ids = [json.loads(e)["event_id"] for e in events]
    answered: list[str] = []

    async def send_all() -> None:
        for event in events:
            await client.send_raw(event)
            tally.hostile_sent += 1

    async def read_all() -> None:
        await asyncio.sleep(read_delay_s)
        while len(answered) < len(events):
            answer = await client.next_event(ANSWER_TIMEOUT_S)
            if answer["type"] == "error":
                tally.errors += 1
                tally.codes[answer["error"].get("code")] += 1
                answered.append(answer["error"].get("event_id"))

    try:
        await asyncio.gather(send_all(), read_all())
    finally:
        await client.close()
    if answered != ids:
        tally.failures.append(f"flood: {len(answered)} answers for {len(ids)} events, or out of order")


async def run_closing(url: str, token: str, payload: bytes | str, as_text: bool, code: int,
                      tally: FuzzTally) -> None:
    """A frame the transport must refuse: the server closes this connection with `code`, and only this one."""
    ws = await websockets.connect(url, additional_headers={"Authorization": f"Bearer {token}"}, max_size=None,
                                  compression=None)
    tally.hostile_sent += 1
    try:
        json.loads(await ws.recv())  # session.created
        with contextlib.suppress(websockets.ConnectionClosed):
            await ws.send(payload, text=as_text)
        with contextlib.suppress(websockets.ConnectionClosed):
            while True:
                await asyncio.wait_for(ws.recv(), ANSWER_TIMEOUT_S)
    finally:
        if ws.state is not websockets.protocol.State.CLOSED:
            await ws.close()
    received = ws.protocol.close_rcvd.code if ws.protocol.close_rcvd else None
    tally.closes[received] += 1
    if received != code:
        tally.failures.append(f"closing frame: close code {received}, expected {code}")


@dataclass
class Companion:
    """A well-behaved session that keeps asking and checks every reply, until stopped."""

    url: str
    token: str
    expected_transcript: str | None = None  # None: any non-empty reply is right
    replies_ok: int = 0
    failures: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    first_reply: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self) -> None:
        client = await RealtimeTestClient.connect(self.url, self.token)
        try:
            await client.send("session.update", session={"type": "realtime",
                                                         "instructions": "Answer in a few words."})
            await client.expect("session.updated")
            turn = 0
            while not self._stop.is_set():
                turn += 1
                started = time.monotonic()
                await client.send("conversation.item.create", item={"type": "message", "role": "user", "content": [
                    {"type": "input_text", "text": f"Question number {turn}: what is two plus two?"}]})
                await client.send("response.create", response={"max_output_tokens": 16})
                events = await client.collect_until("response.done", timeout=120)
                self.latencies.append(time.monotonic() - started)
                done = events[-1]["response"]
                said = transcript_of(events).strip()
                unexpected = [e for e in events if e["type"] == "error"]
                if done["status"] != "completed" or unexpected or not said or (
                        self.expected_transcript is not None and said != self.expected_transcript):
                    self.failures.append(f"turn {turn}: {done['status']}, {said!r}, {unexpected}")
                else:
                    self.replies_ok += 1
                self.first_reply.set()
        finally:
            await client.close()

    def stop(self) -> None:
        self._stop.set()
