"""A plain WebSocket Realtime client for tests: send events, wait for the ones expected."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
from collections.abc import AsyncIterator

import numpy as np
import pytest
import websockets

from engine.assembly import build_engine
from engine.audio.pcm import float_to_pcm16
from engine.realtime.server import RealtimeServer


@contextlib.asynccontextmanager
async def serving(engine, token: str) -> AsyncIterator[str]:
    """A real Realtime server for `engine` on a free loopback port; yields its URL."""
    server = RealtimeServer(engine.backend, engine.detector_factory, token)
    port = await server.start("127.0.0.1", 0)
    try:
        yield f"ws://127.0.0.1:{port}/v1/realtime"
    finally:
        await server.stop()


def engine_fixtures(token: str, *build_args, **build_kwargs):
    """Module-scoped `engine` (build_engine(*build_args, **build_kwargs), its backend closed after) and
    `server_url` (it served with `token`) fixtures, for a test module to bind:
    `engine, server_url = engine_fixtures(TOKEN, ...)`."""

    @pytest.fixture(scope="module")
    def engine():
        engine = build_engine(*build_args, **build_kwargs)
        yield engine
        engine.backend.close()

    @pytest.fixture(scope="module")
    async def server_url(engine):
        async with serving(engine, token) as url:
            yield url

    return engine, server_url


class RealtimeTestClient:
    def __init__(self, websocket):
        self.ws = websocket
        self.events: list[dict] = []
        self.arrival: list[float] = []

    @classmethod
    async def connect(cls, url: str, token: str, **kwargs) -> RealtimeTestClient:
        ws = await websockets.connect(url, additional_headers={"Authorization": f"Bearer {token}"},
                                      max_size=None, compression=None, **kwargs)
        client = cls(ws)
        await client.expect("session.created")
        return client

    @classmethod
    async def with_session(cls, url: str, token: str, **session) -> RealtimeTestClient:
        """Connected, with `session.update` sent ({"type": "realtime", **session}) and acknowledged."""
        client = await cls.connect(url, token)
        await client.send("session.update", session={"type": "realtime", **session})
        await client.expect("session.updated")
        return client

    async def send(self, event_type: str, **fields) -> None:
        await self.ws.send(json.dumps({"type": event_type, **fields}))

    async def send_raw(self, raw: str | bytes) -> None:
        await self.ws.send(raw)

    async def append_audio(self, audio: np.ndarray, chunk_ms: int = 40, realtime: bool = False) -> None:
        step = 24 * chunk_ms
        started = time.monotonic()
        for index, offset in enumerate(range(0, audio.size, step)):
            if realtime:
                delay = started + index * chunk_ms / 1000 - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            pcm = float_to_pcm16(audio[offset:offset + step])
            await self.send("input_audio_buffer.append", audio=base64.b64encode(pcm).decode())

    async def next_event(self, timeout: float = 60.0) -> dict:
        event = json.loads(await asyncio.wait_for(self.ws.recv(), timeout))
        self.events.append(event)
        self.arrival.append(time.monotonic())
        return event

    async def expect(self, event_type: str, timeout: float = 60.0) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            event = await self.next_event(max(0.01, deadline - time.monotonic()))
            if event["type"] == event_type:
                return event

    async def collect_until(self, event_type: str, timeout: float = 120.0) -> list[dict]:
        start = len(self.events)
        await self.expect(event_type, timeout)
        return self.events[start:]

    async def quiet(self, seconds: float) -> list[dict]:
        """Everything that arrives in the next `seconds`."""
        got = []
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            try:
                got.append(await self.next_event(left))
            except asyncio.TimeoutError:
                break
        return got

    async def close(self) -> None:
        await self.ws.close()


def audio_of(events: list[dict], response_id: str | None = None) -> np.ndarray:
    chunks = [base64.b64decode(e["delta"]) for e in events if e["type"] in (
        "response.output_audio.delta", "response.audio.delta") and (response_id is None or e["response_id"] == response_id)]
    return np.frombuffer(b"".join(chunks), dtype="<i2").astype(np.float32) / 32768.0


def transcript_of(events: list[dict]) -> str:
    return "".join(e["delta"] for e in events if e["type"] in (
        "response.output_audio_transcript.delta", "response.audio_transcript.delta"))
