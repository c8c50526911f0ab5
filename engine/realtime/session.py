"""One Realtime session: client events in, server events out, over one conversation.

The latency-critical path: while the user speaks, a Listener transcribes as the audio arrives; the
moment the detector hears a pause, a reply starts *speculatively*; if the silence lasts long enough to
end the turn, that run becomes the response (its first audio is usually ready by then), and if the user
goes on talking it is thrown away.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import numpy as np

from engine.audio.pcm import PROTOCOL_RATE
from engine.backends.base import Backend, Listener, ReplyRequest, ScreenImage, Turn
from engine.realtime import client_events, errors
from engine.realtime.client_events import ClientEvent
from engine.realtime.conversation import ContentPart, Conversation, Item
from engine.realtime.errors import ProtocolError
from engine.realtime.ids import new_id
from engine.realtime.input_buffer import InputBuffer
from engine.realtime.reply_run import ReplyRun
from engine.realtime.response import Response
from engine.realtime.session_config import SessionConfig, TurnDetection, apply_update, is_beta_shape

log = logging.getLogger(__name__)

MAX_BUFFER_SAMPLES = PROTOCOL_RATE * 60 * 10  # ten minutes uncommitted is a client bug, not a turn
MIN_COMMIT_SAMPLES = PROTOCOL_RATE // 10  # 100 ms, as the Realtime API requires
IDLE_KEEP_SAMPLES = PROTOCOL_RATE * 2  # audio kept while nobody speaks: enough for any prefix padding
SCREEN_READ_TIMEOUT_S = 15.0


class TurnDetector(Protocol):
    def feed(self, audio: np.ndarray) -> list[Any]: ...
    def reset(self) -> None: ...


DetectorFactory = Callable[[TurnDetection], TurnDetector]


@dataclass
class PendingTurn:
    """A user utterance being heard: not yet an item in the conversation."""

    item_id: str
    start: int  # timeline sample where its audio begins
    listener: Listener
    fed_until: int
    partial_sent: str = ""
    speculation: ReplyRun | None = None


@dataclass
class _Readiness:
    """Work an item needs before a reply can use it (transcription, screen reading)."""

    tasks: dict[str, list[asyncio.Task]] = field(default_factory=dict)

    def add(self, item_id: str, task: asyncio.Task) -> None:
        self.tasks = {key: [t for t in tasks if not t.done()] for key, tasks in self.tasks.items()}
        self.tasks = {key: tasks for key, tasks in self.tasks.items() if tasks}  # a long session keeps no history
        self.tasks.setdefault(item_id, []).append(task)

    async def wait_all(self) -> None:
        pending = [t for tasks in self.tasks.values() for t in tasks if not t.done()]
        if pending:
            await asyncio.wait(pending, timeout=SCREEN_READ_TIMEOUT_S)

    def cancel_all(self) -> None:
        for tasks in self.tasks.values():
            for task in tasks:
                task.cancel()


class RealtimeSession:
    def __init__(self, backend: Backend, send: Callable[[dict], None], detector_factory: DetectorFactory,
                 *, beta: bool = False):
        self.id = new_id("sess")
        self.config = SessionConfig()
        self.conversation = Conversation(on_forget=self._on_item_forgotten)
        self.beta = beta
        self._model_name = backend.model
        self._backend = backend.open_session()
        self._send = send
        self._detector_factory = detector_factory
        self._detector: TurnDetector | None = None
        self._detector_origin = 0
        self._buffer = InputBuffer()
        self._pending: PendingTurn | None = None
        self._response: Response | None = None
        self._cancelled: set[str] = set()
        self._readiness = _Readiness()
        self._transcriptions: set[asyncio.Task] = set()  # those no reply waits for
        self._loop = asyncio.get_running_loop()
        self._reset_detector()
        self.emit("session.created", session=self._session_object())
        self._backend.prepare(self._request())

    # --- plumbing -----------------------------------------------------------------------------------

    def emit(self, event_type: str, **fields: Any) -> None:
        self._send({"type": event_type, "event_id": new_id("event"), **fields})

    def should_drop(self, event: dict) -> bool:
        """True for an output delta of a cancelled response still waiting for the socket."""
        return event["type"].endswith(".delta") and event.get("response_id") in self._cancelled

    def _error(self, error: ProtocolError, event_id: str | None) -> None:
        self.emit("error", error={"type": error.kind, "code": error.code, "message": error.message,
                                  "param": error.param, "event_id": event_id})

    def handle(self, raw: str | bytes) -> None:
        """Act on one client message. Never raises: a bad event becomes an `error` event."""
        event_id = None
        try:
            event = client_events.parse(raw)
            event_id = event.event_id
            self._HANDLERS[event.type](self, event)
        except ProtocolError as error:
            self._error(error, error.event_id or event_id)
        except Exception as error:  # a bug must cost one event, not the session
            log.exception("failed to handle a client event")
            self._error(ProtocolError(errors.SERVER_ERROR, f"internal error: {error}", kind="server_error"),
                        event_id)

    async def close(self) -> None:
        if self._response:
            self._response.cancel("client_cancelled")
            await self._response.wait()
        self._drop_pending()
        self._readiness.cancel_all()
        for task in self._transcriptions:
            task.cancel()
        self._backend.close()

    # --- session ------------------------------------------------------------------------------------

    def _session_object(self) -> dict:
        return self.config.to_protocol(self.id, self._model_name)

    def _on_session_update(self, event: ClientEvent) -> None:
        session = event.body["session"]
        previous = self.config
        self.config = apply_update(self.config, session)
        if is_beta_shape(session):
            self.beta = True
        if self.config.turn_detection != previous.turn_detection:
            self._reset_detector()
        if self.config.instructions != previous.instructions:
            self._backend.prepare(self._request())
        self.emit("session.updated", session=self._session_object())

    def _reset_detector(self) -> None:
        settings = self.config.turn_detection
        self._detector = self._detector_factory(settings) if settings else None
        self._detector_origin = self._buffer.end

    # --- input audio --------------------------------------------------------------------------------

    def _on_append(self, event: ClientEvent) -> None:
        samples: np.ndarray = event.decoded["audio"]
        if self._buffer.samples + samples.size > MAX_BUFFER_SAMPLES:
            raise ProtocolError(errors.AUDIO_BUFFER_FULL, "the input audio buffer holds 10 minutes of "
                                "uncommitted audio; commit or clear it", param="audio")
        self._buffer.append(samples)
        if self._detector is None:
            if self._pending is None:  # manual turns: start hearing at the first sample
                self._start_turn(new_id("item"), self._buffer.start)
        else:
            audio = samples.astype(np.float32) / 32768.0
            for turn_event in self._detector.feed(audio):
                self._on_turn_event(turn_event)
            if self._pending is None:
                self._buffer.drop_before(self._buffer.end - IDLE_KEEP_SAMPLES)
        self._feed_pending()

    def _feed_pending(self) -> None:
        pending = self._pending
        if pending and pending.fed_until < self._buffer.end:
            audio = self._buffer.slice(pending.fed_until)
            pending.fed_until = self._buffer.end
            pending.listener.feed(audio.astype(np.float32) / 32768.0)

    def _timeline_ms(self, detector_ms: float) -> int:
        return int(round(self._detector_origin * 1000 / PROTOCOL_RATE + detector_ms))

    def _sample_at(self, detector_ms: float) -> int:
        return self._detector_origin + int(round(detector_ms * PROTOCOL_RATE / 1000))

    def _on_turn_event(self, turn_event: Any) -> None:
        name = type(turn_event).__name__
        if name == "SpeechStarted":
            item_id = new_id("item")
            self.emit("input_audio_buffer.speech_started",
                      audio_start_ms=self._timeline_ms(turn_event.audio_start_ms), item_id=item_id)
            if self._response and self._response.active and self.config.turn_detection.interrupt_response:
                self._cancel_response("turn_detected")
            self._start_turn(item_id, max(self._buffer.start, self._sample_at(turn_event.audio_start_ms)))
        elif name == "SpeechPaused" and self._pending:
            if self.config.turn_detection.create_response and not (self._response and self._response.active):
                self._speculate(self._pending)
        elif name == "SpeechResumed" and self._pending:
            self._drop_speculation(self._pending)
        elif name == "SpeechStopped" and self._pending:
            self.emit("input_audio_buffer.speech_stopped",
                      audio_end_ms=self._timeline_ms(turn_event.audio_end_ms), item_id=self._pending.item_id)
            end = min(self._buffer.end, self._sample_at(turn_event.audio_end_ms))
            self._commit(end, respond=self.config.turn_detection.create_response)

    def _start_turn(self, item_id: str, start: int) -> None:
        self._drop_pending()
        listener = self._backend.listen(self._request(), on_partial=self._partial_callback(item_id))
        self._pending = PendingTurn(item_id, start, listener, fed_until=start)

    def _partial_callback(self, item_id: str) -> Callable[[str], None]:
        def on_partial(text: str) -> None:  # called from a model thread
            self._loop.call_soon_threadsafe(self._on_partial, item_id, text)
        return on_partial

    def _on_partial(self, item_id: str, text: str) -> None:
        pending = self._pending
        if not pending or pending.item_id != item_id or not self.config.transcribe_input:
            return
        # Deltas only ever append; a revised partial waits for the final transcript.
        if text.startswith(pending.partial_sent) and len(text) > len(pending.partial_sent):
            delta = text[len(pending.partial_sent):]
            pending.partial_sent = text
            self.emit("conversation.item.input_audio_transcription.delta", item_id=item_id, content_index=0,
                      delta=delta)

    def _on_commit(self, event: ClientEvent) -> None:
        if self._pending is None and self._buffer.samples >= MIN_COMMIT_SAMPLES:
            self._start_turn(new_id("item"), self._buffer.start)  # server VAD heard no speech: commit anyway
        if self._pending is None or self._buffer.end - self._pending.start < MIN_COMMIT_SAMPLES:
            raise ProtocolError(errors.COMMIT_EMPTY, "buffer too small: commit needs at least 100 ms of audio")
        self._commit(self._buffer.end, respond=False)
        if self._detector:
            self._detector.reset()
            self._detector_origin = self._buffer.end

    def _on_clear(self, event: ClientEvent) -> None:
        self._drop_pending()
        self._buffer.clear()
        if self._detector:
            self._detector.reset()
            self._detector_origin = self._buffer.end
        self.emit("input_audio_buffer.cleared")

    def _drop_pending(self) -> None:
        if self._pending:
            self._drop_speculation(self._pending)
            self._pending.listener.close()
            self._pending = None

    # --- turns and speculation ----------------------------------------------------------------------

    def _speculate(self, pending: PendingTurn) -> None:
        self._drop_speculation(pending)
        self._feed_pending()
        audio = self._buffer.slice(pending.start, self._buffer.end)  # now: a commit may drop it before the task runs

        async def request_for_tentative_turn() -> ReplyRequest:
            transcript = await pending.listener.transcript() if self._backend.replies_need_transcripts else ""
            await self._readiness.wait_all()
            return self._request(extra=Turn("user", transcript, audio=audio))

        pending.speculation = ReplyRun(self._backend, request_for_tentative_turn)

    @staticmethod
    def _drop_speculation(pending: PendingTurn) -> None:
        if pending.speculation:
            pending.speculation.cancel()
            pending.speculation = None

    def _commit(self, end: int, respond: bool) -> None:
        pending, self._pending = self._pending, None
        self._feed_pending_to(pending, end)
        part = ContentPart("input_audio", transcript=None, audio=self._buffer.slice(pending.start, end))
        item = Item(pending.item_id, "user", [part])
        self._buffer.drop_before(end)
        previous = self.conversation.add(item)
        self.conversation.forget_old_audio()
        self.emit("input_audio_buffer.committed", previous_item_id=previous, item_id=item.id)
        self.emit("conversation.item.created", previous_item_id=previous, item=item.to_protocol())
        self._start_transcription(item, part, pending.listener)
        if respond:
            if self._response and self._response.active:
                self._cancel_response("turn_detected")
            self._start_response(pending.speculation, self.config)
        elif pending.speculation:
            pending.speculation.cancel()

    def _feed_pending_to(self, pending: PendingTurn, end: int) -> None:
        if pending.fed_until < end:
            audio = self._buffer.slice(pending.fed_until, end)
            pending.fed_until = end
            pending.listener.feed(audio.astype(np.float32) / 32768.0)

    def _start_transcription(self, item: Item, part: ContentPart, listener: Listener) -> None:
        task = self._loop.create_task(self._transcribe(item, part, listener))
        if self._backend.replies_need_transcripts:
            self._readiness.add(item.id, task)
        else:  # the reply hears the audio: it starts now, and the transcript follows when ready
            self._transcriptions.add(task)
            task.add_done_callback(self._transcriptions.discard)

    async def _transcribe(self, item: Item, part: ContentPart, listener: Listener) -> None:
        try:
            part.transcript = await listener.transcript()
        except Exception as error:
            log.exception("transcription failed")
            part.transcript = ""
            self.emit("conversation.item.input_audio_transcription.failed", item_id=item.id, content_index=0,
                      error={"type": "transcription_error", "code": errors.MODEL_FAILURE, "message": str(error)})
            return
        finally:
            listener.close()
        if self.config.transcribe_input:
            self.emit("conversation.item.input_audio_transcription.completed", item_id=item.id,
                      content_index=0, transcript=part.transcript,
                      usage={"type": "duration", "seconds": round(part.audio.size / PROTOCOL_RATE, 3)})

    # --- conversation items -------------------------------------------------------------------------

    def _on_item_create(self, event: ClientEvent) -> None:
        body = event.body["item"]
        previous_id = event.body.get("previous_item_id")
        if previous_id not in (None, "root") and not self.conversation.has(previous_id):
            raise ProtocolError(errors.ITEM_NOT_FOUND, f"previous_item_id {previous_id!r} does not exist",
                                param="previous_item_id")
        decoded = event.decoded["parts"]
        parts = []
        for index, raw in enumerate(body["content"]):
            kind = {"text": "output_text", "audio": "output_audio"}.get(raw["type"], raw["type"])
            part = ContentPart(kind, text=raw.get("text"), transcript=raw.get("transcript"))
            if kind == "input_audio" and index in decoded:
                part.audio = decoded[index]
            elif kind == "input_image":
                part.image = ScreenImage(decoded[index])
            parts.append(part)
        item = Item(body.get("id") or new_id("item"), body["role"], parts)
        previous = self.conversation.add(item, previous_id)
        self.emit("conversation.item.created", previous_item_id=previous, item=item.to_protocol())
        for part in parts:
            if part.type == "input_image":
                self._readiness.add(item.id, self._loop.create_task(self._read_screen(item, part)))
            elif part.type == "input_audio" and part.audio is not None and part.transcript is None:
                listener = self._backend.listen(self._request())
                listener.feed(part.audio.astype(np.float32) / 32768.0)
                self._start_transcription(item, part, listener)

    async def _read_screen(self, item: Item, part: ContentPart) -> None:
        try:
            part.image = await self._backend.read_screen(part.image.data)
        except ValueError as error:
            item.content = [p for p in item.content if p is not part]
            self.emit("error", error={"type": "invalid_request_error", "code": errors.INVALID_IMAGE,
                                      "message": f"the image in item {item.id} cannot be used: {error}",
                                      "param": "item.content", "event_id": None})
            return
        # Its text joins the prompt now, not after the question that is being (or is about to be) asked.
        if self._pending:
            self._pending.listener.context_changed(self._request())
        elif not (self._response and self._response.active):
            self._backend.prepare(self._request())

    def _on_item_delete(self, event: ClientEvent) -> None:
        item_id = event.body["item_id"]
        if self._response and self._response.active and self._response.item.id == item_id:
            self._cancel_response("client_cancelled")
        self.conversation.delete(item_id)
        self.emit("conversation.item.deleted", item_id=item_id)

    def _on_item_forgotten(self, item_id: str) -> None:
        """An item dropped to keep the conversation within its limits: the client drops it too."""
        self.emit("conversation.item.deleted", item_id=item_id)

    def _on_item_retrieve(self, event: ClientEvent) -> None:
        item = self.conversation.get(event.body["item_id"])
        self.emit("conversation.item.retrieved", item=item.to_protocol())

    def _on_truncate(self, event: ClientEvent) -> None:
        item_id, end_ms = event.body["item_id"], event.body["audio_end_ms"]
        self.conversation.get(item_id)  # an unknown id is an error before anything is cancelled
        if self._response and self._response.active and self._response.item.id == item_id:
            self._cancel_response("client_cancelled")  # audio past what was heard is moot
        self.conversation.truncate(item_id, event.body["content_index"], end_ms)
        self.emit("conversation.item.truncated", item_id=item_id, content_index=event.body["content_index"],
                  audio_end_ms=end_ms)

    # --- responses ----------------------------------------------------------------------------------

    def _on_response_create(self, event: ClientEvent) -> None:
        options = event.body.get("response") or {}
        config = self.config
        if "instructions" in options:
            config = replace(config, instructions=options["instructions"])
        modalities = options.get("output_modalities") or options.get("modalities")
        if modalities:
            config = replace(config, output_modalities=["audio"] if "audio" in modalities else ["text"])
        for key in ("max_output_tokens", "max_response_output_tokens"):
            if key in options:
                config = apply_update(config, {key: options[key]})
        if "temperature" in options:
            config = apply_update(config, {"temperature": options["temperature"]})
        if self._response and self._response.active:  # (after the options: a malformed event is told so first)
            raise ProtocolError(errors.RESPONSE_ACTIVE, f"response {self._response.id} is still in progress; "
                                "cancel it or wait for response.done")
        self._start_response(None, config)

    def _start_response(self, speculation: ReplyRun | None, config: SessionConfig) -> None:
        if speculation is None or speculation.done and speculation.first_output_at is None:
            if speculation:
                speculation.cancel()

            async def request_from_conversation() -> ReplyRequest:
                await self._readiness.wait_all()
                return self._request(config=config)

            speculation = ReplyRun(self._backend, request_from_conversation)
        self._response = Response(speculation, self.conversation, self.emit, config.speaks, self._on_finished)

    def _on_finished(self, response: Response) -> None:
        if response.status == "cancelled":
            self._cancelled.add(response.id)
            if len(self._cancelled) > 256:
                self._cancelled.pop()

    def _on_response_cancel(self, event: ClientEvent) -> None:
        wanted = event.body.get("response_id")
        response = self._response
        if response is None or not response.active or (wanted and wanted != response.id):
            raise ProtocolError(errors.CANCEL_NOT_ACTIVE, "there is no response in progress to cancel",
                                param="response_id" if wanted else None)
        self._cancel_response("client_cancelled")

    def _cancel_response(self, reason: str) -> None:
        response = self._response
        if response and response.active:
            self._cancelled.add(response.id)  # before anything else: queued deltas must not reach the client
            response.cancel(reason)

    def _on_output_clear(self, event: ClientEvent) -> None:
        self.emit("output_audio_buffer.cleared")  # audio plays on the client; nothing is buffered here

    # --- what the model sees ------------------------------------------------------------------------

    def _request(self, extra: Turn | None = None, config: SessionConfig | None = None) -> ReplyRequest:
        config = config or self.config
        turns = []
        for item in self.conversation:
            if item.role == "assistant" and item.status == "in_progress":
                continue
            audio_parts = [p.audio for p in item.content if p.audio is not None]
            turns.append(Turn(item.role, item.text(), audio=np.concatenate(audio_parts) if audio_parts else None,
                              images=tuple(item.images())))
        if extra:
            turns.append(extra)
        return ReplyRequest(config.instructions, tuple(turns), speak=config.speaks, voice=config.voice,
                            speed=config.speed, max_output_tokens=config.max_output_tokens,
                            temperature=config.temperature)

    _HANDLERS: dict[str, Callable[[RealtimeSession, ClientEvent], None]] = {
        "session.update": _on_session_update,
        "input_audio_buffer.append": _on_append,
        "input_audio_buffer.commit": _on_commit,
        "input_audio_buffer.clear": _on_clear,
        "output_audio_buffer.clear": _on_output_clear,
        "conversation.item.create": _on_item_create,
        "conversation.item.delete": _on_item_delete,
        "conversation.item.retrieve": _on_item_retrieve,
        "conversation.item.truncate": _on_truncate,
        "response.create": _on_response_create,
        "response.cancel": _on_response_cancel,
    }
