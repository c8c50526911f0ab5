"""The WebSocket server: `/v1/realtime`, bearer token, loopback by default, one session per connection."""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import logging
from collections.abc import Sequence
from http import HTTPStatus

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from engine.backends.base import Backend
from engine.realtime.auth import bearer_matches, subprotocol_token
from engine.realtime.client_events import MAX_EVENT_BYTES
from engine.realtime.session import DetectorFactory, RealtimeSession

log = logging.getLogger(__name__)

REALTIME_PATH = "/v1/realtime"
MAX_SESSIONS = 16
# Events waiting for a client that does not read: past this many, its next events are not read either, so
# TCP pushes back on it instead of the engine's memory growing (~2 KB an event). A client that reads never gets
# near it: the longest reply (60 s of speech) is ~1,300 events, and a cancel must never wait behind a reply.
OUTBOX_HIGH_WATER = 2048


def is_loopback(host: str) -> bool:
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _host_name(header: str) -> str:
    """The name in a Host header, without its port: "127.0.0.1:8765" → "127.0.0.1", "[::1]:8765" → "::1"."""
    if header.startswith("["):
        return header[1:].partition("]")[0]
    return header.rpartition(":")[0] if header.count(":") == 1 else header


# Older (beta) clients get the event names they know.
_BETA_NAMES = {
    "response.output_audio.delta": "response.audio.delta",
    "response.output_audio.done": "response.audio.done",
    "response.output_audio_transcript.delta": "response.audio_transcript.delta",
    "response.output_audio_transcript.done": "response.audio_transcript.done",
    "response.output_text.delta": "response.text.delta",
    "response.output_text.done": "response.text.done",
}


class RealtimeServer:
    def __init__(self, backend: Backend, detector_factory: DetectorFactory, token: str,
                 allowed_origins: Sequence[str] = ()):
        self.backend = backend
        self.detector_factory = detector_factory
        self.token = token
        self.allowed_origins = set(allowed_origins)
        self.sessions: set[RealtimeSession] = set()
        self._server: Server | None = None
        self._loopback_only = True

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        self._loopback_only = is_loopback(host)
        self._server = await serve(
            self._connection,
            host,
            port,
            process_request=self._check_request,
            select_subprotocol=self._select_subprotocol,
            max_size=2 * MAX_EVENT_BYTES,  # up to this, an oversized event gets an error event, not a hang-up
            compression=None,  # base64 audio barely compresses; deflate would only add latency
            ping_interval=20,
            ping_timeout=60,
        )
        return self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server:
            self._server.close()
            await self._server.wait_closed()

    async def serve_forever(self) -> None:
        assert self._server is not None
        await self._server.serve_forever()

    # --- handshake --------------------------------------------------------------------------------

    def _check_request(self, connection: ServerConnection, request: Request) -> Response | None:
        path = request.path.split("?", 1)[0]
        if self._loopback_only and not is_loopback(_host_name(request.headers.get("Host", ""))):
            # DNS rebinding: a web page whose name now points at 127.0.0.1 still says its own name here.
            return connection.respond(HTTPStatus.FORBIDDEN, "the engine answers to localhost names only\n")
        if path == "/healthz":
            return connection.respond(HTTPStatus.OK, "ok\n")
        if path != REALTIME_PATH:
            return connection.respond(HTTPStatus.NOT_FOUND, f"not found; the Realtime API is at {REALTIME_PATH}\n")
        origin = request.headers.get("Origin")
        if origin is not None and origin not in self.allowed_origins:
            return connection.respond(HTTPStatus.FORBIDDEN, "this origin may not connect\n")
        protocols = [p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",") if p.strip()]
        offered = subprotocol_token(protocols)
        if not (bearer_matches(request.headers.get("Authorization"), self.token)
                or (offered is not None and hmac.compare_digest(offered.encode(), self.token.encode()))):
            return connection.respond(HTTPStatus.UNAUTHORIZED, "missing or wrong token\n")
        if len(self.sessions) >= MAX_SESSIONS:
            return connection.respond(HTTPStatus.SERVICE_UNAVAILABLE, "too many sessions\n")
        return None

    @staticmethod
    def _select_subprotocol(connection: ServerConnection, offered: Sequence[str]) -> str | None:
        return "realtime" if "realtime" in offered else None

    # --- a connection -----------------------------------------------------------------------------

    async def _connection(self, websocket: ServerConnection) -> None:
        outbox: asyncio.Queue[dict] = asyncio.Queue()
        room = asyncio.Event()  # set by the writer when the outbox is back under half its high-water mark
        beta = "realtime=v1" in (websocket.request.headers.get("OpenAI-Beta") or "")
        session = RealtimeSession(self.backend, outbox.put_nowait, self.detector_factory, beta=beta)
        self.sessions.add(session)
        writer = asyncio.get_running_loop().create_task(self._write(websocket, outbox, session, room))
        log.info("session %s opened (%d open)", session.id, len(self.sessions))
        try:
            async for message in websocket:
                session.handle(message)
                while outbox.qsize() > OUTBOX_HIGH_WATER and not writer.done():
                    room.clear()
                    await room.wait()
        except ConnectionClosed:
            pass
        finally:
            self.sessions.discard(session)
            await session.close()
            writer.cancel()
            log.info("session %s closed", session.id)

    @staticmethod
    async def _write(websocket: ServerConnection, outbox: asyncio.Queue, session: RealtimeSession,
                     room: asyncio.Event) -> None:
        try:
            while True:
                event = await outbox.get()
                if outbox.qsize() <= OUTBOX_HIGH_WATER // 2:
                    room.set()
                if session.should_drop(event):
                    continue
                if session.beta and event["type"] in _BETA_NAMES:
                    event = {**event, "type": _BETA_NAMES[event["type"]]}
                await websocket.send(json.dumps(event))
        except ConnectionClosed:
            pass
        finally:
            room.set()  # a reader waiting for room must not wait for a writer that is gone
