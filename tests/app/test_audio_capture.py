"""The microphone on a real PulseAudio virtual mic: content, length, timing, the meter, failures."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from app.audio import devices
from app.audio.capture import Microphone
from tests.harness.pulse import (  # noqa: F401  (pulse_audio is a pytest fixture)
    MIC,
    PulseHarness,
    find_signal,
    matching_windows,
    pulse_audio,
    report,
    to_rate,
    wait_for,
)
from tests.speakers import say

RATE = 24_000


class Captured:
    """Everything a Microphone delivered: chunks, their capture times and when they arrived."""

    def __init__(self):
        self.chunks: list[np.ndarray] = []
        self.capture_times: list[float] = []
        self.arrivals: list[float] = []
        self.errors: list[str] = []
        self.error_seen = threading.Event()
        self._lock = threading.Lock()

    def on_audio(self, chunk: np.ndarray, capture_time: float) -> None:
        with self._lock:
            self.chunks.append(chunk.copy())
            self.capture_times.append(capture_time)
            self.arrivals.append(time.monotonic())

    def on_error(self, message: str) -> None:
        self.errors.append(message)
        self.error_seen.set()

    def count(self) -> int:
        with self._lock:
            return len(self.chunks)

    def audio(self) -> np.ndarray:
        with self._lock:
            return np.concatenate(self.chunks) if self.chunks else np.zeros(0, np.float32)

    def chunk_of(self, sample: int) -> int:
        """Index of the chunk holding delivered sample `sample`."""
        with self._lock:
            ends = np.cumsum([len(c) for c in self.chunks])
        return int(np.searchsorted(ends, sample, side="right"))


@pytest.fixture
def captured():
    return Captured()


def onset(audio: np.ndarray, threshold: float = 0.02) -> int:
    return int(np.flatnonzero(np.abs(audio) > threshold)[0])


def test_speech_arrives_at_24k_intact_and_on_time(pulse_audio: PulseHarness, captured: Captured):
    speech = say("The quick brown fox jumps over the lazy dog.", "flite:slt", RATE)
    mic = Microphone(on_audio=captured.on_audio, on_error=captured.on_error)
    assert mic.start(), captured.errors
    try:
        wait_for(lambda: captured.count() > 20, 5.0, what="microphone audio")
        with pulse_audio.record_mic_feed() as fed:
            time.sleep(0.2)
            pulse_audio.feed_mic(speech, RATE).wait(15.0)
            time.sleep(0.3)
        assert mic.rate == 48_000  # the virtual mic runs at 48 kHz and takes it
    finally:
        mic.stop()
    assert not captured.errors

    # 24 kHz for real: samples delivered match the time they span.
    audio = captured.audio()
    span = captured.capture_times[-1] + len(captured.chunks[-1]) / RATE - captured.capture_times[0]
    assert abs(len(audio) / RATE - span) < 0.02 * span, (len(audio) / RATE, span)

    # The same speech, none of it dropped or doubled: both halves sit where the whole does. Compared
    # at 48 kHz: the speech may sit half a 24 kHz sample off the decimation grid.
    heard_48k, speech_48k = to_rate(audio, RATE), to_rate(speech, RATE)
    whole, correlation = find_signal(heard_48k, speech_48k)
    half = len(speech_48k) // 2
    first, first_corr = find_signal(heard_48k, speech_48k[:half])
    second, second_corr = find_signal(heard_48k, speech_48k[half:])
    report("capture: correlation with the source", f"{correlation:.5f}")
    assert correlation > 0.995 and first_corr > 0.995 and second_corr > 0.995
    assert first == whole and second == whole + half
    offset = whole // 2
    assert abs(onset(audio[offset:]) - onset(speech)) <= 1

    # Timing: when the speech reached the mic vs when on_audio handed it over, and what it claimed.
    fed_audio = fed.audio()
    fed_onset_time = fed.time_of(onset(fed_audio))
    captured_onset = offset + onset(speech)
    chunk = captured.chunk_of(captured_onset)
    chunk_start = sum(len(c) for c in captured.chunks[:chunk])
    delivered_latency = 1000 * (captured.arrivals[chunk] - fed_onset_time)
    stamp_error = 1000 * (captured.capture_times[chunk] + (captured_onset - chunk_start) / RATE - fed_onset_time)
    report("capture: speech onset at the mic -> on_audio", delivered_latency, "ms")
    report("capture: capture_time error", stamp_error, "ms")
    assert 0 < delivered_latency < 250
    assert abs(stamp_error) < 30


def test_level_meter_rises_with_speech_and_falls_in_silence(pulse_audio: PulseHarness, captured: Captured):
    speech = say("Can you hear me now? This is a level check.", "espeak:en-us", RATE)
    mic = Microphone(on_audio=captured.on_audio, on_error=captured.on_error)
    assert mic.start()
    try:
        wait_for(lambda: captured.count() > 20, 5.0, what="microphone audio")
        quiet_before = mic.level
        feed = pulse_audio.feed_mic(speech, RATE)
        levels = []
        while feed._process.poll() is None:
            levels.append(mic.level)
            time.sleep(0.01)
        time.sleep(1.0)
        quiet_after = mic.level
    finally:
        mic.stop()
    report("capture: meter in silence / peak in speech", f"{quiet_before:.2f} / {max(levels):.2f}")
    assert quiet_before < 0.05 and quiet_after < 0.05
    assert max(levels) > 0.5
    assert mic.level == 0.0  # stopped: nothing to show


def test_switches_device_while_running(pulse_audio: PulseHarness, captured: Captured):
    pulse_audio.add_source("usb_mic")
    mic = Microphone(on_audio=captured.on_audio, on_error=captured.on_error)
    assert mic.start()
    try:
        assert mic.switch_device("usb_mic") and mic.device_name == "usb_mic"
        before = captured.count()
        # The default mic hears speech; usb_mic (a silent source) must deliver silence, on time.
        pulse_audio.feed_mic(say("Only the other microphone hears this.", "flite:awb", RATE), RATE).wait(10)
        assert captured.count() - before > 50
        assert np.abs(np.concatenate(captured.chunks[before:])).max() == 0.0
        assert mic.switch_device(None) and mic.device_name != "usb_mic"
        before = captured.count()
        pulse_audio.feed_mic(say("And now this one does.", "flite:awb", RATE), RATE).wait(10)
        time.sleep(0.2)
        assert np.abs(np.concatenate(captured.chunks[before:])).max() > 0.1
    finally:
        mic.stop()
        pulse_audio.unplug("usb_mic")
    assert not captured.errors


def test_a_device_that_goes_quiet_is_reported_once_and_can_restart(pulse_audio: PulseHarness, captured: Captured):
    mic = Microphone(on_audio=captured.on_audio, on_error=captured.on_error, stall_timeout_s=0.5)
    assert mic.start()
    try:
        wait_for(lambda: captured.count() > 20, 5.0, what="microphone audio")
        pulse_audio.pactl("suspend-source", MIC, "1")  # the device stops delivering, the stream stays
        began = time.monotonic()
        assert captured.error_seen.wait(5.0)
        report("capture: stall reported after", 1000 * (time.monotonic() - began), "ms")
        assert captured.errors == ["The microphone stopped sending audio."]
        assert not mic.running
        pulse_audio.pactl("suspend-source", MIC, "0")
        before = captured.count()
        assert mic.start()
        wait_for(lambda: captured.count() > before + 20, 5.0, what="audio after a restart")
        assert len(captured.errors) == 1
    finally:
        pulse_audio.pactl("suspend-source", MIC, "0")
        mic.stop()


def test_unplugged_while_streaming_is_a_message_then_works_after_replug(pulse_audio: PulseHarness,
                                                                         captured: Captured):
    mic = Microphone(on_audio=captured.on_audio, on_error=captured.on_error)
    assert mic.start()
    try:
        wait_for(lambda: captured.count() > 20, 5.0, what="microphone audio")
        began = time.monotonic()
        pulse_audio.unplug_everything()  # nowhere for PulseAudio to move the stream: it dies
        assert captured.error_seen.wait(5.0), "unplugging went unnoticed"
        report("capture: unplug reported after", 1000 * (time.monotonic() - began), "ms")
        assert len(captured.errors) == 1 and "\n" not in captured.errors[0]
        assert captured.errors[0] in ("The microphone was disconnected or stopped working.",
                                      "The microphone stopped sending audio.")
        assert not mic.running
        pulse_audio.restore()
        assert mic.start(), captured.errors
        speech = say("Back again.", "flite:rms", RATE)
        before = len(captured.audio())
        pulse_audio.feed_mic(speech, RATE).wait(10)
        time.sleep(0.3)
        assert find_signal(captured.audio()[before:], speech)[1] > 0.99
        assert len(captured.errors) == 1
    finally:
        pulse_audio.restore()
        mic.stop()


def test_a_named_device_that_is_not_there_is_a_message(pulse_audio: PulseHarness, captured: Captured):
    mic = Microphone(device="Blue Yeti", on_audio=captured.on_audio, on_error=captured.on_error)
    assert not mic.start()
    assert not mic.running
    assert captured.errors == [captured.errors[0]] and captured.errors[0].startswith(
        "The microphone 'Blue Yeti' is not connected (available: ")
    assert f"'{MIC}'" in captured.errors[0]
    mic.stop()  # harmless when it never started


def test_audio_is_24k_whatever_the_device_rate(pulse_audio: PulseHarness, captured: Captured, monkeypatch):
    """A device at 44.1 kHz goes through soxr instead of the 48 kHz half-band filter."""
    monkeypatch.setattr(devices, "preferred_rate", lambda device, direction, channels: 44_100)
    mic = Microphone(on_audio=captured.on_audio, on_error=captured.on_error)
    assert mic.start() and mic.rate == 44_100
    speech = say("Forty four point one.", "espeak:en+f3", RATE)
    try:
        wait_for(lambda: captured.count() > 10, 5.0, what="microphone audio")
        pulse_audio.feed_mic(speech, RATE).wait(10)
        time.sleep(0.3)
    finally:
        mic.stop()
    audio = captured.audio()
    span = captured.capture_times[-1] + len(captured.chunks[-1]) / RATE - captured.capture_times[0]
    assert abs(len(audio) / RATE - span) < 0.02 * span
    # PulseAudio makes the 44.1 kHz stream with its own fast resampler: a looser match than at 48 kHz.
    assert matching_windows(to_rate(audio, RATE), to_rate(speech, RATE), threshold=0.95) >= 0.9
