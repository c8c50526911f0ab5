"""Barge-in on real devices: the person talks over a reply and the speaker goes silent.

The speech detector is measured first on its own (test voices, noises, vocal fragments), which is
where its `min_speech_ms` default comes from; then the whole path runs on the PulseAudio harness:
speech fed into the virtual mic -> Microphone -> VoiceActivity -> Speaker.cancel -> silence at the
virtual speaker, timed at both ends by recording the two PulseAudio monitors.
"""

from __future__ import annotations

import random
import threading
import time

import numpy as np

from app.audio.barge_in_detector import BargeInDetector
from app.audio.capture import Microphone
from app.audio.echo_canceller import EchoCanceller
from app.audio.echo_reference import PlayedAudio
from app.audio.playback import Speaker
from app.audio.voice_activity import DEFAULT_MIN_SPEECH_MS, FRAME_MS, VoiceActivity
from tests.harness.pulse import (  # noqa: F401  (pulse_audio is a pytest fixture)
    PulseHarness,
    pulse_audio,
    report,
)
from tests.speakers import VOICES, say

RATE = 24_000
CHUNK = RATE // 100  # the microphone delivers 10 ms chunks
INTERRUPTIONS = ("Wait, stop.", "No, that's not what I meant.", "Hold on a second.", "Hey!",
                 "Actually, tell me about the weather.", "Okay so here is the thing.")


def speech_onset(audio: np.ndarray) -> int:
    """Where speech starts: the first sample above the level the test voices are trimmed at."""
    return int(np.flatnonzero(np.abs(audio) > 0.01)[0])


def first_firing_ms(detector: VoiceActivity, audio: np.ndarray) -> list[float]:
    """Feed `audio` in 10 ms chunks; the end time (ms) of each chunk in which feed() fired."""
    detector.reset()
    fired = []
    for start in range(0, len(audio), CHUNK):
        if detector.feed(audio[start : start + CHUNK]):
            fired.append(1000 * min(start + CHUNK, len(audio)) / RATE)
    return fired


def with_silence(audio: np.ndarray, before_s: float = 1.0, after_s: float = 0.6) -> np.ndarray:
    return np.concatenate((np.zeros(int(before_s * RATE), np.float32), audio,
                           np.zeros(int(after_s * RATE), np.float32))).astype(np.float32)


def noises() -> dict[str, np.ndarray]:
    """Things that are not someone starting to talk (3 s each)."""
    rng = np.random.default_rng(7)
    n = 3 * RATE
    t = np.arange(n) / RATE

    def band_noise(length: int, low: float, high: float) -> np.ndarray:
        spectrum = np.fft.rfft(rng.standard_normal(length))
        freqs = np.fft.rfftfreq(length, 1 / RATE)
        spectrum[(freqs < low) | (freqs > high)] = 0
        shaped = np.fft.irfft(spectrum, length)
        return shaped / np.abs(shaped).max()

    clicks = np.zeros(n)
    clicks[:: int(0.25 * RATE)] = 0.9
    keyboard = np.zeros(n)
    for at in rng.integers(0, n - 300, 20):
        keyboard[at : at + 240] += rng.standard_normal(240) * np.exp(-np.arange(240) / 30) * 0.5
    breaths = np.zeros(n)
    knocks = np.zeros(n)
    for second in (0.2, 1.2, 2.2):
        at, length = int(second * RATE), int(0.4 * RATE)
        breaths[at : at + length] += band_noise(length, 300, 3000) * np.hanning(length) * 0.2
        length = int(0.05 * RATE)
        knocks[at : at + length] += band_noise(length, 100, 2000) * np.exp(-np.arange(length) / (0.01 * RATE)) * 0.8
    pink = np.fft.rfft(rng.standard_normal(n))
    pink[1:] /= np.sqrt(np.fft.rfftfreq(n, 1 / RATE)[1:])
    pink[0] = 0
    pink = np.fft.irfft(pink, n)
    beep = np.zeros(n)
    beep[RATE // 2 : RATE] = 0.3 * np.sin(2 * np.pi * 1000 * t[: RATE // 2])
    found = {
        "clicks": clicks,
        "keyboard": keyboard,
        "breaths": breaths,
        "knocks": knocks,
        "white noise -40 dBFS": rng.standard_normal(n) * 0.01,
        "white noise -16 dBFS": rng.standard_normal(n) * 0.15,
        "pink noise -20 dBFS": pink / np.sqrt(np.mean(pink**2)) * 0.1,
        "mains hum": 0.3 * np.sin(2 * np.pi * 50 * t) + 0.1 * np.sin(2 * np.pi * 150 * t),
        "beep": beep,
    }
    return {name: audio.astype(np.float32) for name, audio in found.items()}


def test_speech_detector_fires_once_soon_after_every_onset():
    """Measures the onset delay for several min_speech_ms; the default is the shortest that keeps
    the fragment test below clean (30 ms vocal fragments never fire, 40 ms ones rarely)."""
    delays: dict[int | str, list[float]] = {32: [], 64: [], 96: [], "sure": []}
    detectors = {ms: VoiceActivity(min_speech_ms=ms) for ms in delays if ms != "sure"}
    detectors["sure"] = sure_detector()
    for voice in VOICES:
        for text in INTERRUPTIONS:
            speech = say(text, voice, RATE)
            audio = with_silence(speech)
            onset_ms = 1000 * (RATE + speech_onset(speech)) / RATE
            for ms, detector in detectors.items():
                fired = first_firing_ms(detector, audio)
                assert fired, f"{voice} saying {text!r} never fired (min_speech_ms={ms})"
                delays[ms].append(fired[0] - onset_ms)
                if ms in (DEFAULT_MIN_SPEECH_MS, "sure"):
                    assert fired[0] > onset_ms  # never before the speech
    for ms, found in delays.items():
        setting = "64 ms or one sure frame (no echo)" if ms == "sure" else f"min_speech_ms={ms}"
        report(f"speech detector onset delay, {setting}: p50/p95/max",
               f"{np.percentile(found, 50):.0f} / {np.percentile(found, 95):.0f} / {max(found):.0f} ms"
               f" over {len(found)} utterances")
    assert np.percentile(delays[DEFAULT_MIN_SPEECH_MS], 95) < 150
    assert np.percentile(delays["sure"], 95) <= np.percentile(delays[DEFAULT_MIN_SPEECH_MS], 95)


def sure_detector() -> VoiceActivity:
    """As the barge-in detector sets it up where no echo is heard, at the default sensitivity."""
    detector = VoiceActivity()
    detector.sure_threshold = BargeInDetector(detector, EchoCanceller(PlayedAudio(), lambda *_: None),
                                              threshold=0.5).sure_threshold
    return detector


def test_speech_detector_ignores_noise_clicks_and_breaths():
    for detector in (VoiceActivity(), sure_detector()):
        for name, audio in noises().items():
            assert first_firing_ms(detector, audio) == [], f"{name} was taken for speech"
            assert detector.probability < 0.5


def test_speech_detector_ignores_vocal_fragments_shorter_than_a_syllable():
    rng = random.Random(3)
    plain, sure = VoiceActivity(), sure_detector()
    fired: dict[int, int] = {30: 0, 40: 0, 60: 0}
    fired_sure = dict.fromkeys(fired, 0)
    trials = 0
    for voice in VOICES:
        speech = say("Okay so here is the thing about the weather today.", voice, RATE)
        for _ in range(6):
            trials += 1
            start = rng.randrange(0, len(speech) - RATE // 5)
            for length_ms in fired:
                length = RATE * length_ms // 1000
                fragment = speech[start : start + length] * np.hanning(length).astype(np.float32)
                fired[length_ms] += bool(first_firing_ms(plain, with_silence(fragment, 0.5, 0.5)))
                fired_sure[length_ms] += bool(first_firing_ms(sure, with_silence(fragment, 0.5, 0.5)))
    for name, counts in (("", fired), (", with a sure frame", fired_sure)):
        report(f"speech detector{name}: vocal fragments taken for speech (30/40/60 ms)",
               " / ".join(f"{counts[ms]}/{trials}" for ms in counts))
    assert fired[30] == 0 and fired_sure[30] == 0
    assert fired[40] <= trials // 4
    assert fired_sure[40] <= trials // 2  # a 40 ms piece of a word is a word's start: it may interrupt


def test_speech_detector_hears_speech_through_noise_and_rearms_after_silence():
    rng = np.random.default_rng(11)
    speech = say("Hold on a second.", "flite:awb", RATE)
    noisy = with_silence(speech)
    noisy = noisy + (rng.standard_normal(len(noisy)) * np.sqrt(np.mean(speech**2)) / 3.16).astype(np.float32)
    detector = VoiceActivity()
    assert len(first_firing_ms(detector, noisy)) == 1  # 10 dB SNR
    twice = np.concatenate((with_silence(speech, 0.5, 0.6), speech, np.zeros(RATE // 2, np.float32)))
    assert len(first_firing_ms(detector, twice)) == 2  # one edge per utterance
    assert FRAME_MS == 32.0


class BargeIn:
    """The glue the app has (see app/mic_router.py): mic chunks into the detector while a reply plays;
    on an onset the speaker is silenced first, from the capture thread."""

    def __init__(self, speaker: Speaker):
        self.speaker = speaker
        self.detector = VoiceActivity()
        self.guarding: str | None = None
        self.cancelled_at: float | None = None
        self.heard_ms = 0.0
        self.done = threading.Event()

    def on_audio(self, chunk: np.ndarray, capture_time: float) -> None:
        if self.detector.feed(chunk) and self.guarding is not None:
            response_id, self.guarding = self.guarding, None
            self.heard_ms = self.speaker.cancel(response_id)
            self.cancelled_at = time.monotonic()
            self.done.set()

    def guard(self, response_id: str) -> None:
        self.cancelled_at = None
        self.done.clear()
        self.guarding = response_id


def test_talking_over_a_reply_silences_the_speaker(pulse_audio: PulseHarness):
    errors: list[str] = []
    speaker = Speaker(on_error=errors.append)
    barge_in = BargeIn(speaker)
    mic = Microphone(on_audio=barge_in.on_audio, on_error=errors.append)
    assert speaker.start() and mic.start(), errors
    reply = say("Here is a long answer about the history of the weather in many places around the world, "
                "and how people learned to predict it.", "piper:joe", RATE)
    # A -60 dBFS floor: the reply is never digital silence, so where it stops at the speaker is exact.
    reply = reply + np.random.default_rng(1).uniform(-1e-3, 1e-3, len(reply)).astype(np.float32)
    rng = random.Random(17)
    to_silence, to_cancel, cancel_to_silence, accounting = [], [], [], []
    try:
        for trial in range(12):
            response_id = f"reply-{trial}"
            text, voice = INTERRUPTIONS[trial % len(INTERRUPTIONS)], VOICES[trial % len(VOICES)]
            interruption = say(text, voice, RATE)
            with pulse_audio.record_speaker() as heard, pulse_audio.record_mic_feed() as fed:
                speaker.push(response_id, reply)
                barge_in.guard(response_id)
                time.sleep(rng.uniform(0.4, 1.2))
                feed = pulse_audio.feed_mic(interruption, RATE)
                assert barge_in.done.wait(5.0), f"trial {trial}: {voice} saying {text!r} did not interrupt"
                feed.wait(10.0)
                time.sleep(0.3)
            fed_audio, played = fed.audio(), heard.audio()
            onset = fed.time_of(speech_onset(fed_audio))
            silent = heard.time_of(np.flatnonzero(played)[-1] + 1)
            to_silence.append(1000 * (silent - onset))
            to_cancel.append(1000 * (barge_in.cancelled_at - onset))
            cancel_to_silence.append(1000 * (silent - barge_in.cancelled_at))
            sounding = np.flatnonzero(played)
            accounting.append(barge_in.heard_ms - 1000 * (sounding[-1] + 1 - sounding[0]) / 48_000)
    finally:
        mic.stop()
        speaker.stop()
    assert not errors
    report("barge-in: speech onset -> silence at the speaker, p50/p95/max",
           f"{np.percentile(to_silence, 50):.0f} / {np.percentile(to_silence, 95):.0f} / {max(to_silence):.0f} ms"
           f" over {len(to_silence)} trials")
    report("barge-in: speech onset -> cancel() p50", float(np.percentile(to_cancel, 50)), "ms")
    report("barge-in: cancel() -> silence p50/max",
           f"{np.percentile(cancel_to_silence, 50):.0f} / {max(cancel_to_silence):.0f} ms")
    report("barge-in: heard_ms - what the speaker played, worst", max(accounting, key=abs), "ms")
    # Generous bounds (shared 2-core machine; the benchmark holds the real target, p95 <= 150 ms).
    assert np.percentile(to_silence, 95) < 400
    assert all(-5 < d < 100 for d in cancel_to_silence)
    assert all(abs(error) <= 20 for error in accounting)
