"""Silero VAD and server_vad turn detection, on real synthetic voices (no fakes).

Every speech clip from `say` is trimmed to its first and last audible sample, so a clip placed after
`lead` seconds of silence has its true bounds at `lead` and `lead + len/rate`.
"""

from __future__ import annotations

import time
from dataclasses import replace

import numpy as np
import pytest

from engine.audio.pcm import PROTOCOL_RATE
from engine.turns.detector import (
    ServerVadSettings,
    SpeechPaused,
    SpeechResumed,
    SpeechStarted,
    SpeechStopped,
    TurnDetector,
)
from engine.turns.vad import FRAME_MS, FRAME_SAMPLES, SAMPLE_RATE, SileroVadModel
from tests.speakers import VOICES, say

RATE = PROTOCOL_RATE
SENTENCE = "Please tell me what the weather will be like tomorrow morning."
BOUND_TOLERANCE_MS = 150


@pytest.fixture(scope="module")
def vad_model(model_store) -> SileroVadModel:
    return SileroVadModel(model_store.resolve("silero-vad").file())


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * RATE), np.float32)


def white_noise(seconds: float, rms: float, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(round(seconds * RATE)) * rms).astype(np.float32)


def padded(speech: np.ndarray, lead: float = 1.0, trail: float = 1.5) -> np.ndarray:
    return np.concatenate([silence(lead), speech, silence(trail)])


def run(detector: TurnDetector, audio: np.ndarray, chunk: int | list[int] = 480):
    """Feed `audio` in chunks; returns [(event, ms of audio fed when it came)]."""
    sizes = chunk if isinstance(chunk, list) else [chunk]
    events, offset, i = [], 0, 0
    while offset < len(audio):
        size = sizes[i % len(sizes)]
        i += 1
        for event in detector.feed(audio[offset : offset + size]):
            events.append((event, min(offset + size, len(audio)) * 1000 / RATE))
        offset += size
    return events


def of_type(events, kind):
    return [event for event, _ in events if isinstance(event, kind)]


def frame_probabilities(model: SileroVadModel, audio16k: np.ndarray) -> np.ndarray:
    stream = model.stream()
    whole = len(audio16k) - len(audio16k) % FRAME_SAMPLES
    return np.array([stream.probability(audio16k[i : i + FRAME_SAMPLES]) for i in range(0, whole, FRAME_SAMPLES)])


# --- VAD ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("voice", VOICES)
def test_vad_is_high_on_speech_and_low_on_silence_and_noise(vad_model, voice):
    speech = say(SENTENCE, voice, SAMPLE_RATE)
    p = frame_probabilities(vad_model, speech)[1:-1]  # frames wholly inside the speech
    assert p.mean() > 0.85 and np.mean(p >= 0.5) > 0.9, (voice, p.round(2))

    quiet = frame_probabilities(vad_model, np.zeros(2 * SAMPLE_RATE, np.float32))
    rng = np.random.default_rng(1)
    noise = frame_probabilities(vad_model, (rng.standard_normal(2 * SAMPLE_RATE) * 0.01).astype(np.float32))  # -40 dB
    assert quiet.max() < 0.1 and noise.max() < 0.2, (quiet.max(), noise.max())


def test_vad_streams_keep_their_own_state(vad_model):
    speech = say(SENTENCE, "flite:awb", SAMPLE_RATE)[: 40 * FRAME_SAMPLES]
    frames = speech.reshape(-1, FRAME_SAMPLES)
    alone = frame_probabilities(vad_model, speech)

    first, second = vad_model.stream(), vad_model.stream()
    interleaved = []
    for frame in frames:  # the second stream hears noise in between: it must not disturb the first
        interleaved.append(first.probability(frame))
        second.probability(np.random.default_rng(0).standard_normal(FRAME_SAMPLES).astype(np.float32))
    np.testing.assert_allclose(interleaved, alone, atol=1e-5)

    first.reset()
    np.testing.assert_allclose([first.probability(f) for f in frames], alone, atol=1e-5)
    with pytest.raises(ValueError):
        first.probability(np.zeros(480, np.float32))


def test_vad_cost_per_frame(vad_model):
    stream = vad_model.stream()
    frame = say(SENTENCE, "flite:slt", SAMPLE_RATE)[:FRAME_SAMPLES]
    for _ in range(50):
        stream.probability(frame)
    count = 1000
    started = time.perf_counter()
    for _ in range(count):
        stream.probability(frame)
    per_frame = (time.perf_counter() - started) / count * 1000
    print(f"\nVAD: {per_frame:.3f} ms per {FRAME_MS:.0f} ms frame")


# --- turn detection -------------------------------------------------------------------------------


@pytest.mark.parametrize("voice", VOICES)
def test_turn_bounds_match_the_speech(vad_model, voice):
    speech = say(SENTENCE, voice)
    settings = ServerVadSettings()
    events = run(TurnDetector(vad_model, settings), padded(speech))
    onset, end = 1000.0, 1000.0 + len(speech) * 1000 / RATE

    started, stopped = of_type(events, SpeechStarted), of_type(events, SpeechStopped)
    assert len(started) == 1 and len(stopped) == 1, events
    assert isinstance(events[0][0], SpeechStarted) and isinstance(events[-1][0], SpeechStopped)
    assert abs(started[0].audio_start_ms + settings.prefix_padding_ms - onset) <= BOUND_TOLERANCE_MS
    assert abs(stopped[0].speech_end_ms - end) <= BOUND_TOLERANCE_MS
    # Realtime semantics: the turn's audio ends after the silence window (whole 32 ms frames).
    window = stopped[0].audio_end_ms - stopped[0].speech_end_ms
    assert settings.silence_duration_ms <= window < settings.silence_duration_ms + FRAME_MS
    # The tentative end came first, at the same place, and was not taken back.
    assert isinstance(events[-2][0], SpeechPaused) and events[-2][0].speech_end_ms == stopped[0].speech_end_ms


@pytest.mark.parametrize("voice", VOICES)
def test_turn_bounds_hold_in_noise(vad_model, voice):
    speech = say(SENTENCE, voice)
    audio = padded(speech)
    rms = float(np.sqrt(np.mean(speech**2)))
    audio = audio + white_noise(len(audio) / RATE, rms / 10)  # 20 dB SNR
    events = run(TurnDetector(vad_model), audio)
    onset, end = 1000.0, 1000.0 + len(speech) * 1000 / RATE

    started, stopped = of_type(events, SpeechStarted), of_type(events, SpeechStopped)
    assert len(started) == 1 and len(stopped) == 1, events
    assert abs(started[0].audio_start_ms + 300 - onset) <= BOUND_TOLERANCE_MS
    assert 0 <= stopped[0].speech_end_ms - end <= 250  # noise keeps the VAD up a little longer


def test_detection_lag_after_the_end_of_speech(vad_model):
    """How soon after the true end SpeechPaused fires (20 ms chunks, as the app sends them)."""
    print("\nSpeechPaused / SpeechStopped after the true end of speech (ms of audio, 20 ms chunks):")
    all_lags = []
    for voice in VOICES:
        lags, stops = [], []
        for text in (SENTENCE, "Set a timer for twenty minutes.", "Stop."):
            speech = say(text, voice)
            for phase in (0, 160, 320):  # where the chunk grid falls relative to the speech
                events = run(TurnDetector(vad_model), padded(speech, lead=1.0 + phase / RATE))
                end = (1.0 + phase / RATE) * 1000 + len(speech) * 1000 / RATE
                lags.append(next(at for e, at in reversed(events) if isinstance(e, SpeechPaused)) - end)
                stops.append(next(at for e, at in events if isinstance(e, SpeechStopped)) - end)
        all_lags += lags
        print(f"  {voice:13s} paused mean {np.mean(lags):4.0f} (min {np.min(lags):4.0f}, max {np.max(lags):4.0f})"
              f"   stopped mean {np.mean(stops):4.0f}")
        assert 0 < np.min(lags) and np.max(lags) < 250
    print(f"  all voices: paused mean {np.mean(all_lags):.0f} ms, median {np.median(all_lags):.0f} ms")


def test_events_do_not_depend_on_chunk_size(vad_model):
    speech = np.concatenate([say("Turn left at the corner.", "piper:joe"), silence(0.25),
                             say("Then go straight on.", "piper:joe")])
    audio = padded(speech)
    runs = {name: run(TurnDetector(vad_model), audio, chunk)
            for name, chunk in (("10 ms", 240), ("100 ms", 2400), ("odd", [137, 1999, 480, 7, 3001, 613]))}
    reference = runs["10 ms"]
    assert any(isinstance(e, SpeechResumed) for e, _ in reference)  # a rich sequence to compare
    for name, events in runs.items():
        assert [type(e) for e, _ in events] == [type(e) for e, _ in reference], name
        for (event, _), (expected, _) in zip(events, reference):
            for field in ("audio_start_ms", "speech_end_ms", "audio_end_ms"):
                if hasattr(event, field):
                    assert abs(getattr(event, field) - getattr(expected, field)) <= FRAME_MS, (name, event)


@pytest.mark.parametrize("voice", VOICES)
def test_short_pause_is_paused_and_resumed_not_stopped(vad_model, voice):
    first = say("Turn left at the corner.", voice)
    second = say("Then go straight on.", voice)
    audio = padded(np.concatenate([first, silence(0.25), second]))
    events = run(TurnDetector(vad_model), audio)
    first_end = 1000.0 + len(first) * 1000 / RATE

    assert len(of_type(events, SpeechStarted)) == 1 and len(of_type(events, SpeechStopped)) == 1, events
    assert isinstance(events[-1][0], SpeechStopped)
    kinds = [type(e) for e, _ in events]
    gap = [i for i, (e, _) in enumerate(events)
           if isinstance(e, SpeechPaused) and abs(e.speech_end_ms - first_end) <= BOUND_TOLERANCE_MS]
    assert gap and kinds[gap[0] + 1] is SpeechResumed, events
    assert kinds.count(SpeechPaused) == kinds.count(SpeechResumed) + 1


def test_long_pause_ends_the_turn(vad_model):
    audio = padded(np.concatenate([say("Turn left.", "flite:slt"), silence(0.7), say("Go on.", "flite:slt")]))
    events = run(TurnDetector(vad_model), audio)
    assert [type(e) for e, _ in events if not isinstance(e, (SpeechPaused, SpeechResumed))] == [
        SpeechStarted, SpeechStopped, SpeechStarted, SpeechStopped]


def _not_speech() -> dict[str, np.ndarray]:
    t = np.arange(RATE) / RATE
    rng = np.random.default_rng(3)
    impulses = silence(2.0)
    impulses[:: int(0.3 * RATE)] = 0.9
    knock = rng.standard_normal(int(0.2 * RATE)) * 0.8 * np.exp(-np.arange(int(0.2 * RATE)) / (0.04 * RATE))
    breath = np.fft.irfft(np.fft.rfft(rng.standard_normal(int(0.3 * RATE))) * (np.arange(int(0.15 * RATE) + 1) < 2000))
    breath = breath / np.abs(breath).max() * 0.05 * np.hanning(len(breath))
    return {
        "impulses": impulses,
        "5 ms clicks": np.tile(np.concatenate([0.8 * np.sin(2 * np.pi * 2000 * t[:120]), silence(0.5)]), 3),
        "100 ms white burst": white_noise(0.1, 0.3),
        "knock": knock,
        "breath": breath,
    }


def _speech_snippets() -> list[np.ndarray]:
    """40 ms pieces of speech: about a lip smack's length; the VAD flags some for a frame or two."""
    snippets = []
    for voice in ("flite:slt", "piper:joe", "espeak:en-us"):
        speech = say("Hello there, how are you doing today?", voice)
        length = int(0.04 * RATE)
        for start in range(int(0.1 * RATE), len(speech) - length, int(0.12 * RATE)):
            snippets.append((speech[start : start + length] * np.hanning(length)).astype(np.float32))
    return snippets


def test_clicks_and_short_bursts_do_not_start_a_turn(vad_model):
    for name, sound in _not_speech().items():
        events = run(TurnDetector(vad_model), padded(sound.astype(np.float32), lead=0.5, trail=1.0))
        assert not events, (name, events)

    snippets = [padded(s, lead=0.5, trail=0.5) for s in _speech_snippets()]
    assert not any(run(TurnDetector(vad_model), s) for s in snippets)
    # The same snippets do start turns without the minimum speech duration: the guard is what holds.
    no_guard = ServerVadSettings(min_speech_ms=0)
    assert any(of_type(run(TurnDetector(vad_model, no_guard), s), SpeechStarted) for s in snippets)


def test_prefix_padding_is_honoured(vad_model):
    speech = say("Open the window.", "flite:rms")
    starts = {}
    for prefix in (0, 300, 500):
        events = run(TurnDetector(vad_model, ServerVadSettings(prefix_padding_ms=prefix)), padded(speech))
        starts[prefix] = of_type(events, SpeechStarted)[0].audio_start_ms
    assert abs(starts[0] - 1000) <= BOUND_TOLERANCE_MS
    assert starts[0] - starts[300] == 300 and starts[0] - starts[500] == 500
    # Floored at the start of the timeline.
    early = run(TurnDetector(vad_model), padded(speech, lead=0.1))
    assert of_type(early, SpeechStarted)[0].audio_start_ms == 0


def test_settings_change_live(vad_model):
    speech = say(SENTENCE, "flite:slt")
    audio = padded(speech, trail=2.0)
    half = len(silence(1.0)) + len(speech) // 2
    for silence_ms in (200, 800):
        detector = TurnDetector(vad_model)
        first = run(detector, audio[:half])
        assert of_type(first, SpeechStarted) and detector.in_turn
        detector.settings = replace(detector.settings, silence_duration_ms=silence_ms)
        stopped = of_type(run(detector, audio[half:]), SpeechStopped)
        assert len(stopped) == 1
        assert silence_ms <= stopped[0].audio_end_ms - stopped[0].speech_end_ms < silence_ms + FRAME_MS

    # A stricter threshold set during the lead silence: speech counts later and stops sooner.
    bounds = {}
    for threshold in (0.5, 0.99):
        detector = TurnDetector(vad_model)
        run(detector, audio[: len(silence(0.5))])
        detector.settings = replace(detector.settings, threshold=threshold)
        events = run(detector, audio[len(silence(0.5)) :])
        bounds[threshold] = (of_type(events, SpeechStarted)[0].audio_start_ms,
                             of_type(events, SpeechStopped)[0].speech_end_ms)
    assert bounds[0.99][0] > bounds[0.5][0] and bounds[0.99][1] <= bounds[0.5][1], bounds
    with pytest.raises(ValueError):
        ServerVadSettings(threshold=1.5)
    with pytest.raises(ValueError):
        ServerVadSettings(silence_duration_ms=-1)


def test_reset_forgets_everything(vad_model):
    audio = padded(say(SENTENCE, "espeak:en-us"))
    fresh = run(TurnDetector(vad_model), audio)

    detector = TurnDetector(vad_model)
    run(detector, audio[: len(audio) // 2])
    assert detector.in_turn and detector.fed_ms > 0
    detector.reset()
    assert not detector.in_turn and detector.fed_ms == 0
    assert [e for e, _ in run(detector, audio)] == [e for e, _ in fresh]


def test_detector_cost_per_chunk(vad_model):
    audio = padded(say(SENTENCE, "piper:joe"))
    detector = TurnDetector(vad_model)
    chunk = RATE // 50
    costs = []
    for offset in range(0, len(audio), chunk):
        started = time.perf_counter()
        detector.feed(audio[offset : offset + chunk])
        costs.append(time.perf_counter() - started)
    costs_us = np.array(costs) * 1e6
    print(f"\ndetector: {costs_us.mean():.0f} us mean, {np.percentile(costs_us, 99):.0f} us p99 per 20 ms chunk "
          f"(resample + VAD when a 32 ms frame completes)")
