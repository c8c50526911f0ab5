"""Delivering one response: a reply run's outputs become protocol events and conversation state.

Once cancelled, a response emits nothing but its closing events; deltas already queued for the socket
are dropped by response id in the session's outbox.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import Callable
from typing import Any

import numpy as np

from engine.audio.pcm import PROTOCOL_RATE, float_to_pcm16
from engine.backends.base import SpeechChunk, TextDelta
from engine.realtime import errors
from engine.realtime.conversation import ContentPart, Conversation, Item, SpokenSegment, Word
from engine.realtime.ids import new_id
from engine.realtime.reply_run import ReplyFailed, ReplyRun

log = logging.getLogger(__name__)

DELTA_SAMPLES = PROTOCOL_RATE // 10  # 100 ms of audio per delta event

Emit = Callable[..., None]  # emit(event_type, **fields)


class Response:
    def __init__(self, run: ReplyRun, conversation: Conversation, emit: Emit, speak: bool,
                 on_finished: Callable[[Response], None]):
        self.id = new_id("resp")
        self.run = run
        self.speak = speak
        self.status = "in_progress"
        self.status_reason: str | None = None
        self.error: dict[str, Any] | None = None
        self.item = Item(new_id("item"), "assistant",
                         [ContentPart("output_audio" if speak else "output_text", text="", transcript="")],
                         status="in_progress")
        self.audio_samples_sent = 0
        self._conversation = conversation
        self._emit = emit
        self._on_finished = on_finished
        self._pending_text = ""  # text heard from the model but not yet attached to audio
        self._started = False
        self._task = asyncio.get_running_loop().create_task(self._deliver())

    @property
    def active(self) -> bool:
        return self.status == "in_progress"

    def cancel(self, reason: str = "client_cancelled") -> None:
        if not self.active:
            return
        self.status, self.status_reason = "cancelled", reason
        self.run.cancel()
        if self._started:  # a task cancelled before its first step never runs: nothing would be announced
            self._task.cancel()

    async def wait(self) -> None:
        await asyncio.gather(self._task, return_exceptions=True)

    # --- delivery ---------------------------------------------------------------------------------

    async def _deliver(self) -> None:
        self._started = True
        self._emit("response.created", response=self._describe())
        previous = self._conversation.add(self.item)
        self._emit("response.output_item.added", response_id=self.id, output_index=0,
                   item=self.item.to_protocol())
        self._emit("conversation.item.created", previous_item_id=previous, item=self.item.to_protocol())
        self._emit("response.content_part.added", **self._where(), part=self._part())
        self.run.stats.mark("response_created")
        if not self.active:  # cancelled before it started: announced, then closed at once
            self._close("incomplete")
            return
        try:
            async for output in self.run.outputs():
                if isinstance(output, SpeechChunk):
                    self._speak(output)
                elif isinstance(output, TextDelta):
                    self._write(output.text)
        except asyncio.CancelledError:
            self._close("incomplete")
            return
        except ReplyFailed as failure:
            self.status, self.error = "failed", {"type": "server_error", "code": errors.MODEL_FAILURE,
                                                 "message": str(failure)}
            self._emit("error", error={"type": "server_error", "code": errors.MODEL_FAILURE,
                                       "message": f"the model failed while replying: {failure}"})
            self._close("incomplete")
            return
        self.status = "completed"
        self._close("completed")

    def _speak(self, chunk: SpeechChunk) -> None:
        text = (self._pending_text + chunk.text) if self.speak else chunk.text
        self._pending_text = ""
        if text:
            self._emit(self._event("transcript_delta"), **self._where(), delta=self._append_transcript(text))
        if not self.speak or chunk.audio.size == 0:
            return
        start_ms = self.audio_samples_sent * 1000 / PROTOCOL_RATE
        end_ms = start_ms + chunk.audio.size * 1000 / PROTOCOL_RATE
        words = tuple(Word(w.text, start_ms + w.start_ms, start_ms + w.end_ms) for w in chunk.words)
        self.item.segments.append(SpokenSegment(text.strip(), start_ms, end_ms, words))
        self.run.stats.mark("first_audio_sent")
        pcm = float_to_pcm16(np.asarray(chunk.audio, dtype=np.float32))
        step = DELTA_SAMPLES * 2
        for offset in range(0, len(pcm), step):
            self._emit(self._event("audio_delta"), **self._where(),
                       delta=base64.b64encode(pcm[offset:offset + step]).decode("ascii"))
        self.audio_samples_sent += chunk.audio.size

    def _write(self, text: str) -> None:
        if self.speak:  # a speaking backend's transcript text: it belongs to the audio that follows
            self._pending_text += text
            return
        self._emit("response.output_text.delta", **self._where(), delta=self._append_transcript(text))

    def _append_transcript(self, text: str) -> str:
        """Add text to the item; returns the delta as sent, so the deltas concatenate to the transcript."""
        part = self.item.content[0]
        if not self.speak:
            part.text = (part.text or "") + text
            return text
        spoken = part.transcript or ""
        delta = (" " + text.lstrip()) if spoken and not spoken.endswith(" ") and not text.startswith(" ") else text
        part.transcript = spoken + delta
        return delta

    def _close(self, item_status: str) -> None:
        self._pending_text = ""  # text the backend never voiced was not said: it is not part of the conversation
        part = self.item.content[0]
        if self.speak:
            part.transcript = (part.transcript or "").strip()
        self.item.status = item_status
        if self.status == "completed":
            if self.speak:
                self._emit(self._event("audio_done"), **self._where())
                self._emit(self._event("transcript_done"), **self._where(), transcript=part.transcript)
            else:
                self._emit("response.output_text.done", **self._where(), text=part.text)
            self._emit("response.content_part.done", **self._where(), part=self._part())
        self._emit("response.output_item.done", response_id=self.id, output_index=0, item=self.item.to_protocol())
        self._emit("conversation.item.done", item=self.item.to_protocol())
        self._emit("response.done", response=self._describe())
        stats = self.run.stats
        log.info("response %s %s: %s (prefilled %d tokens, %d cached; decoded %d at %.0f tok/s)", self.id,
                 self.status, stats.trace(self.run.started_at), stats.prompt_tokens, stats.cached_tokens,
                 stats.output_tokens, stats.decode_tok_s)
        self._on_finished(self)

    # --- shapes -------------------------------------------------------------------------------------

    def _event(self, name: str) -> str:
        return {
            "transcript_delta": "response.output_audio_transcript.delta",
            "transcript_done": "response.output_audio_transcript.done",
            "audio_delta": "response.output_audio.delta",
            "audio_done": "response.output_audio.done",
        }[name] if self.speak else "response.output_text.delta"

    def _where(self) -> dict[str, Any]:
        return {"response_id": self.id, "item_id": self.item.id, "output_index": 0, "content_index": 0}

    def _part(self) -> dict[str, Any]:
        part = self.item.content[0]
        if self.speak:
            return {"type": "audio", "transcript": part.transcript or ""}
        return {"type": "text", "text": part.text or ""}

    def _describe(self) -> dict[str, Any]:
        details = None
        if self.status == "cancelled":
            details = {"type": "cancelled", "reason": self.status_reason}
        elif self.status == "failed":
            details = {"type": "failed", "error": self.error}
        stats = self.run.stats
        return {
            "object": "realtime.response",
            "id": self.id,
            "status": self.status,
            "status_details": details,
            "output": [] if self.status == "in_progress" else [self.item.to_protocol()],
            "output_modalities": ["audio"] if self.speak else ["text"],
            "usage": {
                "input_tokens": stats.prompt_tokens + stats.cached_tokens,
                "output_tokens": stats.output_tokens,
                "total_tokens": stats.prompt_tokens + stats.cached_tokens + stats.output_tokens,
                "input_token_details": {"cached_tokens": stats.cached_tokens},
            },
        }
