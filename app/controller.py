"""The conversation as the person experiences it: what the assistant is doing, and what to do next.

The state is never stored: it is derived from a few facts (connected? a reply in flight? playing?
listening?) every time one changes, so no sequence of events can leave it wedged ("speaking" with
nothing playing). Every reply is tracked by its response id; anything of a cancelled id is ignored.

Runs on the GUI thread. Audio never passes through it: the link hands reply audio to the speaker, and
the microphone router silences the speaker on a barge-in before telling the controller.
"""

from __future__ import annotations

import base64
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Protocol

from PySide6.QtCore import QObject, Signal

from app.own_voice import is_own_words
from app.session_setup import session_update
from app.state import AppState

log = logging.getLogger(__name__)

# The engine hears speech that began while a reply sounded (its onset from the held-back second the router
# sends on a barge-in) up to this long after the reply went quiet.
OWN_VOICE_WINDOW_S = 2.0


class EnginePort(Protocol):
    def send(self, event: dict) -> bool: ...
    def update_session(self, event: dict) -> None: ...  # sent now and again on every reconnect


# SpeakerPort.cancel(UNANNOUNCED): the reply asked for and not announced yet (app.audio.playback.UNANNOUNCED).
UNANNOUNCED = ""


class SpeakerPort(Protocol):
    def cancel(self, response_id: str) -> float: ...  # silences it now; returns how much was heard (ms)
    def flush(self) -> object: ...
    def heard_ms(self, response_id: str) -> float: ...  # counts only samples that have left the device


class MicPort(Protocol):
    def set_streaming(self, streaming: bool) -> None: ...
    def guard(self, response_id: str | None) -> None: ...


class HistoryPort(Protocol):
    def record(self, role: str, text: str, item_id: str, interrupted: bool = False, had_screenshot: bool = False,
               after: str | None = None) -> None: ...  # adds the turn (after `after`'s), or replaces the one with that id
    def as_conversation_items(self) -> list[dict]: ...
    def clear(self) -> None: ...


@dataclass
class TalkSettings:
    hands_free: bool = False
    sensitivity: float = 0.5
    silence_ms: int = 384
    voice: str = "joe"
    speed: float = 1.0
    instructions: str = ""  # empty: the engine's own persona


@dataclass
class _Reply:
    response_id: str
    item_id: str | None = None
    text: str = ""
    cancelled: bool = False
    done: bool = False
    has_audio: bool = False  # audio of it was sent (it went straight to the speaker)
    drained: bool = False  # its last sample left the speaker (that can come before response.done reaches us)


@dataclass
class _Facts:
    connected: bool = False
    failure: str = ""  # a problem that stops conversation (engine gave up)
    muted: bool = False
    talk_held: bool = False  # push-to-talk key or button is down
    one_shot: bool = False  # a screen question: listen hands-free for one turn
    awaiting_reply: bool = False  # a turn was committed; no response yet
    cut_unseen: bool = False  # the person stopped the awaited reply before it was announced: cut it then
    reply: _Reply | None = None  # the response in flight
    playing: str | None = None  # response id whose audio is playing
    queued: str | None = None  # a reply the engine finished before its first sound played: it is on its way
    speaker_lost: bool = False  # the speaker failed and has not played since: replies show as text only
    replies: dict[str, _Reply] = field(default_factory=dict)  # not settled yet: in flight, playing, being cut


class Controller(QObject):
    state_changed = Signal(object, str)  # AppState, detail
    user_partial = Signal(str, str)  # item_id, text so far
    user_final = Signal(str, str)  # item_id, transcript
    assistant_delta = Signal(str, str)  # response_id, text
    assistant_finished = Signal(str, str, bool)  # response_id, what was heard, interrupted
    screenshot_attached = Signal(bytes)
    conversation_cleared = Signal()
    message = Signal(str, bool)  # text, is_error
    speech_heard = Signal()  # the engine's turn detection heard speech start
    spoken_turn_heard = Signal(str, bool)  # item_id, it was the reply's own voice (and was dropped)
    hands_free_changed = Signal(bool)
    muted_changed = Signal(bool)

    def __init__(self, engine: EnginePort, speaker: SpeakerPort, mic: MicPort, history: HistoryPort | None,
                 settings: TalkSettings | None = None, parent: QObject | None = None):
        super().__init__(parent)
        self._engine, self._speaker, self._mic, self._history = engine, speaker, mic, history
        self.settings = settings or TalkSettings()
        self._facts = _Facts()
        self._partials: dict[str, str] = {}
        self._pending_screenshot = False
        self._session_items: list[str] = []  # what the engine's conversation holds, by item id
        self._went_quiet_last: tuple[str, float] = ("", 0.0)  # the reply that sounded last, and when it stopped
        self._heard_text: dict[str, str] = {}  # response id → what was heard of it (recent replies)
        self._spoken_over: dict[str, str] = {}  # user item id → the reply sounding, or just stopped, when it began
        self._own_voice_items: set[str] = set()  # dropped: their late partials show nothing
        self._state: tuple[AppState, str] = (AppState.CONNECTING, "")
        self._engine.update_session(self._session())

    # --- what the person sees ------------------------------------------------------------------------

    @property
    def state(self) -> AppState:
        return self._state[0]

    @property
    def hands_free(self) -> bool:
        return self.settings.hands_free

    @property
    def muted(self) -> bool:
        return self._facts.muted

    def _derive(self) -> tuple[AppState, str]:
        f = self._facts
        if f.failure:
            return AppState.ERROR, f.failure
        if not f.connected:
            return AppState.CONNECTING, "starting the engine"
        if f.playing:
            return AppState.SPEAKING, ""
        if f.awaiting_reply or (f.reply and not f.reply.done):
            return AppState.THINKING, ""
        if f.muted:
            return AppState.MUTED, "microphone off"
        if self._listening():
            return AppState.LISTENING, "hands-free" if self.settings.hands_free else ""
        return AppState.IDLE, "hold the talk key, or turn on hands-free"

    def _listening(self) -> bool:
        f = self._facts
        return f.connected and not f.muted and (f.talk_held or self.settings.hands_free or f.one_shot)

    def _refresh(self) -> None:
        """Re-derive the state and make the microphone and barge-in guard agree with it."""
        self._mic.set_streaming(self._listening())
        self._mic.guard(self._facts.playing)
        state = self._derive()
        if state != self._state:
            self._state = state
            self.state_changed.emit(*state)

    # --- engine connection ---------------------------------------------------------------------------

    def engine_connected(self) -> None:
        """A (new) engine session: its conversation is empty, so it is re-seeded from the history."""
        f = self._facts
        f.connected, f.failure = True, ""
        f.cut_unseen = False
        self._session_items.clear()  # a new session starts empty; the seeded items are announced again
        self._spoken_over.clear()
        self._own_voice_items.clear()
        if self._history is not None:
            for item in self._history.as_conversation_items():
                self._engine.send(item)
        self._refresh()

    def engine_disconnected(self, reason: str) -> None:
        f = self._facts
        was_connected = f.connected
        f.connected = False
        self._speaker.flush()
        f.playing, f.queued, f.reply, f.awaiting_reply, f.one_shot = None, None, None, False, False
        f.cut_unseen = False
        f.replies.clear()
        if was_connected:
            self.message.emit(f"Lost the engine ({reason}); reconnecting…", True)
        self._refresh()

    def engine_failed(self, reason: str) -> None:
        self._facts.failure = reason
        self.message.emit(reason, True)
        self._refresh()

    # --- the person's actions ------------------------------------------------------------------------

    def talk_pressed(self) -> None:
        f = self._facts
        if f.talk_held or not f.connected:
            return
        self._interrupt("the talk key")
        f.talk_held = True
        if not self.settings.hands_free:
            self._engine.send({"type": "input_audio_buffer.clear"})  # the turn starts now, not before
        self._refresh()

    def talk_released(self) -> None:
        f = self._facts
        if not f.talk_held:
            return
        f.talk_held = False
        if not self.settings.hands_free and f.connected and not f.muted:
            self._mic.set_streaming(False)  # the last chunk is sent before the commit: same thread, in order
            self._engine.send({"type": "input_audio_buffer.commit"})
            self._engine.send({"type": "response.create"})
            f.awaiting_reply = True
        self._refresh()

    def set_hands_free(self, on: bool) -> None:
        if on == self.settings.hands_free:
            return
        self.settings.hands_free = on
        self._facts.one_shot = False
        self._engine.update_session(self._session())
        self.hands_free_changed.emit(on)
        self._refresh()

    def set_muted(self, muted: bool) -> None:
        if muted == self._facts.muted:
            return
        self._facts.muted = muted
        self.muted_changed.emit(muted)
        self._refresh()

    def submit_text(self, text: str) -> None:
        text = text.strip()
        if not text or not self._facts.connected:
            if text:
                self.message.emit("The engine is not connected yet; try again in a moment.", True)
            return
        self._interrupt("typing")
        item_id = f"item_{uuid.uuid4().hex[:20]}"
        self._engine.send({"type": "conversation.item.create", "item": {
            "id": item_id, "type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}})
        self._engine.send({"type": "response.create"})
        self._facts.awaiting_reply = True
        self._record("user", text, item_id)
        self.user_final.emit(item_id, text)
        self._refresh()

    def ask_about_screen(self, png: bytes, question: str | None = None) -> None:
        """Attach a screenshot; the next question (typed now, or spoken next) is about it."""
        if not self._facts.connected:
            self.message.emit("The engine is not connected yet; try again in a moment.", True)
            return
        self._interrupt("a screen question")
        self._engine.send({"type": "conversation.item.create", "item": {
            "type": "message", "role": "user",
            "content": [{"type": "input_image", "image_url": "data:image/png;base64," + base64.b64encode(png).decode()}]}})
        self._pending_screenshot = True
        self.screenshot_attached.emit(png)
        if question:
            self.submit_text(question)
        else:
            self.listen_once()
        self._refresh()

    def listen_once(self) -> None:
        """Hear one spoken turn without holding a key (the tray's Talk, a screen question), then go back
        to push-to-talk. In hands-free mode the microphone is open already."""
        if self.settings.hands_free or not self._facts.connected:
            return
        self._interrupt("talk")
        self._facts.one_shot = True
        self._engine.update_session(self._session())
        self._refresh()

    def apply_settings(self) -> None:
        """Voice, speed or sensitivity changed: the engine session follows."""
        self._engine.update_session(self._session())

    def stop_speaking(self) -> None:
        self._interrupt("stop", awaited_too=True)
        self._refresh()

    def new_conversation(self) -> None:
        """Forget the conversation: here, in the saved history, and in the engine's session (each item
        it holds is deleted, screenshots included), so the next turn starts with nothing before it."""
        f = self._facts
        self._interrupt("a new conversation", awaited_too=True)
        for item_id in self._session_items:
            self._engine.send({"type": "conversation.item.delete", "item_id": item_id})
        self._session_items.clear()
        # What was being cut settles into nothing: its heard text must not land in the new history.
        f.replies = {rid: reply for rid, reply in f.replies.items() if not reply.cancelled}
        f.awaiting_reply = False
        self._partials.clear()
        self._pending_screenshot = False
        self._end_one_shot()
        if self._history is not None:
            self._history.clear()
        self.conversation_cleared.emit()
        self._refresh()

    def barge_in(self, response_id: str, _onset: float | None = None) -> None:
        """The person spoke over the reply; the speaker is already silent (MicRouter did it)."""
        if response_id in self._facts.replies:
            self._cut_reply(response_id)
        self._refresh()

    def _interrupt(self, why: str, awaited_too: bool = False) -> None:
        """Whatever is playing or being generated stops now: silence first, then tell the engine.
        `awaited_too`: a reply asked for but not announced yet is cut the moment it is."""
        f = self._facts
        target = f.playing or f.queued or (f.reply.response_id if f.reply and not f.reply.done else None)
        if target is None:
            if awaited_too and f.awaiting_reply:
                f.cut_unseen, f.awaiting_reply = True, False
                self._speaker.cancel(UNANNOUNCED)  # its audio may reach the speaker before its id reaches us
            elif f.awaiting_reply:  # a new turn follows: the engine stops this one first, or it refuses that
                f.awaiting_reply = False
                self._engine.send({"type": "response.cancel"})
            return
        log.info("interrupting %s (%s)", target, why)
        self._speaker.cancel(target)
        self._cut_reply(target)

    def _cut_reply(self, response_id: str) -> None:
        f = self._facts
        reply = f.replies.get(response_id)
        # What left the device, not what was queued for it: samples already in the device buffer at the
        # moment of the cut still played, and are counted.
        heard_ms = int(self._speaker.heard_ms(response_id))
        if reply is not None and not reply.cancelled:
            reply.cancelled = True
            if f.reply is reply:
                f.reply = None  # nothing more is awaited from it
            if not reply.done:
                self._engine.send({"type": "response.cancel", "response_id": response_id})
            if reply.item_id:
                self._truncate(reply, heard_ms)
        if f.playing == response_id:
            f.playing = None
            self._went_quiet_last = (response_id, time.monotonic())
        if f.queued == response_id:
            f.queued = None

    def _truncate(self, reply: _Reply, heard_ms: int) -> None:
        """The engine keeps only what was heard of a cut reply; its text comes back (item retrieved)."""
        self._engine.send({"type": "conversation.item.truncate", "item_id": reply.item_id,
                           "content_index": 0, "audio_end_ms": heard_ms})
        self._engine.send({"type": "conversation.item.retrieve", "item_id": reply.item_id})

    # --- audio feedback --------------------------------------------------------------------------------

    def playback_started(self, response_id: str) -> None:
        f = self._facts
        if f.queued == response_id:
            f.queued = None
        elif f.reply is None or f.reply.response_id != response_id or f.reply.cancelled:
            return  # audio of a reply already cut: never let it claim the speaker
        f.playing, f.speaker_lost = response_id, False
        self._refresh()

    def playback_drained(self, response_id: str) -> None:
        f = self._facts
        if response_id in (f.playing, f.queued):
            if f.playing == response_id:
                f.playing = None
            else:
                f.queued = None
            reply = f.replies.get(response_id)
            if reply is not None:
                reply.drained = True
                self._went_quiet_last = (response_id, time.monotonic())
                self._keep_heard_text(response_id, reply.text)
                if reply.done and not reply.cancelled:
                    del f.replies[response_id]  # fully heard: settled
            self._end_one_shot()
            self._refresh()

    def microphone_failed(self, message: str) -> None:
        self.message.emit(f"{message} You can still type your questions.", True)

    def speaker_failed(self, message: str) -> None:
        self._facts.speaker_lost = True
        self.message.emit(f"{message} Replies will show as text.", True)

    # --- engine events ---------------------------------------------------------------------------------

    def engine_event(self, event: dict[str, Any]) -> None:
        handler = self._EVENTS.get(event.get("type", ""))
        if handler is not None:
            handler(self, event)

    def _on_speech_started(self, event: dict) -> None:
        self.speech_heard.emit()
        self._note_reply_sounding(event.get("item_id"))
        # The engine heard the person over the reply (and stopped it, with interrupt_response); silence
        # the rest here too, in case the local detector missed quieter speech.
        if self._facts.playing or self._facts.reply:
            self._interrupt("speech heard by the engine")
            self._refresh()

    def _on_speech_stopped(self, event: dict) -> None:
        if self._listening():
            self._facts.awaiting_reply = True
            self._refresh()

    def _on_partial(self, event: dict) -> None:
        item_id = event.get("item_id", "")
        if item_id in self._own_voice_items:
            return
        self._partials[item_id] = self._partials.get(item_id, "") + (event.get("delta") or "")
        self.user_partial.emit(item_id, self._partials[item_id])

    def _on_transcript(self, event: dict) -> None:
        item_id, text = event.get("item_id", ""), (event.get("transcript") or "").strip()
        self._partials.pop(item_id, None)
        heard = self._heard_text.get(self._spoken_over.pop(item_id, ""), "")
        if text and heard and is_own_words(text, heard):
            self._drop_own_voice(item_id, text)
            return
        self.user_final.emit(item_id, text)
        if text:
            items = self._session_items
            after = items[items.index(item_id) - 1] if item_id in items[1:] else None
            self._record("user", text, item_id, had_screenshot=self._pending_screenshot, after=after)
            self._pending_screenshot = False
            self.spoken_turn_heard.emit(item_id, False)

    def _on_response_created(self, event: dict) -> None:
        f = self._facts
        response_id = event["response"]["id"]
        if f.reply is not None:  # the engine runs one response at a time: the previous one is over
            f.reply.done = True
            if f.playing != f.reply.response_id:
                f.replies.pop(f.reply.response_id, None)
        if f.queued is not None:  # never started: the new reply's audio takes the speaker from it
            f.replies.pop(f.queued, None)
            f.queued = None
        f.reply, f.awaiting_reply = _Reply(response_id), False
        f.replies[response_id] = f.reply
        if f.cut_unseen:
            f.cut_unseen = False
            self._speaker.cancel(response_id)
            self._cut_reply(response_id)
        self._refresh()

    def _on_output_item(self, event: dict) -> None:
        reply = self._facts.replies.get(event.get("response_id"))
        if reply is None or reply.item_id:
            return
        reply.item_id = event.get("item", {}).get("id")
        if reply.cancelled and reply.item_id:  # cut before its item was announced
            self._truncate(reply, int(self._speaker.heard_ms(reply.response_id)))

    def _on_reply_text(self, event: dict) -> None:
        reply = self._facts.reply
        if reply and reply.response_id == event.get("response_id") and not reply.cancelled:
            reply.text += event.get("delta") or ""
            self.assistant_delta.emit(reply.response_id, event.get("delta") or "")

    def _on_response_done(self, event: dict) -> None:
        f = self._facts
        reply = f.replies.get((event.get("response") or {}).get("id"))
        if reply is None or reply.done:
            return
        reply.done = True
        if f.reply is reply:
            f.reply = None
        if (event.get("response") or {}).get("status") == "cancelled" and not reply.cancelled:
            # Stopped in the engine (its own interruption, or our cancel sent before it was announced).
            self._speaker.cancel(reply.response_id)
            self._cut_reply(reply.response_id)
        if reply.cancelled and not reply.item_id:  # cut before it said anything
            f.replies.pop(reply.response_id, None)
            self.assistant_finished.emit(reply.response_id, "", True)
        elif not reply.cancelled:  # a cut reply settles when its heard text comes back (item retrieved)
            self.assistant_finished.emit(reply.response_id, reply.text, False)
            self._record("assistant", reply.text, reply.item_id or reply.response_id)
            if reply.has_audio and not reply.drained and not f.speaker_lost and f.playing != reply.response_id:
                f.queued = reply.response_id  # its sound is still on its way: a stop must find it
            elif f.playing != reply.response_id:
                f.replies.pop(reply.response_id, None)
                self._end_one_shot()  # nothing (more) to play
        self._refresh()

    def _on_audio(self, event: dict) -> None:
        reply = self._facts.replies.get(event.get("response_id"))
        if reply is not None:
            reply.has_audio = True

    def _on_item_retrieved(self, event: dict) -> None:
        item = event.get("item") or {}
        for response_id, reply in list(self._facts.replies.items()):
            if reply.cancelled and reply.item_id == item.get("id"):
                content = (item.get("content") or [{}])[0]
                heard = content.get("transcript") or content.get("text") or ""
                del self._facts.replies[response_id]
                self._keep_heard_text(response_id, heard)
                self.assistant_finished.emit(response_id, heard, True)
                self._record("assistant", heard, reply.item_id, interrupted=True)

    def _on_item_created(self, event: dict) -> None:
        item_id = (event.get("item") or {}).get("id")
        if item_id and item_id not in self._session_items:
            self._session_items.append(item_id)

    def _on_item_deleted(self, event: dict) -> None:
        if event.get("item_id") in self._session_items:
            self._session_items.remove(event["item_id"])

    def _on_error(self, event: dict) -> None:
        error = event.get("error") or {}
        if error.get("code") in ("response_cancel_not_active",):
            return  # the reply finished just as we cancelled it: nothing went wrong
        self.message.emit(f"The engine said: {error.get('message', 'unknown error')}", True)
        f = self._facts
        f.awaiting_reply = f.cut_unseen = False  # a refused turn gets no reply; never wait for one (or cut it)
        self._refresh()

    _EVENTS = {
        "input_audio_buffer.speech_started": _on_speech_started,
        "input_audio_buffer.speech_stopped": _on_speech_stopped,
        "conversation.item.input_audio_transcription.delta": _on_partial,
        "conversation.item.input_audio_transcription.completed": _on_transcript,
        "response.created": _on_response_created,
        "response.output_item.added": _on_output_item,
        "response.output_audio.delta": _on_audio,
        "response.audio.delta": _on_audio,
        "response.output_audio_transcript.delta": _on_reply_text,
        "response.audio_transcript.delta": _on_reply_text,
        "response.output_text.delta": _on_reply_text,
        "response.done": _on_response_done,
        "conversation.item.retrieved": _on_item_retrieved,
        "conversation.item.created": _on_item_created,
        "conversation.item.added": _on_item_created,  # the GA name
        "conversation.item.deleted": _on_item_deleted,
        "error": _on_error,
    }

    # --- its own voice ----------------------------------------------------------------------------------

    def _keep_heard_text(self, response_id: str, text: str) -> None:
        self._heard_text[response_id] = text
        while len(self._heard_text) > 4:
            del self._heard_text[next(iter(self._heard_text))]

    def _note_reply_sounding(self, item_id: str | None) -> None:
        """Speech began while a reply sounded (or just after): if its words turn out to be the last ones
        heard of that reply (known once the reply is cut or played out), it was the speakers' echo. Only in
        hands-free: with the talk key the person stops the reply first."""
        if not item_id or not self.settings.hands_free:
            return
        quiet_id, quiet_at = self._went_quiet_last
        if self._facts.playing:
            self._spoken_over[item_id] = self._facts.playing
        elif quiet_id and time.monotonic() - quiet_at < OWN_VOICE_WINDOW_S:
            self._spoken_over[item_id] = quiet_id

    def _drop_own_voice(self, item_id: str, text: str) -> None:
        """The engine transcribed the reply's own echo as a turn: forget that turn there and here, and stop
        the answer it asked for (announced or not), so the assistant never answers itself."""
        log.warning("the engine heard the assistant's own voice: %r", text)
        self._own_voice_items.add(item_id)
        self._engine.send({"type": "conversation.item.delete", "item_id": item_id})
        self._interrupt("its own voice", awaited_too=True)
        self.spoken_turn_heard.emit(item_id, True)
        self.message.emit(f"Confide heard its own voice through the speakers (\u201c{text}\u201d) and did not "
                          "answer it.", False)
        self._refresh()

    # --- helpers ---------------------------------------------------------------------------------------

    def _end_one_shot(self) -> None:
        if self._facts.one_shot:
            self._facts.one_shot = False
            self._engine.update_session(self._session())

    def _session(self) -> dict:
        s = self.settings
        return session_update(hands_free=s.hands_free or self._facts.one_shot, sensitivity=s.sensitivity,
                              silence_ms=s.silence_ms, voice=s.voice, speed=s.speed, instructions=s.instructions)

    def _record(self, role: str, text: str, item_id: str, interrupted: bool = False,
                had_screenshot: bool = False, after: str | None = None) -> None:
        if self._history is not None:
            self._history.record(role, text, item_id, interrupted=interrupted, had_screenshot=had_screenshot,
                                 after=after)
