"""The controller's state machine: every state × every event, and the flows that matter.

The controller's ports are recorded here (it talks to the engine, speaker and microphone only through
them); the same controller drives the real engine, devices and desktop in test_app_end_to_end.py.
"""

from __future__ import annotations

import itertools
import time
import types

import pytest

from app.controller import Controller, TalkSettings
from app.state import AppState

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 16


class RecordingEngine:
    def __init__(self):
        self.sent: list[dict] = []
        self.sessions: list[dict] = []

    def send(self, event: dict) -> bool:
        self.sent.append(event)
        return True

    def update_session(self, event: dict) -> None:
        self.sessions.append(event)

    def of_type(self, kind: str) -> list[dict]:
        return [e for e in self.sent if e["type"] == kind]


class RecordingSpeaker:
    def __init__(self):
        self.cancelled: list[str] = []
        self.flushes = 0
        self.heard_ms_value = 1234.0

    def cancel(self, response_id: str) -> float:
        self.cancelled.append(response_id)
        return self.heard_ms_value

    def flush(self) -> None:
        self.flushes += 1

    def heard_ms(self, response_id: str) -> float:
        return self.heard_ms_value


class RecordingMic:
    def __init__(self):
        self.streaming = False
        self.guarding: str | None = None

    def set_streaming(self, streaming: bool) -> None:
        self.streaming = streaming

    def guard(self, response_id: str | None) -> None:
        self.guarding = response_id


class MemoryHistory:
    def __init__(self):
        self.turns: dict[str, tuple] = {}
        self.placed_after: dict[str, str | None] = {}

    def record(self, role, text, item_id, interrupted=False, had_screenshot=False, after=None):
        self.turns[item_id] = (role, text, interrupted, had_screenshot)
        self.placed_after[item_id] = after

    def as_conversation_items(self) -> list[dict]:
        return [{"type": "conversation.item.create", "item": {"id": item_id, "role": role}}
                for item_id, (role, *_rest) in self.turns.items()]

    def clear(self) -> None:
        self.turns.clear()


class Rig:
    def __init__(self, hands_free: bool = False):
        self.engine, self.speaker, self.mic, self.history = RecordingEngine(), RecordingSpeaker(), RecordingMic(), MemoryHistory()
        self.controller = Controller(self.engine, self.speaker, self.mic, self.history, TalkSettings(hands_free=hands_free))
        self.states: list[AppState] = []
        self.finished: list[tuple] = []
        self.messages: list[tuple] = []
        self.controller.state_changed.connect(lambda state, detail: self.states.append(state))
        self.controller.assistant_finished.connect(lambda *args: self.finished.append(args))
        self.controller.message.connect(lambda *args: self.messages.append(args))
        self.responses = itertools.count(1)

    @property
    def state(self) -> AppState:
        return self.controller.state

    def event(self, kind: str, **fields) -> None:
        self.controller.engine_event({"type": kind, **fields})

    def reply_arrives(self, text: str = "Hello there.") -> str:
        response_id = f"resp_{next(self.responses)}"
        self.event("response.created", response={"id": response_id})
        self.event("response.output_item.added", response_id=response_id, item={"id": f"item_{response_id}"})
        self.event("response.output_audio_transcript.delta", response_id=response_id, delta=text)
        self.controller.playback_started(response_id)
        return response_id

    def current_response(self) -> str | None:
        return self.controller._facts.reply.response_id if self.controller._facts.reply else self.controller._facts.playing


# --- putting the controller in each state -------------------------------------------------------------

def in_connecting() -> Rig:
    return Rig()


def in_idle() -> Rig:
    rig = Rig()
    rig.controller.engine_connected()
    return rig


def in_listening() -> Rig:
    rig = in_idle()
    rig.controller.talk_pressed()
    return rig


def in_thinking() -> Rig:
    rig = in_listening()
    rig.controller.talk_released()
    return rig


def in_speaking() -> Rig:
    rig = in_thinking()
    rig.reply_arrives()
    return rig


def in_muted() -> Rig:
    rig = in_idle()
    rig.controller.set_muted(True)
    return rig


def in_error() -> Rig:
    rig = in_idle()
    rig.controller.engine_failed("the engine could not start: model missing")
    return rig


STATES = {
    AppState.CONNECTING: in_connecting, AppState.IDLE: in_idle, AppState.LISTENING: in_listening,
    AppState.THINKING: in_thinking, AppState.SPEAKING: in_speaking, AppState.MUTED: in_muted, AppState.ERROR: in_error,
}


def _current(rig: Rig) -> str:
    return rig.current_response() or "resp_none"


EVENTS = {
    "engine_connected": lambda rig: rig.controller.engine_connected(),
    "engine_disconnected": lambda rig: rig.controller.engine_disconnected("connection reset"),
    "engine_failed": lambda rig: rig.controller.engine_failed("gave up after 5 crashes"),
    "talk_pressed": lambda rig: rig.controller.talk_pressed(),
    "talk_released": lambda rig: rig.controller.talk_released(),
    "hands_free_on": lambda rig: rig.controller.set_hands_free(True),
    "hands_free_off": lambda rig: rig.controller.set_hands_free(False),
    "mute": lambda rig: rig.controller.set_muted(True),
    "unmute": lambda rig: rig.controller.set_muted(False),
    "submit_text": lambda rig: rig.controller.submit_text("what time is it"),
    "ask_about_screen": lambda rig: rig.controller.ask_about_screen(PNG),
    "stop_speaking": lambda rig: rig.controller.stop_speaking(),
    "barge_in": lambda rig: rig.controller.barge_in(_current(rig), 0.0),
    "playback_started": lambda rig: rig.controller.playback_started(_current(rig)),
    "playback_drained": lambda rig: rig.controller.playback_drained(_current(rig)),
    "microphone_failed": lambda rig: rig.controller.microphone_failed("The microphone was unplugged."),
    "speaker_failed": lambda rig: rig.controller.speaker_failed("The speaker is gone."),
    "speech_started": lambda rig: rig.event("input_audio_buffer.speech_started", audio_start_ms=0, item_id="item_u"),
    "speech_stopped": lambda rig: rig.event("input_audio_buffer.speech_stopped", audio_end_ms=900, item_id="item_u"),
    "transcript_delta": lambda rig: rig.event("conversation.item.input_audio_transcription.delta", item_id="item_u", delta="what"),
    "transcript_done": lambda rig: rig.event("conversation.item.input_audio_transcription.completed", item_id="item_u",
                                             transcript="what time is it"),
    "response_created": lambda rig: rig.event("response.created", response={"id": "resp_new"}),
    "reply_text": lambda rig: rig.event("response.output_audio_transcript.delta", response_id=_current(rig), delta="Hi"),
    "response_done": lambda rig: rig.event("response.done", response={"id": _current(rig), "status": "completed"}),
    "response_cancelled": lambda rig: rig.event("response.done", response={"id": _current(rig), "status": "cancelled"}),
    "item_retrieved": lambda rig: rig.event("conversation.item.retrieved", item={
        "id": f"item_{_current(rig)}", "content": [{"type": "output_audio", "transcript": "Hello"}]}),
    "engine_error": lambda rig: rig.event("error", error={"code": "invalid_value", "message": "bad"}),
    "unknown_event": lambda rig: rig.event("rate_limits.updated"),
    "new_conversation": lambda rig: rig.controller.new_conversation(),
}


def settle(rig: Rig) -> None:
    """Whatever was in flight finishes, as the engine and speaker would finish it."""
    if not rig.controller._facts.connected:
        rig.controller.engine_connected()
    rig.controller.talk_released()
    for response_id in list(rig.controller._facts.replies):
        rig.event("response.done", response={"id": response_id, "status": "completed"})
        rig.event("conversation.item.retrieved", item={"id": f"item_{response_id}", "content": [{"transcript": ""}]})
        rig.controller.playback_drained(response_id)
    if rig.controller._facts.awaiting_reply:
        response_id = rig.reply_arrives()
        rig.event("response.done", response={"id": response_id, "status": "completed"})
        rig.controller.playback_drained(response_id)


@pytest.mark.parametrize("state", list(STATES), ids=[s.value for s in STATES])
def test_each_state_is_reachable(qtbot, state):
    assert STATES[state]().state is state


@pytest.mark.parametrize("state,event", list(itertools.product(STATES, EVENTS)),
                         ids=[f"{s.value}-{e}" for s, e in itertools.product(STATES, EVENTS)])
def test_every_event_in_every_state(qtbot, state, event):
    rig = STATES[state]()
    playing_before = rig.controller._facts.playing
    EVENTS[event](rig)
    facts = rig.controller._facts
    # The state is always the one the facts imply, and the microphone and barge-in guard agree with it.
    assert rig.state == rig.controller._derive()[0]
    assert rig.mic.streaming == rig.controller._listening()
    assert rig.mic.guarding == facts.playing
    # Anything that interrupts a playing reply silences it and truncates to what was heard.
    if playing_before and event in ("barge_in", "stop_speaking", "talk_pressed", "submit_text", "ask_about_screen",
                                    "speech_started", "new_conversation"):
        assert facts.playing is None
        if event != "barge_in":  # on a barge-in the microphone router already silenced the speaker
            assert playing_before in rig.speaker.cancelled
        truncates = rig.engine.of_type("conversation.item.truncate")
        assert truncates and truncates[-1]["audio_end_ms"] == 1234
    # And nothing wedges: once the world settles, the controller is back to waiting for the person.
    if state is not AppState.ERROR and event != "engine_failed":
        settle(rig)
        assert rig.state in (AppState.IDLE, AppState.LISTENING, AppState.MUTED), (rig.state, facts)
        assert not facts.replies


# --- the flows that matter ----------------------------------------------------------------------------

def test_push_to_talk_turn(qtbot):
    rig = in_idle()
    assert rig.engine.sessions[-1]["session"]["audio"]["input"]["turn_detection"] is None
    rig.controller.talk_pressed()
    assert rig.state is AppState.LISTENING and rig.mic.streaming
    assert rig.engine.sent[-1] == {"type": "input_audio_buffer.clear"}
    rig.controller.talk_released()
    assert [e["type"] for e in rig.engine.sent[-2:]] == ["input_audio_buffer.commit", "response.create"]
    assert rig.state is AppState.THINKING and not rig.mic.streaming
    response_id = rig.reply_arrives("Four.")
    assert rig.state is AppState.SPEAKING and rig.mic.guarding == response_id
    rig.event("response.done", response={"id": response_id, "status": "completed"})
    assert rig.state is AppState.SPEAKING  # still playing
    rig.controller.playback_drained(response_id)
    assert rig.state is AppState.IDLE and rig.mic.guarding is None
    assert rig.finished[-1] == (response_id, "Four.", False)
    assert rig.history.turns[f"item_{response_id}"] == ("assistant", "Four.", False, False)


def test_barge_in_truncates_to_what_was_heard_and_records_that(qtbot):
    rig = in_idle()
    rig.controller.set_hands_free(True)
    assert rig.engine.sessions[-1]["session"]["audio"]["input"]["turn_detection"]["type"] == "server_vad"
    response_id = rig.reply_arrives("One, two, three, four, five.")
    rig.speaker.heard_ms_value = 800
    rig.controller.barge_in(response_id, 0.0)
    cancel, truncate, retrieve = rig.engine.sent[-3:]
    assert cancel == {"type": "response.cancel", "response_id": response_id}
    assert truncate["audio_end_ms"] == 800 and truncate["item_id"] == f"item_{response_id}"
    assert retrieve["type"] == "conversation.item.retrieve"
    assert rig.state is AppState.LISTENING and rig.mic.streaming
    # Anything of the cut reply that still arrives is ignored.
    rig.event("response.output_audio_transcript.delta", response_id=response_id, delta=" six")
    rig.controller.playback_started(response_id)
    assert rig.state is AppState.LISTENING
    rig.event("response.done", response={"id": response_id, "status": "cancelled"})
    rig.event("conversation.item.retrieved", item={"id": f"item_{response_id}",
                                                   "content": [{"type": "output_audio", "transcript": "One, two,"}]})
    assert rig.finished[-1] == (response_id, "One, two,", True)
    assert rig.history.turns[f"item_{response_id}"] == ("assistant", "One, two,", True, False)


def test_a_reply_whose_sound_ends_before_its_done_event_settles_and_is_never_cut_later(qtbot):
    # The speaker learns a reply's audio is complete from the link thread, so its last sample can leave
    # (drained) before the controller hears response.done: the reply is settled, not queued for a stop.
    rig = in_thinking()
    response_id = rig.reply_arrives("All of it.")
    rig.event("response.output_audio.delta", response_id=response_id, delta="")
    rig.controller.playback_drained(response_id)
    rig.event("response.done", response={"id": response_id, "status": "completed"})
    assert rig.controller._facts.replies == {} and rig.controller._facts.queued is None
    rig.controller.talk_pressed()
    assert response_id not in rig.speaker.cancelled and not rig.engine.of_type("conversation.item.truncate")
    assert rig.history.turns[f"item_{response_id}"] == ("assistant", "All of it.", False, False)


def test_talk_key_while_speaking_interrupts_then_listens(qtbot):
    rig = in_speaking()
    response_id = rig.controller._facts.playing
    rig.controller.talk_pressed()
    assert response_id in rig.speaker.cancelled
    assert rig.state is AppState.LISTENING
    assert rig.engine.of_type("conversation.item.truncate")[-1]["audio_end_ms"] == 1234


def test_losing_the_engine_mid_reply_and_coming_back_with_the_history(qtbot):
    rig = in_speaking()
    rig.event("conversation.item.input_audio_transcription.completed", item_id="item_q", transcript="hi")
    rig.controller.engine_disconnected("engine crashed")
    assert rig.state is AppState.CONNECTING and rig.speaker.flushes == 1 and not rig.mic.streaming
    assert rig.messages[-1][1] is True
    sent_before = len(rig.engine.sent)
    rig.controller.engine_connected()
    reseeded = rig.engine.sent[sent_before:]
    assert [e["item"]["id"] for e in reseeded] == list(rig.history.turns)
    assert rig.state is AppState.IDLE


def test_screen_question_listens_for_one_turn_in_push_to_talk_mode(qtbot):
    rig = in_idle()
    shots = []
    rig.controller.screenshot_attached.connect(shots.append)
    rig.controller.ask_about_screen(PNG)
    image = rig.engine.of_type("conversation.item.create")[-1]["item"]["content"][0]
    assert image["image_url"].startswith("data:image/png;base64,") and shots == [PNG]
    assert rig.engine.sessions[-1]["session"]["audio"]["input"]["turn_detection"]["type"] == "server_vad"
    assert rig.state is AppState.LISTENING and rig.mic.streaming
    rig.event("input_audio_buffer.speech_stopped", audio_end_ms=1, item_id="item_q")
    response_id = rig.reply_arrives()
    rig.event("response.done", response={"id": response_id, "status": "completed"})
    rig.controller.playback_drained(response_id)
    assert rig.engine.sessions[-1]["session"]["audio"]["input"]["turn_detection"] is None
    assert rig.state is AppState.IDLE and not rig.mic.streaming


def test_typed_question_is_recorded_and_answered(qtbot):
    rig = in_idle()
    rig.controller.submit_text("  what is two plus two?  ")
    create = rig.engine.of_type("conversation.item.create")[-1]["item"]
    assert create["content"][0]["text"] == "what is two plus two?"
    assert rig.engine.sent[-1] == {"type": "response.create"}
    assert rig.history.turns[create["id"]][:2] == ("user", "what is two plus two?")
    assert rig.state is AppState.THINKING


def test_a_refused_turn_never_leaves_it_thinking(qtbot):
    rig = in_thinking()
    rig.event("error", error={"code": "input_audio_buffer_commit_empty", "message": "buffer too small"})
    assert rig.state is AppState.IDLE and "buffer too small" in rig.messages[-1][0]


def test_muted_never_streams(qtbot):
    rig = in_idle()
    rig.controller.set_hands_free(True)
    rig.controller.set_muted(True)
    rig.controller.talk_pressed()
    assert not rig.mic.streaming and rig.state is AppState.MUTED


def test_instructions_setting_reaches_the_session_and_empty_keeps_the_engine_persona(qtbot):
    rig = in_idle()
    assert "instructions" not in rig.engine.sessions[-1]["session"]
    rig.controller.settings.instructions = "Answer in French."
    rig.controller.apply_settings()
    assert rig.engine.sessions[-1]["session"]["instructions"] == "Answer in French."
    rig.controller.settings.instructions = "   "
    rig.controller.apply_settings()
    assert "instructions" not in rig.engine.sessions[-1]["session"]


def test_a_new_conversation_forgets_everything_here_and_in_the_engine(qtbot):
    rig = in_idle()
    cleared = []
    rig.controller.conversation_cleared.connect(lambda: cleared.append(True))
    rig.controller.ask_about_screen(PNG, "what is this")
    for item_id in ("item_image", "item_typed"):
        rig.event("conversation.item.created", item={"id": item_id})
    response_id = rig.reply_arrives("That is a login form with")
    rig.event("conversation.item.created", item={"id": f"item_{response_id}"})
    rig.controller.new_conversation()
    # The reply stops (heard part truncated), then every item the engine holds is deleted.
    assert rig.speaker.cancelled == [response_id] and rig.controller.state is AppState.IDLE
    deleted = [e["item_id"] for e in rig.engine.of_type("conversation.item.delete")]
    assert deleted == ["item_image", "item_typed", f"item_{response_id}"]
    assert rig.history.turns == {} and cleared == [True]
    # The cut reply's heard text arriving afterwards does not come back into the new history.
    rig.event("response.done", response={"id": response_id, "status": "cancelled"})
    rig.event("conversation.item.retrieved", item={"id": f"item_{response_id}", "content": [{"transcript": "That"}]})
    assert rig.history.turns == {}
    for item_id in deleted:
        rig.event("conversation.item.deleted", item_id=item_id)
    rig.controller.submit_text("hello")
    assert rig.controller.state is AppState.THINKING and list(rig.history.turns.values())[0][:2] == ("user", "hello")
    rig.controller.new_conversation()
    assert rig.engine.of_type("conversation.item.delete")[3:] == []  # the typed item was never announced


def test_a_new_session_is_seeded_and_its_items_are_the_ones_forgotten(qtbot):
    rig = in_idle()
    rig.event("conversation.item.created", item={"id": "item_old_session"})
    rig.controller.engine_disconnected("engine restarted")
    rig.controller.engine_connected()
    rig.event("conversation.item.created", item={"id": "item_seeded"})
    rig.controller.new_conversation()
    assert [e["item_id"] for e in rig.engine.of_type("conversation.item.delete")] == ["item_seeded"]


def test_a_user_transcript_that_comes_after_the_reply_is_saved_before_it(qtbot):
    """The omni backend answers the user's audio without waiting for Whisper, so the transcript may come last."""
    rig = in_idle()
    for item_id in ("item_a", "item_u", "item_r"):
        rig.event("conversation.item.added", item={"id": item_id})
    rig.event("conversation.item.input_audio_transcription.completed", item_id="item_u", transcript="Will it rain?")
    # The history puts it after the item before it in the engine's conversation (test_history.py).
    assert rig.history.placed_after["item_u"] == "item_a"


# --- its own voice, heard through the speakers ---------------------------------------------------------

STORY = "The lighthouse keeper climbed the hundred steps every evening and lit the great lamp."
HEARD = "The lighthouse keeper climbed the hundred steps"


def _spoken_turns(rig: Rig) -> list[tuple]:
    heard: list[tuple] = []
    rig.controller.spoken_turn_heard.connect(lambda *args: heard.append(args))
    return heard


def _heard_until_cut(rig: Rig, response_id: str, text: str = HEARD) -> None:
    rig.event("conversation.item.retrieved", item={"id": f"item_{response_id}",
                                                   "content": [{"type": "output_audio", "transcript": text}]})


def test_a_turn_of_the_last_words_heard_is_dropped_and_its_answer_stopped(qtbot):
    rig = in_idle()
    rig.controller.set_hands_free(True)
    heard = _spoken_turns(rig)
    story = rig.reply_arrives(STORY)
    rig.controller.barge_in(story, 0.0)  # the echo fooled the local detector
    rig.event("input_audio_buffer.speech_started", audio_start_ms=0, item_id="item_echo")
    _heard_until_cut(rig, story)
    rig.event("conversation.item.input_audio_transcription.delta", item_id="item_echo", delta="climbed the")
    rig.event("input_audio_buffer.speech_stopped", audio_end_ms=900, item_id="item_echo")
    rig.event("conversation.item.input_audio_transcription.completed", item_id="item_echo",
              transcript="I climbed the hundred steps")
    assert {"type": "conversation.item.delete", "item_id": "item_echo"} in rig.engine.sent
    assert heard == [("item_echo", True)] and "own voice" in rig.messages[-1][0]
    assert "item_echo" not in rig.history.turns
    rig.event("conversation.item.input_audio_transcription.delta", item_id="item_echo", delta=" every")
    answer = rig.reply_arrives("Yes, the hundred steps.")  # the answer the engine started: cut when announced
    assert answer in rig.speaker.cancelled and rig.state is AppState.LISTENING
    assert {"type": "response.cancel", "response_id": answer} in rig.engine.sent


def test_an_answer_already_playing_is_stopped_and_a_reply_played_out_counts_too(qtbot):
    rig = in_idle()
    rig.controller.set_hands_free(True)
    story = rig.reply_arrives(STORY)
    rig.event("input_audio_buffer.speech_started", audio_start_ms=0, item_id="item_echo")  # the engine cut it
    rig.event("response.done", response={"id": story, "status": "cancelled"})
    _heard_until_cut(rig, story)
    answer = rig.reply_arrives("Every evening.")
    rig.event("conversation.item.input_audio_transcription.completed", item_id="item_echo",
              transcript="the hundred steps")
    assert answer in rig.speaker.cancelled and rig.state is AppState.LISTENING
    # A reply heard to its end: its last words, straight after, are its echo as well.
    last = rig.reply_arrives(STORY)
    rig.event("response.done", response={"id": last, "status": "completed"})
    rig.controller.playback_drained(last)
    rig.event("input_audio_buffer.speech_started", audio_start_ms=0, item_id="item_tail")
    rig.event("conversation.item.input_audio_transcription.completed", item_id="item_tail",
              transcript="and lit the great lamp")
    assert "item_tail" not in rig.history.turns


def test_the_persons_words_over_a_reply_are_a_turn_and_so_are_its_words_said_later(qtbot, monkeypatch):
    import app.controller as controller_module

    rig = in_idle()
    rig.controller.set_hands_free(True)
    heard = _spoken_turns(rig)
    story = rig.reply_arrives(STORY)
    rig.controller.barge_in(story, 0.0)
    rig.event("input_audio_buffer.speech_started", audio_start_ms=0, item_id="item_person")
    _heard_until_cut(rig, story)
    rig.event("conversation.item.input_audio_transcription.completed", item_id="item_person",
              transcript="wait, how many steps were there")
    assert heard == [("item_person", False)] and rig.history.turns["item_person"][1] == "wait, how many steps were there"
    # The last words heard, but said long after the reply went quiet: the person quoting it.
    later = time.monotonic() + controller_module.OWN_VOICE_WINDOW_S + 1
    monkeypatch.setattr(controller_module, "time", types.SimpleNamespace(monotonic=lambda: later))
    rig.event("input_audio_buffer.speech_started", audio_start_ms=0, item_id="item_quote")
    rig.event("conversation.item.input_audio_transcription.completed", item_id="item_quote",
              transcript="climbed the hundred steps")
    assert heard[-1] == ("item_quote", False) and "item_quote" in rig.history.turns


def test_push_to_talk_never_takes_a_turn_for_its_own_voice(qtbot):
    rig = in_speaking()
    heard = _spoken_turns(rig)
    response_id = rig.controller._facts.playing
    rig.controller.talk_pressed()
    _heard_until_cut(rig, response_id, "Hello there.")
    rig.event("input_audio_buffer.speech_started", audio_start_ms=0, item_id="item_u")
    rig.event("conversation.item.input_audio_transcription.completed", item_id="item_u", transcript="Hello there.")
    assert heard == [("item_u", False)] and "item_u" in rig.history.turns
