"""The whole app as a person uses it: a real X display with a tray host, real PulseAudio devices, the
real engine process with the real models. Speech goes into the virtual microphone; the reply is
recorded from the virtual speaker and transcribed.
"""

from __future__ import annotations

import json
import os
import re
import signal
import threading
import time

import numpy as np
import pytest
from PySide6.QtWidgets import QLabel

from app.audio.self_interruptions import CONFIRM_S, IN_A_ROW
from app.confide_app import ConfideApp
from app.history import ConversationHistory
from app.settings import Settings
from app.state import AppState
from tests.harness.pulse import pulse_audio, sound_ms  # noqa: F401 (a fixture)
from tests.harness.xdo import click, key
from tests.speakers import say

pytestmark = pytest.mark.slow

NUMBER_WORDS = {"2": "two", "4": "four", "9": "nine", "45": "forty-five"}


def words(text: str) -> set[str]:
    return {NUMBER_WORDS.get(t, t) for t in re.findall(r"[a-z0-9']+", text.lower())}


def pump(qtbot, condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        qtbot.wait(20)


@pytest.fixture(scope="module")
def asr():
    from engine.models.store import ModelStore
    from engine.speech.asr import WhisperAsr

    return WhisperAsr(ModelStore().resolve("whisper-tiny.en").directory)


def transcribe(asr, audio48k: np.ndarray) -> str:
    import soxr

    return asr.transcribe(soxr.resample(audio48k, 48_000, 16_000).astype(np.float32), check_speech=False)


@pytest.fixture
def confide(x_display, pulse_audio, qtbot, tmp_path, monkeypatch):
    for name in ("XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_STATE_HOME"):
        monkeypatch.setenv(name, str(tmp_path / name.lower()))
    history = ConversationHistory()
    app = ConfideApp(Settings(), history, engine_args=["--seed", "5"])
    app.start()
    pump(qtbot, lambda: app.controller.state is AppState.IDLE, 120, "the engine to be ready")
    yield app
    app.shutdown()


def wait_reply_done(qtbot, app, timeout=120):
    pump(qtbot, lambda: app.controller.state in (AppState.SPEAKING, AppState.THINKING), timeout, "a reply to start")
    pump(qtbot, lambda: app.controller.state not in (AppState.SPEAKING, AppState.THINKING), timeout, "the reply to end")


def test_tray_menu_opens_the_window_and_a_hotkey_from_another_process_toggles_it(confide, qtbot, x_display):
    tray, window = confide.tray, confide.window
    pump(qtbot, lambda: tray.geometry().width() > 0, 10, "the tray icon to dock")
    window.hide()
    geometry = tray.geometry()
    click(x_display, geometry.center().x(), geometry.center().y(), button=3)
    pump(qtbot, lambda: tray.menu.isVisible(), 5, "the tray menu")
    action = next(a for a in tray.menu.actions() if a.text().replace("&", "").startswith("Open"))
    target = tray.menu.actionGeometry(action).center() + tray.menu.pos()
    click(x_display, target.x(), target.y())
    pump(qtbot, window.isVisible, 5, "the window")
    window.hide()
    pump(qtbot, lambda: confide.hotkeys.running, 5, "the hotkeys")
    started = time.monotonic()
    key(x_display, "ctrl+alt+space")
    pump(qtbot, window.isVisible, 5, "the hotkey to show the window")
    print(f"\nhotkey (incl. spawning xdotool) -> window: {(time.monotonic() - started) * 1000:.0f} ms")


def test_spoken_question_gets_a_spoken_relevant_answer(confide, qtbot, pulse_audio, asr):
    confide.controller.set_hands_free(True)
    pump(qtbot, lambda: confide.controller.state is AppState.LISTENING, 10, "listening")
    with pulse_audio.record_speaker() as recording:
        pulse_audio.feed_mic(np.concatenate([np.zeros(4800, np.float32), say("What is two plus two?", "flite:slt")]),
                             24_000)
        wait_reply_done(qtbot, confide)
        qtbot.wait(300)
    heard = recording.audio()
    assert sound_ms(heard, 48_000) > 500, "nothing came out of the speaker"
    reply = transcribe(asr, heard)
    assert "four" in words(reply), reply
    turns = confide.history.turns
    assert turns[-2].role == "user" and {"two", "plus"} <= words(turns[-2].text)
    assert turns[-1].role == "assistant" and not turns[-1].interrupted


def test_push_to_talk_turn_from_audio_standby(confide, qtbot, pulse_audio, asr):
    assert not confide.controller.hands_free
    # Idle in push-to-talk: the audio streams close after a while (idle CPU), and the talk key reopens them.
    pump(qtbot, lambda: confide.standby.resting, 15, "audio standby")
    assert not confide.microphone.running and not confide.speaker.running
    confide.controller.talk_pressed()
    assert confide.microphone.running and confide.speaker.running
    feed = pulse_audio.feed_mic(say("What is the capital of France?", "piper:joe"), 24_000)
    feed.wait(10)
    qtbot.wait(200)
    with pulse_audio.record_speaker() as recording:
        confide.controller.talk_released()
        wait_reply_done(qtbot, confide)
        qtbot.wait(300)
    assert "paris" in words(transcribe(asr, recording.audio()))


def test_barge_in_silences_the_reply_and_keeps_only_what_was_heard(confide, qtbot, pulse_audio):
    confide.controller.set_hands_free(True)
    pump(qtbot, lambda: confide.controller.state is AppState.LISTENING, 10, "listening")
    with pulse_audio.record_speaker() as recording:
        confide.controller.submit_text("Tell me a long story about a lighthouse keeper, in many sentences.")
        pump(qtbot, lambda: confide.controller.state is AppState.SPEAKING, 60, "the reply to play")
        qtbot.wait(1500)
        onset = time.monotonic()
        pulse_audio.feed_mic(say("Wait, stop, that is enough.", "flite:awb"), 24_000)
        pump(qtbot, lambda: confide.controller.state is not AppState.SPEAKING, 10, "the barge-in")
        qtbot.wait(500)
    audio = recording.audio()
    silent_from = recording.index_at(onset + 0.4)  # well after the onset: nothing of the reply may play
    assert sound_ms(audio[silent_from:], 48_000) < 50, "the reply kept playing after the barge-in"
    pump(qtbot, lambda: confide.history.turns and confide.history.turns[-1].interrupted
         or any(t.interrupted for t in confide.history.turns), 20, "the interrupted reply to be recorded")
    cut = next(t for t in reversed(confide.history.turns) if t.interrupted)
    assert cut.role == "assistant" and cut.text and len(cut.text) < 400
    qtbot.wait(int(CONFIRM_S * 1000) + 200)
    assert confide.self_interruptions.in_a_row == 0  # the engine heard the person: not the echo's doing


def fool_the_detector(app, otherwise) -> threading.Event:
    """The barge-in detector says "speech" once each time the returned event is set, as if the echo had
    fooled it; otherwise `otherwise(chunk)` decides (on the capture worker, as MicRouter calls it)."""
    fooled = threading.Event()

    def feed(chunk):
        if fooled.is_set():
            fooled.clear()
            return True
        return otherwise(chunk)

    app.barge_in_detector.feed = feed
    return fooled


def test_barge_ins_after_which_the_engine_hears_nobody_turn_the_app_half_duplex(confide, qtbot):
    """The detector's verdict is forced, as if the echo had fooled it; the rest is real: the reply stops,
    the engine listens to the silence after it and hears nobody, twice, and the app falls back and says so."""
    confide.controller.set_hands_free(True)
    pump(qtbot, lambda: confide.controller.state is AppState.LISTENING, 10, "listening")
    fooled = fool_the_detector(confide, confide.barge_in_detector.feed)
    confide.self_interruptions.own_voice_heard()  # one counted in hands-free...
    confide.controller.set_hands_free(False)  # ...ends with it
    confide.controller.set_hands_free(True)
    assert confide.self_interruptions.in_a_row == 0
    pump(qtbot, lambda: confide.controller.state is AppState.LISTENING, 10, "listening")
    for attempt in range(1, IN_A_ROW + 1):
        confide.controller.submit_text("Tell me a long story about a lighthouse keeper, in many sentences.")
        pump(qtbot, lambda: confide.controller.state is AppState.SPEAKING, 60, "the reply to play")
        assert not confide.barge_in_detector.half_duplex
        fooled.set()
        pump(qtbot, lambda: confide.controller.state is not AppState.SPEAKING, 10, "the barge-in")
        if attempt < IN_A_ROW:
            pump(qtbot, lambda: confide.self_interruptions.in_a_row == attempt, CONFIRM_S + 5, "the count")
    pump(qtbot, lambda: confide.barge_in_detector.half_duplex, CONFIRM_S + 5, "half-duplex")
    assert "half-duplex" in confide.window.hands_free_box.text()
    assert "echo is getting through" in confide.window.message_label.text()


def test_its_own_voice_heard_through_the_speakers_is_never_answered(confide, qtbot, pulse_audio):
    """Open speakers with echo cancellation off, and the detector's verdict forced as the echo would force
    it: the reply stops, the engine hears the held-back second of it through the real echo path and
    transcribes the reply's own words. The app drops that turn (in the engine, the history and the window)
    and stops the answer the engine began; a second time in a row, it falls back to half-duplex."""
    from tests.harness.echo_path import acoustic_echo

    question = "Tell me a long story about a lighthouse keeper, in many sentences."
    confide.controller.set_hands_free(True)
    pump(qtbot, lambda: confide.controller.state is AppState.LISTENING, 10, "listening")
    confide.echo_canceller.configure(enabled=False, noise_suppression=False)
    fooled = fool_the_detector(confide, lambda _chunk: False)  # the raw echo would fool it at once
    dropped: list[str] = []
    confide.controller.spoken_turn_heard.connect(lambda item_id, own: own and dropped.append(item_id))
    with acoustic_echo(pulse_audio, latency_ms=60, gain_db=-6.0):
        for attempt in range(1, IN_A_ROW + 1):
            confide.controller.submit_text(question)
            pump(qtbot, lambda: confide.controller.state is AppState.SPEAKING, 60, "the reply to play")
            qtbot.wait(1500)  # the held-back second is all reply
            fooled.set()
            pump(qtbot, lambda: confide.controller.state is not AppState.SPEAKING, 10, "the barge-in")
            pump(qtbot, lambda: len(dropped) == attempt, 30, "the engine to hear the reply's own words")
            if attempt < IN_A_ROW:
                assert "own voice" in confide.window.message_label.text()
                assert confide.self_interruptions.in_a_row == attempt
            qtbot.wait(1500)
            assert confide.controller.state is AppState.LISTENING  # nothing answers its own voice
    assert confide.barge_in_detector.half_duplex
    assert "half-duplex" in confide.window.hands_free_box.text()
    user_turns = [t.text for t in confide.history.turns if t.role == "user"]
    assert user_turns == [question] * IN_A_ROW
    assert [e.text for e in confide.window.transcript_entries() if e.role == "user"] == [question] * IN_A_ROW
    answered = [t for t in confide.history.turns if t.role == "assistant" and t.text and not t.interrupted]
    assert not answered, answered


def test_screen_question_is_answered_from_the_screen(confide, qtbot):
    label = QLabel("Flight BA117 to Lisbon departs at 9:45 from gate 22.")
    label.setStyleSheet("font-size: 28px; background: white; color: black; padding: 40px;")
    label.move(100, 100)
    label.show()
    qtbot.waitExposed(label)
    qtbot.wait(200)
    from app.screen import capture_screen_at

    shot = capture_screen_at(150, 150)
    confide.controller.ask_about_screen(shot.png, "What gate does my flight leave from?")
    wait_reply_done(qtbot, confide)
    answer = confide.history.turns[-1].text
    assert "22" in answer or "twenty-two" in answer.lower(), answer
    label.close()


def test_killing_the_engine_mid_reply_recovers_with_the_history(confide, qtbot):
    confide.controller.submit_text("My favourite colour is green. Tell me a long story about it.")
    pump(qtbot, lambda: confide.controller.state is AppState.SPEAKING, 60, "the reply to play")
    pid = confide._supervisor.pid
    os.kill(pid, signal.SIGKILL)
    pump(qtbot, lambda: confide.controller.state is AppState.CONNECTING, 10, "the app to notice")
    pump(qtbot, lambda: confide.controller.state is AppState.IDLE and confide._supervisor.pid not in (None, pid),
         120, "the engine to come back")
    assert any("green" in t.text for t in confide.history.turns if t.role == "user")
    confide.controller.submit_text("What is my favourite colour?")
    wait_reply_done(qtbot, confide)
    assert "green" in confide.history.turns[-1].text.lower(), confide.history.turns[-1].text


def test_a_new_conversation_is_forgotten_by_the_engine_and_on_disk(confide, qtbot):
    confide.controller.submit_text("My dog's name is Biscuit.")
    wait_reply_done(qtbot, confide)
    confide.controller.submit_text("What is my dog's name?")
    wait_reply_done(qtbot, confide)
    assert "biscuit" in confide.history.turns[-1].text.lower(), confide.history.turns[-1].text  # it was known
    confide.controller.new_conversation()
    assert confide.history.turns == [] and confide.window.transcript_entries() == []
    pump(qtbot, lambda: _saved_turns() == [], 5, "the emptied history on disk")
    confide.controller.submit_text("What is my dog's name?")
    wait_reply_done(qtbot, confide)
    answer = confide.history.turns[-1].text
    assert [t.role for t in confide.history.turns] == ["user", "assistant"]
    assert "biscuit" not in answer.lower(), answer  # the engine's conversation was emptied too


def _saved_turns() -> list:
    """The turns in the history file, read without ConversationHistory.load: that clears away temporary
    files, which would race the app's own atomic write of the file while this polls it."""
    try:
        return json.loads(ConversationHistory().path.read_bytes())["turns"]
    except (FileNotFoundError, ValueError):  # not written yet, or caught mid-replace on some systems
        return [None]


def test_starting_with_no_microphone_says_so_and_typing_still_works(x_display, pulse_audio, qtbot, tmp_path,
                                                                     monkeypatch):
    for name in ("XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_STATE_HOME"):
        monkeypatch.setenv(name, str(tmp_path / name.lower()))
    pulse_audio.unplug_everything()
    app = ConfideApp(Settings(), ConversationHistory(), engine_args=["--llm", "smollm2-135m-instruct"])
    messages = []
    app.controller.message.connect(lambda text, error: messages.append(text))
    try:
        app.start()
        assert any("microphone" in m.lower() for m in messages), messages
        pump(qtbot, lambda: app.controller.state is AppState.IDLE, 120, "the engine to be ready")
        app.controller.submit_text("Hello!")
        pump(qtbot, lambda: len(app.history.turns) >= 2, 60, "a typed answer")
    finally:
        app.shutdown()
        pulse_audio.restore()


def test_microphone_unplugged_then_plugged_back(confide, qtbot, pulse_audio):
    messages = []
    confide.controller.message.connect(lambda text, error: messages.append(text))
    assert confide.microphone.running
    pulse_audio.unplug_everything()
    pump(qtbot, lambda: any("microphone" in m.lower() for m in messages), 15, "a message about the microphone")
    assert confide.controller.state is not AppState.ERROR  # typing still works; nothing crashed
    pulse_audio.restore()
    pump(qtbot, lambda: confide.microphone.running and confide.speaker.running, 20, "the devices to come back")
