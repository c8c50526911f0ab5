"""Faults a person meets in a long day, under the whole app (tone engine, PulseAudio harness): the
microphone unplugged and plugged back, the speaker gone in the middle of a reply, the disk full while the
history is saved. Each time the app says what happened, keeps working, and recovers by itself.
"""

from __future__ import annotations

import errno
import json
import subprocess
import time

import numpy as np
import pytest

from app.state import AppState
from tests.harness.pulse import IN_CI, pulse_audio, report  # noqa: F401 (a fixture)
from tests.harness.tone_app import Seen, answer, pump, tone_app
from tests.harness.tone_engine import tone_frames, tones_per_frame

# Replies of 10 phrases of 200 ms: 2 s to be cut into.
ENGINE_ARGS = ["--phrases", "10", "--phrase-ms", "200", "--step-ms", "20"]
RECOVERY_TIMEOUT_S = 15  # the device watcher and the retry timer look every 2 s


def tone_ms(audio: np.ndarray, question: int) -> float:
    """How long the reply to `question` was heard in a recording (10 ms frames holding its tone)."""
    return 10.0 * float(np.count_nonzero(tone_frames(tones_per_frame(audio), question)))


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


def _only_the_new_reply_plays(qtbot, app, recording) -> None:
    """Question 3 is answered on the speaker that came back, and nothing of the two replies before it plays."""
    with recording as heard:
        answer(qtbot, app, "question 3")
        qtbot.wait(100)
    assert tone_ms(heard.audio(), 3) > 1500
    assert tone_ms(heard.audio(), 1) == tone_ms(heard.audio(), 2) == 0


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
        _only_the_new_reply_plays(qtbot, app, pulse_audio.record("headset.monitor"))  # on the headset
    report("fault: chosen speaker unplugged mid-reply -> message", f"{told_s:.2f}", "s")
    report("fault: chosen speaker plugged back -> open again", f"{back_s:.2f}", "s")


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
            pulse_audio.restore()
        back_s = pump(qtbot, lambda: app.speaker.running and app.microphone.running, RECOVERY_TIMEOUT_S,
                      "the devices to come back")
        _only_the_new_reply_plays(qtbot, app, pulse_audio.record_speaker())
    report("fault: every speaker gone mid-reply -> message", f"{told_s:.2f}", "s")
    report("fault: devices back -> both open again", f"{back_s:.2f}", "s")


def test_default_speaker_unplugged_mid_reply_goes_on_on_the_next(pulse_audio, qtbot, tmp_path, monkeypatch):
    """The sound server moves the reply to the next speaker (a desktop's: a sound card ranks above the
    harness's microphone feed), and the app, which follows the system's default, goes on playing there."""
    pulse_audio.add_sink("headset")
    pulse_audio.unplug("headset")
    pulse_audio._devices["headset"].arguments += " sink_properties=device.class=sound"
    pulse_audio.plug("headset")
    with tone_app(qtbot, tmp_path, monkeypatch, ENGINE_ARGS) as app:
        with pulse_audio.record("headset.monitor") as on_headset, pulse_audio.record_speaker() as on_speaker:
            app.controller.submit_text("question 1")
            pump(qtbot, lambda: app.controller.state is AppState.SPEAKING, 10, "the reply to play")
            qtbot.wait(300)
            unplugged = time.monotonic()
            pulse_audio.unplug("spk")
            pump(qtbot, lambda: app.controller.state is AppState.LISTENING, 10, "the reply to end")
            moved_at = on_headset.time_of(np.flatnonzero(tone_frames(tones_per_frame(on_headset.audio()), 1))[0] * 480)
            answer(qtbot, app, "question 2")
            qtbot.wait(100)
        before, after = tone_ms(on_speaker.audio(), 1), tone_ms(on_headset.audio(), 1)
        # All of the 2 s reply was heard: its start on the speaker, the rest on the headset.
        assert before >= 250 and before + after >= 1900, (before, after)
        assert tone_ms(on_headset.audio(), 2) > 1900  # and the next reply plays there too
        assert app.controller.state is AppState.LISTENING
    report("fault: default speaker unplugged mid-reply -> playing on the next", f"{moved_at - unplugged:.2f}", "s")


# --- the disk -------------------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path):
    """A 64 KiB tmpfs (as root: CI runs as root), unmounted afterwards whatever happened."""
    folder = tmp_path / "small-disk"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k,mode=0700", "confide-small", str(folder)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        message = f"cannot mount a tmpfs (needs root): {mounted.stderr.strip()}"
        if IN_CI:
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    try:
        yield folder
    finally:
        subprocess.run(["umount", "--lazy", str(folder)], check=True)


def fill(folder) -> None:
    """Take every free byte of the filesystem."""
    with open(folder / "filler", "wb", buffering=0) as filler:
        try:
            while True:
                filler.write(b"\0" * 4096)
        except OSError as error:
            assert error.errno == errno.ENOSPC


def test_disk_full_while_saving_the_history(pulse_audio, qtbot, tmp_path, monkeypatch, small_disk):
    path = small_disk / "history.json"
    with tone_app(qtbot, tmp_path, monkeypatch, ["--phrases", "1", "--phrase-ms", "100"], history_path=path) as app:
        seen = Seen(app)
        for q in (1, 2):
            answer(qtbot, app, f"question {q}")
        pump(qtbot, lambda: len(json.loads(path.read_bytes())["turns"]) == 4, 5, "the history to be saved")
        good = path.read_bytes()

        fill(small_disk)
        full = time.monotonic()
        answer(qtbot, app, "question 3")
        pump(qtbot, lambda: seen.said("could not be saved", since=full), 5, "a message that saving failed")
        told_at, message = next((at, text) for at, text, _ in seen.messages if "could not be saved" in text)
        told_s = told_at - full
        assert "No space left on device" in message and "unchanged" in message and "[Errno" not in message
        assert path.read_bytes() == good  # the last good history, byte for byte
        assert sorted(p.name for p in small_disk.iterdir()) == ["filler", "history.json"]  # no temp file left
        assert app.controller.state is AppState.LISTENING  # the conversation goes on
        assert [t.text for t in app.history.turns if t.role == "user"][-1] == "question 3"

        (small_disk / "filler").unlink()  # space again: the next save holds everything, the unsaved turns too
        answer(qtbot, app, "question 4")
        pump(qtbot, lambda: len(json.loads(path.read_bytes())["turns"]) == 8, 5, "the history to be saved again")
        saved = json.loads(path.read_bytes())["turns"]
        assert [t["text"] for t in saved if t["role"] == "user"] == [f"question {q}" for q in (1, 2, 3, 4)]
    report("fault: disk full -> message", f"{told_s:.2f}", "s")
    print(f"\n{message}")
