"""The app's one connection to a Realtime server: the supervised engine, or any server the person configured.

`RealtimeLink` runs its own asyncio loop on a daemon thread, so neither the GUI thread nor the audio thread
ever waits on the network. It keeps the connection up (reconnecting with capped exponential backoff),
sends events in order, and decodes reply audio on its own thread so that audio reaches the speaker without
a hop through the GUI thread.

Threads: `connect`, `update_session`, `send` and `send_audio` may be called from any thread and never
block on the network; `close` waits for a clean close, a few seconds at most. The callbacks `on_event`,
`on_status` and `on_audio` run on the link's thread: they must return quickly and hand anything for widgets
to the GUI thread (a queued Qt signal).

What the callbacks get: `on_audio(response_id, item_id, pcm)` each reply audio delta, decoded; `on_event`
every server event, audio deltas without their payload, plus local `error` events of type `link_error`
for what the server sent that could not be read; `on_status(state, reason)` each change of connecting /
connected / disconnected, with a reason a person can read.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
import threading
from collections.abc import Callable
from urllib.parse import urlsplit

import numpy as np
import websockets
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI

log = logging.getLogger(__name__)

CONNECTING, CONNECTED, DISCONNECTED = "connecting", "connected", "disconnected"
AUDIO_DELTA_EVENTS = ("response.output_audio.delta", "response.audio.delta")  # GA and beta names
_LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")

EventCallback = Callable[[dict], None]
StatusCallback = Callable[[str, str], None]  # (state, human-readable reason)
AudioCallback = Callable[[str, str, np.ndarray], None]  # (response_id, item_id, float32 mono 24 kHz)


class RealtimeLink:
    """A self-healing Realtime connection. See the module docstring for which thread runs what."""

    def __init__(self, on_event: EventCallback, on_status: StatusCallback, on_audio: AudioCallback | None = None,
                 *, session_update: dict | None = None, retry_delay_s: float = 0.25, max_retry_delay_s: float = 5.0,
                 open_timeout_s: float = 5.0):
        self._on_event, self._on_status, self._on_audio = on_event, on_status, on_audio
        self._session_update = session_update
        self._retry_delay_s, self._max_retry_delay_s = retry_delay_s, max_retry_delay_s
        self._open_timeout_s = open_timeout_s
        self._status: tuple[str, str] | None = None
        self._outbox: asyncio.Queue[str] | None = None  # set only while connected and configured
        self._connection_task: asyncio.Task | None = None
        self._closed = False
        self.url: str | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run_loop, name="realtime-link", daemon=True)
        self._thread.start()

    # --- the caller's side: any thread, never blocks on the network -------------------------------------

    @property
    def connected(self) -> bool:
        return self._outbox is not None

    def connect(self, url: str, token: str) -> None:
        """Connect (or move) to `url`, and keep reconnecting there until `close` or another `connect`."""
        if self._closed:
            raise RuntimeError("this link is closed")
        self._loop.call_soon_threadsafe(self._start_connection, url, token)

    def update_session(self, event: dict | None) -> bool:
        """Set the `session.update` event (GA shape) sent first on every (re)connect, and send it now if
        connected; False if it could not be sent now (it still goes first on the next connect)."""
        self._session_update = event
        return event is not None and self.send(event)

    def send(self, event: dict) -> bool:
        """Queue `event` for the server, after everything queued before it. False, and dropped, while
        disconnected: what was meant for a lost session means nothing to the next one."""
        return self._send_text(json.dumps(event))

    def send_audio(self, pcm: np.ndarray) -> bool:
        """Send microphone audio (float32 mono 24 kHz) as one `input_audio_buffer.append`."""
        pcm16 = (np.clip(pcm, -1.0, 32767 / 32768) * 32768.0).astype("<i2").tobytes()
        # Built by hand: json.dumps would scan the whole base64 string for characters to escape.
        return self._send_text('{"type":"input_audio_buffer.append","audio":"'
                               + base64.b64encode(pcm16).decode("ascii") + '"}')

    def close(self, timeout_s: float = 5.0) -> None:
        """Close the connection cleanly and stop the link's thread (joined, unless called from a callback)."""
        if self._closed:
            return
        self._closed = True
        on_link_thread = threading.current_thread() is self._thread
        shutdown = asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop)
        if on_link_thread:  # waiting here would wait on ourselves; the loop stops once this callback returns
            return
        with contextlib.suppress(Exception):
            shutdown.result(timeout_s)
        with contextlib.suppress(RuntimeError):  # a shutdown that timed out still stops the loop
            self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout_s)

    def _send_text(self, text: str) -> bool:
        outbox = self._outbox
        if outbox is None:
            return False
        try:
            self._loop.call_soon_threadsafe(outbox.put_nowait, text)  # FIFO: events leave in call order
        except RuntimeError:  # the loop is closed
            return False
        return True

    # --- the link's thread -----------------------------------------------------------------------------

    def _run_loop(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_forever()
        finally:
            leftovers = asyncio.all_tasks(self._loop)
            for task in leftovers:
                task.cancel()
            self._loop.run_until_complete(asyncio.gather(*leftovers, return_exceptions=True))
            self._loop.close()

    async def _shutdown(self) -> None:
        await self._stop_connection()
        self._set_status(DISCONNECTED, "closed")
        self._loop.stop()

    def _start_connection(self, url: str, token: str) -> None:
        if self._closed:
            return
        if self._connection_task:
            self._connection_task.cancel()  # it closes its socket as it unwinds
        self.url = url
        self._connection_task = self._loop.create_task(self._keep_connected(url, token))

    async def _stop_connection(self) -> None:
        task, self._connection_task = self._connection_task, None
        if task:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _keep_connected(self, url: str, token: str) -> None:
        failures = 0
        while True:
            self._set_status(CONNECTING, f"connecting to {url}")
            try:
                reason = await self._session(url, token)
                failures = 0
            except (OSError, TimeoutError):
                reason = f"engine not reachable at {url}"
            except InvalidStatus as error:
                reason = _refusal_reason(url, error.response.status_code)
            except InvalidURI:
                reason = f"not a WebSocket address: {url}"
            except InvalidHandshake as error:
                reason = f"the server at {url} did not speak WebSocket ({error})"
            except Exception as error:  # whatever it was, the link lives on and tries again
                log.exception("connection to %s failed", url)
                reason = f"connection to {url} failed: {error}"
            delay = min(self._max_retry_delay_s, self._retry_delay_s * 2 ** failures)
            failures += 1
            self._set_status(DISCONNECTED, reason)
            await asyncio.sleep(delay)

    async def _session(self, url: str, token: str) -> str:
        """One connection, from handshake to close; returns why it ended."""
        host = urlsplit(url).hostname
        async with websockets.connect(
            url,
            additional_headers={"Authorization": f"Bearer {token}"},
            compression=None,  # base64 audio barely compresses; deflate would only add latency
            max_size=None,  # the server is trusted with its own event sizes
            open_timeout=self._open_timeout_s,
            close_timeout=2,
            proxy=None if host in _LOOPBACK_HOSTS else True,  # a local engine is never behind a proxy
        ) as websocket:
            outbox: asyncio.Queue[str] = asyncio.Queue()
            if self._session_update is not None:  # before anything else, so no event runs on old settings
                await websocket.send(json.dumps(self._session_update))
            writer = asyncio.get_running_loop().create_task(self._write(websocket, outbox))
            self._outbox = outbox
            self._set_status(CONNECTED, f"connected to {url}")
            try:
                async for message in websocket:
                    self._dispatch(message)
            except ConnectionClosed:
                pass
            finally:
                if self._outbox is outbox:
                    self._outbox = None
                writer.cancel()
            close = websocket.protocol.close_rcvd
        if close is None:  # the process died, or the network went: no close frame
            return f"connection to {url} lost"
        return f"connection to {url} closed (code {close.code}{': ' + close.reason if close.reason else ''})"

    @staticmethod
    async def _write(websocket, outbox: asyncio.Queue[str]) -> None:
        with contextlib.suppress(ConnectionClosed):  # the reader sees the close and reports it
            while True:
                await websocket.send(await outbox.get())

    def _dispatch(self, message: str | bytes) -> None:
        try:
            event = json.loads(message)
        except ValueError as error:  # also non-UTF-8 bytes
            return self._link_error("invalid_server_event", f"the server sent something that is not JSON: {error}")
        if not isinstance(event, dict) or not isinstance(event.get("type"), str):
            return self._link_error("invalid_server_event", "the server sent an event without a type")
        if event["type"] in AUDIO_DELTA_EVENTS:
            audio = _decode_pcm16(event.pop("delta", None))
            if audio is None:
                return self._link_error("invalid_server_audio", f"{event['type']} carried no valid PCM16 audio")
            if self._on_audio:
                _call(self._on_audio, event.get("response_id"), event.get("item_id"), audio)
        _call(self._on_event, event)

    def _link_error(self, code: str, message: str) -> None:
        log.warning("%s", message)
        _call(self._on_event, {"type": "error", "error": {"type": "link_error", "code": code, "message": message}})

    def _set_status(self, state: str, reason: str) -> None:
        if self._status != (state, reason):  # retries at the same spot are not news
            self._status = (state, reason)
            _call(self._on_status, state, reason)


def _decode_pcm16(delta: object) -> np.ndarray | None:
    if not isinstance(delta, str):
        return None
    try:
        raw = base64.b64decode(delta, validate=True)
    except binascii.Error:
        return None
    if len(raw) % 2:
        return None
    return np.frombuffer(raw, dtype="<i2").astype(np.float32) / 32768.0


def _refusal_reason(url: str, status: int) -> str:
    if status in (401, 403):
        return f"token refused by {url} (HTTP {status})"
    if status == 404:
        return f"no Realtime API at {url} (HTTP 404)"
    return f"{url} refused the connection (HTTP {status})"


def _call(callback: Callable, *args) -> None:
    """A failing callback is the caller's bug; it is logged and must not take the link down."""
    try:
        callback(*args)
    except Exception:
        log.exception("a RealtimeLink callback failed")
