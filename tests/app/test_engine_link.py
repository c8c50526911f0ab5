"""RealtimeLink against a real Realtime server over real sockets: the engine's own server with a scripted
backend and the real Silero turn detector, plus a deliberately broken server for the malformed cases."""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import threading
import time

import numpy as np
import pytest
import websockets

from app.engine_link.client import CONNECTED, DISCONNECTED, RealtimeLink
from engine.assembly import detector_factory
from engine.realtime.server import RealtimeServer
from tests.engine.scripted_backend import ScriptedBackend
from tests.speakers import say

TOKEN = "link-test-token"
RATE = 24_000
SCRIPT = ("Hello there.", "This is a long scripted reply.", "It goes on and on.")
SECONDS_PER_WORD = 0.3  # tests/engine/scripted_backend.tone_chunk


class Recorder:
    """Collects what the link's callbacks deliver (on the link's thread) for the test's loop to wait on."""

    def __init__(self):
        self.events: list[dict] = []
        self.statuses: list[tuple[str, str]] = []
        self.audio: list[tuple[str, str, np.ndarray]] = []
        self.threads: set[str] = set()

    def on_event(self, event: dict) -> None:
        self.threads.add(threading.current_thread().name)
        self.events.append(event)

    def on_status(self, state: str, reason: str) -> None:
        self.statuses.append((state, reason))

    def on_audio(self, response_id: str, item_id: str, pcm: np.ndarray) -> None:
        self.threads.add(threading.current_thread().name)
        self.audio.append((response_id, item_id, pcm))

    def of_type(self, event_type: str) -> list[dict]:
        return [e for e in list(self.events) if e["type"] == event_type]

    async def event(self, event_type: str, nth: int = 1, timeout: float = 30) -> dict:
        await until(lambda: len(self.of_type(event_type)) >= nth, timeout, f"{nth} × {event_type}")
        return self.of_type(event_type)[nth - 1]

    async def status(self, state: str, containing: str = "", after: int = 0, timeout: float = 30) -> str:
        def found():
            return next((r for s, r in self.statuses[after:] if s == state and containing in r), None)
        await until(lambda: found() is not None, timeout, f"status {state} {containing!r}")
        return found()


async def until(condition, timeout: float, what: str) -> None:
    """Wait without blocking the loop: the server under test runs on it."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def text_turn(text: str) -> dict:
    return {"type": "conversation.item.create",
            "item": {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}}


@pytest.fixture(scope="module")
def vad_detectors(model_store):
    return detector_factory(model_store)


@pytest.fixture
async def served(vad_detectors):
    backend = ScriptedBackend(phrases=SCRIPT)
    server = RealtimeServer(backend, vad_detectors, TOKEN)
    port = await server.start("127.0.0.1", 0)
    yield backend, f"ws://127.0.0.1:{port}/v1/realtime", server
    await server.stop()


@pytest.fixture
def recorder():
    return Recorder()


@pytest.fixture
async def make_link(recorder):
    links = []

    def make(**options) -> RealtimeLink:
        link = RealtimeLink(recorder.on_event, recorder.on_status, recorder.on_audio, **options)
        links.append(link)
        return link

    yield make
    for link in links:
        await asyncio.to_thread(link.close)  # off the loop, which serves the close handshake


# --- connecting ------------------------------------------------------------------------------------

async def test_session_config_goes_first_on_connect(served, recorder, make_link):
    backend, url, _ = served
    config = {"type": "session.update", "session": {"type": "realtime",
                                                    "instructions": "Answer like a lighthouse keeper."}}
    links = []

    def ask_at_once(state: str, reason: str) -> None:
        recorder.on_status(state, reason)
        if state == CONNECTED:  # the earliest moment the caller can send: still after the session.update
            links[0].send(text_turn("hello"))
            links[0].send({"type": "response.create"})

    link = RealtimeLink(recorder.on_event, ask_at_once, recorder.on_audio, session_update=config)
    links.append(link)
    link.connect(url, TOKEN)
    await recorder.event("response.done")
    kinds = [e["type"] for e in recorder.events]
    assert kinds[:2] == ["session.created", "session.updated"]
    instructions = config["session"]["instructions"]
    assert recorder.of_type("session.updated")[0]["session"]["instructions"] == instructions
    assert backend.requests[0].instructions == instructions  # the reply ran on the new settings
    assert recorder.statuses[:2] == [("connecting", f"connecting to {url}"), ("connected", f"connected to {url}")]
    assert link.connected
    await asyncio.to_thread(link.close)


async def test_text_turn_audio_reaches_on_audio_with_its_response_id(served, recorder, make_link):
    _, url, _ = served
    link = make_link()
    link.connect(url, TOKEN)
    await recorder.event("session.created")
    assert link.send(text_turn("tell me something"))
    assert link.send({"type": "response.create"})
    done = await recorder.event("response.done", timeout=60)
    response_id = recorder.of_type("response.created")[0]["response"]["id"]
    assert done["response"]["status"] == "completed"

    assert recorder.audio and {rid for rid, _, _ in recorder.audio} == {response_id}
    item_id = recorder.of_type("response.output_item.added")[0]["item"]["id"]
    assert {iid for _, iid, _ in recorder.audio} == {item_id}
    pcm = np.concatenate([chunk for _, _, chunk in recorder.audio])
    words = sum(len(p.split()) for p in SCRIPT)
    assert pcm.dtype == np.float32 and abs(pcm.size - words * SECONDS_PER_WORD * RATE) <= 0.01 * RATE
    spectrum = np.abs(np.fft.rfft(pcm))
    assert abs(np.argmax(spectrum) * RATE / pcm.size - 220) < 2  # the scripted 220 Hz tone, decoded intact
    assert np.max(np.abs(pcm)) == pytest.approx(0.2, abs=0.01)

    deltas = recorder.of_type("response.output_audio.delta")
    assert len(deltas) == len(recorder.audio) and all("delta" not in d for d in deltas)  # no payload twice
    transcript = "".join(e["delta"] for e in recorder.of_type("response.output_audio_transcript.delta"))
    assert transcript.split() == " ".join(SCRIPT).split()
    assert recorder.threads == {"realtime-link"}  # callbacks run on the link's thread, as documented


async def test_beta_audio_deltas_are_decoded_too(served, recorder, make_link):
    _, url, _ = served
    link = make_link(session_update={"type": "session.update",
                                     "session": {"modalities": ["text", "audio"], "input_audio_format": "pcm16"}})
    link.connect(url, TOKEN)
    await recorder.event("session.updated")
    link.send(text_turn("hi"))
    link.send({"type": "response.create"})
    await recorder.event("response.done", timeout=60)
    assert recorder.of_type("response.audio.delta") and not recorder.of_type("response.output_audio.delta")
    samples = sum(chunk.size for _, _, chunk in recorder.audio)
    assert samples == pytest.approx(sum(len(p.split()) for p in SCRIPT) * SECONDS_PER_WORD * RATE, abs=0.01 * RATE)


async def test_spoken_audio_is_heard_by_the_server_turn_detector(served, recorder, make_link):
    _, url, _ = served
    link = make_link()
    link.connect(url, TOKEN)
    await recorder.event("session.created")
    speech = np.concatenate([np.zeros(RATE // 2, np.float32), say("Could you read my screen for me?"),
                             np.zeros(RATE, np.float32)])
    for offset in range(0, speech.size, 480):  # 20 ms, as a microphone callback delivers it
        assert link.send_audio(speech[offset:offset + 480])
    started = await recorder.event("input_audio_buffer.speech_started")
    stopped = await recorder.event("input_audio_buffer.speech_stopped")
    detection = recorder.of_type("session.created")[0]["session"]["audio"]["input"]["turn_detection"]
    speech_end_ms = (speech.size - RATE) / RATE * 1000
    print(f"\nspeech 500–{speech_end_ms:.0f} ms; started {started['audio_start_ms']}, stopped "
          f"{stopped['audio_end_ms']} ({detection['prefix_padding_ms']} ms padding, "
          f"{detection['silence_duration_ms']} ms silence window)")
    # The speech begins at 500 ms; the item starts a padding earlier and ends a silence window after it.
    assert started["audio_start_ms"] == pytest.approx(500 - detection["prefix_padding_ms"], abs=150)
    assert stopped["audio_end_ms"] == pytest.approx(speech_end_ms + detection["silence_duration_ms"], abs=250)
    assert started["item_id"] == stopped["item_id"]


# --- losing and finding the server -----------------------------------------------------------------

async def test_reconnects_when_the_server_comes_back_on_the_same_port(vad_detectors, recorder, make_link):
    port = free_port()
    url = f"ws://127.0.0.1:{port}/v1/realtime"
    link = make_link(max_retry_delay_s=0.5)
    assert not link.send(text_turn("too early"))  # never connected: dropped, and the caller knows
    link.connect(url, TOKEN)  # nothing listens yet: the engine is still starting
    reason = await recorder.status(DISCONNECTED)
    assert reason == f"engine not reachable at {url}"

    backend = ScriptedBackend(phrases=SCRIPT)
    server = RealtimeServer(backend, vad_detectors, TOKEN)
    await server.start("127.0.0.1", port)
    await recorder.status(CONNECTED)
    await recorder.event("session.created")

    seen = len(recorder.statuses)
    await server.stop()  # the engine goes away mid-conversation
    reason = await recorder.status(DISCONNECTED, after=seen)
    print(f"\nserver stopped → {reason!r}")
    assert reason.startswith(f"connection to {url} closed (code 1001"), reason  # "going away"
    await recorder.status(DISCONNECTED, "not reachable", after=seen)
    assert not link.connected
    assert not link.send(text_turn("into the void"))
    assert not link.send_audio(np.zeros(480, np.float32))

    seen = len(recorder.statuses)
    server = RealtimeServer(backend, vad_detectors, TOKEN)
    await server.start("127.0.0.1", port)
    back_at = time.monotonic()
    await recorder.status(CONNECTED, after=seen, timeout=10)
    print(f"server back → link connected in {(time.monotonic() - back_at) * 1000:.0f} ms (retries capped at 0.5 s)")
    await recorder.event("session.created", nth=2)
    assert link.send(text_turn("are you back?")) and link.send({"type": "response.create"})
    done = await recorder.event("response.done", timeout=60)
    assert done["response"]["status"] == "completed"
    assert [r.turns[-1].text for r in backend.requests] == ["are you back?"]  # the dropped sends never arrived
    await server.stop()


async def test_wrong_token_is_reported_as_refused(served, recorder, make_link):
    _, url, _ = served
    link = make_link()
    link.connect(url, "not-the-token")
    reason = await recorder.status(DISCONNECTED)
    assert reason.startswith("token refused") and "401" in reason
    assert not link.connected and not recorder.events


async def test_connect_moves_to_a_new_address_with_the_session_settings(served, vad_detectors, recorder, make_link):
    _, url, _ = served
    link = make_link()
    link.connect(url, TOKEN)
    await recorder.event("session.created")
    update = {"type": "session.update", "session": {"type": "realtime", "instructions": "Be brief."}}
    assert link.update_session(update)  # sent now, and remembered for every later connection
    assert (await recorder.event("session.updated"))["session"]["instructions"] == "Be brief."

    other = RealtimeServer(ScriptedBackend(), vad_detectors, "other-token")
    port = await other.start("127.0.0.1", 0)
    new_url = f"ws://127.0.0.1:{port}/v1/realtime"
    link.connect(new_url, "other-token")  # a restarted engine: new port, maybe a new token
    await recorder.event("session.updated", nth=2)
    assert [e["type"] for e in recorder.events[-2:]] == ["session.created", "session.updated"]
    assert recorder.events[-1]["session"]["instructions"] == "Be brief."
    assert link.url == new_url and len(other.sessions) == 1
    await other.stop()


# --- a misbehaving server ----------------------------------------------------------------------------

async def test_malformed_server_messages_are_reported_and_the_link_survives(recorder, make_link):
    async def broken(websocket):
        await websocket.send("{not json")
        await websocket.send(b"\xff\xfe binary")
        await websocket.send("[1, 2]")
        await websocket.send(json.dumps({"type": "response.output_audio.delta", "response_id": "r", "item_id": "i",
                                         "delta": "!!not base64!!"}))
        await websocket.send(json.dumps({"type": "response.output_audio.delta", "response_id": "r", "item_id": "i",
                                         "delta": base64.b64encode(b"\x01\x02\x03").decode()}))
        await websocket.send(json.dumps({"type": "session.created", "session": {}}))
        await websocket.send(json.dumps({"type": "response.output_audio.delta", "response_id": "r1",
                                         "item_id": "i1", "delta": base64.b64encode(b"\x00\x40" * 4).decode()}))
        await websocket.wait_closed()

    async with websockets.serve(broken, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        failing_once = []

        def flaky_on_event(event):
            if not failing_once:  # a callback bug must not take the link down either
                failing_once.append(event)
                raise RuntimeError("bug in the caller")
            recorder.on_event(event)

        link = RealtimeLink(flaky_on_event, recorder.on_status, recorder.on_audio)
        link.connect(f"ws://127.0.0.1:{port}", TOKEN)
        await recorder.event("response.output_audio.delta")
        await asyncio.to_thread(link.close)
    errors = recorder.of_type("error")
    assert [e["error"]["code"] for e in errors] == ["invalid_server_event", "invalid_server_event",
                                                    "invalid_server_audio", "invalid_server_audio"]
    assert failing_once[0]["error"]["code"] == "invalid_server_event"  # the first report, which raised
    assert recorder.of_type("session.created")
    assert len(recorder.audio) == 1 and recorder.audio[0][:2] == ("r1", "i1")
    assert np.allclose(recorder.audio[0][2], 0.5)


# --- the link itself -----------------------------------------------------------------------------------

async def test_close_joins_the_thread_and_is_final(served, recorder):
    _, url, _ = served
    before = {t for t in threading.enumerate() if t.name == "realtime-link"}
    link = RealtimeLink(recorder.on_event, recorder.on_status, recorder.on_audio)
    link.connect(url, TOKEN)
    await recorder.event("session.created")
    await asyncio.to_thread(link.close)  # off the loop: the server must answer the close handshake
    assert {t for t in threading.enumerate() if t.name == "realtime-link"} == before
    assert recorder.statuses[-1] == (DISCONNECTED, "closed")
    assert not link.send({"type": "response.create"})
    await until(lambda: not served[2].sessions, 5, "the server to see the session end")
    with pytest.raises(RuntimeError):
        link.connect(url, TOKEN)
    link.close()  # twice is harmless


async def test_send_audio_is_cheap(served, recorder, make_link):
    _, url, _ = served
    link = make_link()
    link.connect(url, TOKEN)
    await recorder.event("session.created")
    chunk = (0.01 * np.random.default_rng(1).standard_normal(480)).astype(np.float32)  # 20 ms, quiet
    calls = 1000
    started = time.perf_counter()
    for _ in range(calls):
        link.send_audio(chunk)
    per_call_us = (time.perf_counter() - started) / calls * 1e6
    print(f"\nsend_audio: {per_call_us:.1f} µs per 20 ms chunk ({calls} calls)")
    assert per_call_us < 2000  # 50 calls/s leave the caller 20 000 µs each; this is a sliver of it
    assert link.send({"type": "input_audio_buffer.clear"})
    await recorder.event("input_audio_buffer.cleared", timeout=60)  # every append went out before it
    assert not recorder.of_type("error")
