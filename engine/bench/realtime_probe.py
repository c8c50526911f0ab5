"""A Realtime client that behaves like a microphone: audio streamed in real time, replies timed on arrival."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from dataclasses import dataclass, field

import numpy as np
import websockets

from engine.audio.pcm import PROTOCOL_RATE, float_to_pcm16
from engine.bench.prompts import SpokenPrompt

CHUNK_MS = 20
LEAD_SILENCE_S = 0.4
MAX_WAIT_S = 60.0
AUDIO_DELTAS = ("response.output_audio.delta", "response.audio.delta")


@dataclass
class TurnTiming:
    prompt: str
    voice: str
    heard: str = ""
    answer: str = ""
    eos_to_speech_stopped_ms: float | None = None
    eos_to_first_audio_ms: float | None = None
    reply_audio_s: float = 0.0
    # Playing from the first delta on, how long the speaker would have waited for audio not yet arrived:
    # a reply that starts early but stutters is not fast.
    stall_ms: float = 0.0



@dataclass
class CancelTiming:
    cancel_to_last_delta_ms: float
    cancel_to_done_ms: float
    deltas_after_cancel: int


@dataclass
class _Listener:
    """Collects every server event with its arrival time."""

    ws: websockets.ClientConnection
    events: list[tuple[float, dict]] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self) -> None:
        try:
            async for message in self.ws:
                self.events.append((time.monotonic(), json.loads(message)))
                self.arrived.set()
        except websockets.ConnectionClosed:
            pass

    async def wait_for(self, predicate, since: int, timeout: float = MAX_WAIT_S) -> tuple[float, dict]:
        deadline = time.monotonic() + timeout
        seen = since
        while True:
            for index in range(seen, len(self.events)):
                stamp, event = self.events[index]
                if predicate(event):
                    return stamp, event
            seen = len(self.events)
            self.arrived.clear()
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no matching event from the engine")
            try:
                await asyncio.wait_for(self.arrived.wait(), left)
            except asyncio.TimeoutError:
                pass


class RealtimeProbe:
    def __init__(self, url: str, token: str, silence_duration_ms: int | None = None):
        self.url, self.token, self.silence_duration_ms = url, token, silence_duration_ms

    async def __aenter__(self) -> RealtimeProbe:
        self.ws = await websockets.connect(self.url, additional_headers={"Authorization": f"Bearer {self.token}"},
                                           max_size=None, compression=None)
        self.listener = _Listener(self.ws)
        self._reader = asyncio.get_running_loop().create_task(self.listener.run())
        await self.listener.wait_for(lambda e: e["type"] == "session.created", 0)
        if self.silence_duration_ms is not None:
            await self._send({"type": "session.update", "session": {"type": "realtime", "audio": {"input": {
                "turn_detection": {"type": "server_vad", "silence_duration_ms": self.silence_duration_ms}}}}})
            await self.listener.wait_for(lambda e: e["type"] == "session.updated", 0)
        return self

    async def __aexit__(self, *exc) -> None:
        await self.ws.close()
        self._reader.cancel()

    async def _send(self, event: dict) -> None:
        await self.ws.send(json.dumps(event))

    async def spoken_turn(self, prompt: SpokenPrompt) -> TurnTiming:
        """Speak the prompt like a microphone would and time the reply from the true end of speech."""
        timing = TurnTiming(prompt.text, prompt.voice)
        lead = np.zeros(int(LEAD_SILENCE_S * PROTOCOL_RATE), np.float32)
        speech_end = lead.size + prompt.audio.size
        audio = np.concatenate([lead, prompt.audio])
        step = PROTOCOL_RATE * CHUNK_MS // 1000
        silence = base64.b64encode(float_to_pcm16(np.zeros(step, np.float32))).decode()
        chunks = [base64.b64encode(float_to_pcm16(audio[i:i + step])).decode() for i in range(0, audio.size, step)]
        since = len(self.listener.events)
        done = asyncio.Event()

        async def microphone() -> float:
            started = time.monotonic()
            index = 0
            while not done.is_set() and time.monotonic() - started < MAX_WAIT_S:
                # A chunk leaves the microphone once it has been recorded: at the end of its 20 ms.
                delay = started + (index + 1) * CHUNK_MS / 1000 - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                payload = chunks[index] if index < len(chunks) else silence
                await self._send({"type": "input_audio_buffer.append", "audio": payload})
                index += 1
            return started

        mic = asyncio.get_running_loop().create_task(microphone())
        try:
            _, started_event = await self.listener.wait_for(
                lambda e: e["type"] == "response.created", since, timeout=MAX_WAIT_S)
            response_id = started_event["response"]["id"]
            finished_at, _ = await self.listener.wait_for(
                lambda e: e["type"] == "response.done" and e["response"]["id"] == response_id, since)
        finally:
            done.set()
            stream_started = await mic
        eos = stream_started + speech_end / PROTOCOL_RATE
        playhead = 0.0
        for stamp, event in self.listener.events[since:]:
            kind = event["type"]
            if kind == "input_audio_buffer.speech_stopped" and timing.eos_to_speech_stopped_ms is None:
                timing.eos_to_speech_stopped_ms = round((stamp - eos) * 1000, 1)
            elif kind == "conversation.item.input_audio_transcription.completed":
                timing.heard = event["transcript"]
            elif kind in AUDIO_DELTAS and event.get("response_id") == response_id:
                seconds = len(base64.b64decode(event["delta"])) / 2 / PROTOCOL_RATE
                if timing.eos_to_first_audio_ms is None:
                    timing.eos_to_first_audio_ms = round((stamp - eos) * 1000, 1)
                    playhead = stamp  # when everything received so far will have been played
                if stamp > playhead:
                    timing.stall_ms += (stamp - playhead) * 1000
                    playhead = stamp
                playhead += seconds
                timing.reply_audio_s += seconds
            elif kind in ("response.output_audio_transcript.done", "response.audio_transcript.done") \
                    and event.get("response_id") == response_id:
                timing.answer = event["transcript"]
        return timing

    async def interrupted_reply(self, request: str, listen_s: float) -> CancelTiming | None:
        """Ask for a long reply, let it play for `listen_s`, cancel, and time the last delta that still came.
        None when the reply was over before the cancel left (nothing to measure)."""
        since = len(self.listener.events)
        await self._send({"type": "conversation.item.create", "item": {
            "type": "message", "role": "user", "content": [{"type": "input_text", "text": request}]}})
        # The session asks for short spoken answers; this one must run long enough to be interrupted.
        await self._send({"type": "response.create", "response": {
            "instructions": "Answer at length: at least eight full sentences."}})
        first_at, first = await self.listener.wait_for(lambda e: e["type"] in AUDIO_DELTAS, since)
        response_id = first["response_id"]
        await asyncio.sleep(max(0.0, first_at + listen_s - time.monotonic()))
        cancelled_at = time.monotonic()
        await self._send({"type": "response.cancel", "response_id": response_id})
        done_at, done = await self.listener.wait_for(
            lambda e: e["type"] == "response.done" and e["response"]["id"] == response_id, since)
        if done["response"]["status"] != "cancelled":
            return None
        await asyncio.sleep(0.3)  # anything still in flight lands here and counts against us
        late = [stamp for stamp, event in self.listener.events[since:]
                if event.get("response_id") == response_id and event["type"].endswith(".delta") and stamp > cancelled_at]
        last = max(late) if late else cancelled_at
        return CancelTiming(round((last - cancelled_at) * 1000, 1), round((done_at - cancelled_at) * 1000, 1), len(late))
