"""Faults a person meets in a long day, under the whole app (tone engine, PulseAudio harness): the
microphone unplugged and plugged back, the speaker gone in the middle of a reply, the disk full while the
history is saved. Each time the app says what happened, keeps working, and recovers by itself.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time

import numpy as np
import pytest

from app.state import AppState
from tests.harness.pulse import pulse_audio, report  # noqa: F401 (a fixture)
from tests.harness.tone_app import Seen, pump, tone_app
from tests.harness.tone_engine import TONES, tones_per_frame

# Replies of 10 phrases of 200 ms: 2 s to be cut into.
ENGINE_ARGS = ["--phrases", "10", "--phrase-ms", "200", "--step-ms", "20"]
RECOVERY_TIMEOUT_S = 15  # the device watcher and the retry timer look every 2 s
TONE_PRESENT = 0.05


def answer(qtbot, app, question: str) -> None:
    app.controller.submit_text(question)
    pump(qtbot, lambda: app.controller.state is AppState.SPEAKING, 10, f"the reply to {question!r}")
    pump(qtbot, lambda: app.controller.state is AppState.LISTENING, 10, f"the end of the reply to {question!r}")


def tone_ms(audio: np.ndarray, question: int) -> float:
    """How long the reply to `question` was heard in a recording (10 ms frames holding its tone)."""
    return 10.0 * float(np.count_nonzero(tones_per_frame(audio)[:, question % TONES] > TONE_PRESENT))


# --- the microphone -------------------------------------------------------------------------------


def test_microphone_unplugged_and_plugged_back(pulse_audio, qtbot, tmp_path, monkeypatch):
    def chosen_microphone(settings):
        settings.audio.input_device = "mic"

    with tone_app(qtbot, tmp_path, monkeypatch, ENGINE_ARGS, configure=chosen_microphone) as app:
        seen = Seen(app)
        assert app.microphone.running and app.microphone.device_name == "mic"
        unplugged = time.monotonic()
        pulse_audio.unplug("mic")
        told_s = pump(qtbot, lambda: seen.said("microphone", "not connected", since=unplugged), RECOVERY_TIMEOUT_S,
                      "a message that the microphone is gone")
        assert not app.microphone.running
        assert "type your questions" in seen.said("microphone", since=unplugged)[0]
        answer(qtbot, app, "question 1")  # typing and listening to replies go on
        assert app.controller.state is AppState.LISTENING

        plugged = time.monotonic()
        pulse_audio.plug("mic")
        back_s = pump(qtbot, lambda: app.microphone.running and seen.said("microphone ready", since=plugged),
                      RECOVERY_TIMEOUT_S, "the microphone to come back")
        # It really captures again: a tone played into the microphone shows on its meter.
        feed = pulse_audio.feed_mic(0.3 * np.sin(2 * np.pi * 440 * np.arange(24_000) / 24_000), 24_000)
        try:
            pump(qtbot, lambda: app.microphone.level > 0.5, 5, "the microphone to hear the tone")
        finally:
            feed.stop()
        assert app.microphone.device_name == "mic"
    report("fault: microphone unplugged -> message", f"{told_s:.2f}", "s")
    report("fault: microphone plugged back -> capturing", f"{back_s:.2f}", "s")


# --- the speaker ----------------------------------------------------------------------------------


def test_chosen_speaker_unplugged_mid_reply(pulse_audio, qtbot, tmp_path, monkeypatch):
    """The speaker the person chose disappears mid-reply: the app says so, is not left "speaking" with
    nothing to speak on, shows replies as text meanwhile, and plays on it again once it is back."""
    pulse_audio.add_sink("headset")

    def chosen_speaker(settings):
        settings.audio.output_device = "headset"

    with tone_app(qtbot, tmp_path, monkeypatch, ENGINE_ARGS, configure=chosen_speaker) as app:
        seen = Seen(app)
        assert app.speaker.device_name == "headset"
        app.controller.submit_text("question 1")
        pump(qtbot, lambda: app.controller.state is AppState.SPEAKING, 10, "the reply to play")
        qtbot.wait(300)
        unplugged = time.monotonic()
        pulse_audio.unplug("headset")
        told_s = pump(qtbot, lambda: seen.said("speaker", since=unplugged), RECOVERY_TIMEOUT_S,
                      "a message that the speaker is gone")
        pump(qtbot, lambda: app.controller.state is AppState.LISTENING, 5, "the cut reply to end")
        app.controller.submit_text("question 2")  # answered as text while there is no speaker
        pump(qtbot, lambda: any(t.text.startswith("Answer to question 2") for t in app.history.turns), 10,
             "a reply as text")
        pump(qtbot, lambda: app.controller.state is AppState.LISTENING, 5, "listening again")

        plugged = time.monotonic()
        pulse_audio.plug("headset")
        back_s = pump(qtbot, lambda: app.speaker.running, RECOVERY_TIMEOUT_S, "the speaker to come back")
        with pulse_audio.record("headset.monitor") as heard:
            answer(qtbot, app, "question 3")
            qtbot.wait(100)
        # The new reply plays on the headset; nothing of the two before it does.
        assert tone_ms(heard.audio(), 3) > 1500
        assert tone_ms(heard.audio(), 1) == tone_ms(heard.audio(), 2) == 0
    report("fault: chosen speaker unplugged mid-reply -> message", f"{told_s:.2f}", "s")
    report("fault: chosen speaker plugged back -> playing", f"{back_s:.2f}", "s")


def test_every_speaker_gone_mid_reply(pulse_audio, qtbot, tmp_path, monkeypatch):
    """No output device left at all: the stream dies under the app."""
    with tone_app(qtbot, tmp_path, monkeypatch, ENGINE_ARGS) as app:
        seen = Seen(app)
        app.controller.submit_text("question 1")
        pump(qtbot, lambda: app.controller.state is AppState.SPEAKING, 10, "the reply to play")
        qtbot.wait(300)
        unplugged = time.monotonic()
        pulse_audio.unplug_everything()
        try:
            told_s = pump(qtbot, lambda: seen.said("speaker", since=unplugged), RECOVERY_TIMEOUT_S,
                          "a message that the speaker is gone")
            assert "show as text" in seen.said("speaker", since=unplugged)[0]
            pump(qtbot, lambda: app.controller.state is AppState.LISTENING, 5, "the cut reply to end")
            app.controller.submit_text("question 2")
            pump(qtbot, lambda: any(t.text.startswith("Answer to question 2") for t in app.history.turns), 10,
                 "a reply as text")
            pump(qtbot, lambda: app.controller.state is AppState.LISTENING, 5, "listening again")
        finally:
            restored = time.monotonic()
            pulse_audio.restore()
        back_s = pump(qtbot, lambda: app.speaker.running and app.microphone.running, RECOVERY_TIMEOUT_S,
                      "the devices to come back")
        with pulse_audio.record_speaker() as heard:
            answer(qtbot, app, "question 3")
            qtbot.wait(100)
        assert tone_ms(heard.audio(), 3) > 1500
        assert tone_ms(heard.audio(), 1) == tone_ms(heard.audio(), 2) == 0
    report("fault: every speaker gone mid-reply -> message", f"{told_s:.2f}", "s")
    report("fault: devices back -> playing", f"{time.monotonic() - restored:.2f}", "s")
