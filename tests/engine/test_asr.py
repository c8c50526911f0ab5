"""Whisper tiny.en on short windows, and transcription while the user speaks (real models, real voices)."""

from __future__ import annotations

import re
import threading
import time

import numpy as np
import pytest

from engine.audio.pcm import PROTOCOL_RATE, resample
from engine.runtime import inference_threads
from engine.speech.asr import (
    MAX_WINDOW_S,
    SAMPLE_RATE,
    LogMelSpectrogram,
    UtteranceTranscriber,
    WhisperAsr,
    _windows,
    cut_loop,
)
from engine.turns.detector import SpeechStarted, SpeechStopped, TurnDetector
from engine.turns.vad import SileroVadModel
from tests.speakers import VOICES, say

SENTENCES = (
    "Please tell me what the weather will be like tomorrow morning.",
    "Set a timer for twenty minutes.",
    "How many people live in Paris?",
    "Is it going to rain this afternoon?",
)
LONG_SENTENCE = "Remind me to call my mother at seven tonight, and also send an email to the team about the budget."


@pytest.fixture(scope="module")
def vad(model_store) -> SileroVadModel:
    return SileroVadModel(model_store.resolve("silero-vad").file())


@pytest.fixture(scope="module")
def model_dir(model_store):
    return model_store.resolve("whisper-tiny.en").directory


@pytest.fixture(scope="module")
def asr(model_dir, vad) -> WhisperAsr:
    asr = WhisperAsr(model_dir, inference_threads(), vad=vad)
    asr.warm_up()
    return asr


@pytest.fixture(scope="module")
def plain_asr(model_dir) -> WhisperAsr:
    """No VAD gate: what Whisper's own no-speech detection does alone."""
    return WhisperAsr(model_dir, inference_threads())


@pytest.fixture(scope="module")
def full_window_asr(model_dir) -> WhisperAsr:
    return WhisperAsr(model_dir, inference_threads(), full_window=True)


# --- text comparison ------------------------------------------------------------------------------

_ONES = "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen " \
        "sixteen seventeen eighteen nineteen".split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()


def _number(n: int) -> str:
    if n < 20:
        return _ONES[n]
    if n < 100:
        return _TENS[n // 10] + ("" if n % 10 == 0 else " " + _ONES[n % 10])
    return " ".join(_ONES[int(d)] for d in str(n))


def words(text: str) -> list[str]:
    """Lower case, no punctuation, numbers spelled out ("20" -> "twenty", "7:30" -> "seven thirty")."""
    text = re.sub(r"\d+", lambda m: f" {_number(int(m.group()))} ", text.lower())
    return re.sub(r"[^a-z' ]+", " ", text).replace("'", "").split()


def word_error_rate(reference: str, hypothesis: str) -> float:
    ref, hyp = words(reference), words(hypothesis)
    row = list(range(len(hyp) + 1))
    for i in range(1, len(ref) + 1):
        previous, row = row, [i] + [0] * len(hyp)
        for j in range(1, len(hyp) + 1):
            row[j] = min(previous[j] + 1, row[j - 1] + 1, previous[j - 1] + (ref[i - 1] != hyp[j - 1]))
    return row[len(hyp)] / max(1, len(ref))


def recall(reference: str, hypothesis: str) -> float:
    """Share of the reference's words that the hypothesis has."""
    have = words(hypothesis)
    ref = words(reference)
    return sum(1 for w in ref if w in have) / max(1, len(ref))


def test_words_normalisation():
    assert words("Set a timer for 20 minutes.") == words("set a timer for twenty minutes")
    assert words("It's 7 o'clock!") == ["its", "seven", "oclock"]
    assert word_error_rate("a b c d", "a x c") == 0.5


# --- batch transcription --------------------------------------------------------------------------


@pytest.mark.parametrize("voice", VOICES)
def test_transcripts_have_the_words(asr, voice):
    errors = []
    for sentence in SENTENCES:
        text = asr.transcribe(say(sentence, voice, SAMPLE_RATE))
        assert recall(sentence, text) >= 0.8, (sentence, text)
        errors.append(word_error_rate(sentence, text))
    assert np.mean(errors) <= 0.1, errors


def test_short_window_matches_the_30_second_window(asr, full_window_asr):
    same, cases = 0, []
    for voice in VOICES:
        for sentence in SENTENCES[:3]:
            audio = say(sentence, voice, SAMPLE_RATE)
            short, full = asr.transcribe(audio), full_window_asr.transcribe(audio)
            same += words(short) == words(full)
            cases.append((voice, sentence, short, full))
            # Where they differ, the short window must not be the worse one by much.
            assert word_error_rate(sentence, short) <= word_error_rate(sentence, full) + 0.15, cases[-1]
    print(f"\nshort window == 30 s window on {same}/{len(cases)} transcripts")
    for voice, sentence, short, full in cases:
        if words(short) != words(full):
            print(f"  {voice}: short {short!r} | 30 s {full!r}")
    assert same >= 0.75 * len(cases)


def _noises() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    t = np.arange(2 * SAMPLE_RATE) / SAMPLE_RATE
    pink = np.fft.irfft(np.fft.rfft(rng.standard_normal(len(t))) / np.sqrt(np.arange(1, len(t) // 2 + 2)), len(t))
    clicks = np.zeros(len(t))
    clicks[:: SAMPLE_RATE // 5] = 0.5
    return {
        "silence": np.zeros(len(t)),
        "white noise -40 dB": rng.standard_normal(len(t)) * 0.01,
        "white noise -20 dB": rng.standard_normal(len(t)) * 0.1,
        "pink noise -30 dB": pink / np.sqrt(np.mean(pink**2)) * 0.03,
        "50 Hz hum": 0.1 * np.sin(2 * np.pi * 50 * t),
        "clicks": clicks,
    }


def test_no_speech_gives_empty_text(asr, plain_asr):
    for name, noise in _noises().items():
        assert asr.transcribe(noise.astype(np.float32)) == "", name
    # Without the VAD, Whisper's own no-speech probability still catches silence and steady noise.
    for name in ("silence", "white noise -40 dB", "pink noise -30 dB"):
        assert plain_asr.transcribe(_noises()[name].astype(np.float32)) == "", name


def test_audio_longer_than_one_window(asr):
    sentences = [
        "The first meeting starts at nine in the morning.",
        "After that we review the quarterly sales figures.",
        "Lunch is served in the main hall at noon.",
        "In the afternoon the design team presents the new website.",
        "Please bring your laptop and a notebook.",
        "We will finish with a short question and answer session.",
        "The last train home leaves at half past six.",
        "Dinner is booked for eight at the small restaurant by the river.",
        "If anything changes, I will send everyone a message in the morning.",
        "Thank you all for coming today.",
    ]
    gap = np.zeros(SAMPLE_RATE // 2, np.float32)
    audio = np.concatenate([part for s in sentences for part in (say(s, "flite:slt", SAMPLE_RATE), gap)])
    assert len(audio) > 30 * SAMPLE_RATE
    windows = _windows(audio, int(MAX_WINDOW_S * SAMPLE_RATE))
    assert len(windows) >= 2 and all(len(w) <= MAX_WINDOW_S * SAMPLE_RATE for w in windows)
    assert sum(len(w) for w in windows) == len(audio)

    text = asr.transcribe(audio)
    assert recall(" ".join(sentences), text) >= 0.85, text
    assert recall(sentences[0], text) >= 0.8 and recall(sentences[-1], text) >= 0.8, text


def test_window_cuts_fall_in_silence():
    rng = np.random.default_rng(0)
    loud = lambda seconds: (rng.standard_normal(int(seconds * SAMPLE_RATE)) * 0.3).astype(np.float32)  # noqa: E731
    quiet = np.zeros(SAMPLE_RATE // 2, np.float32)
    audio = np.concatenate([loud(24.0), quiet, loud(20.0), quiet, loud(10.0)])
    windows = _windows(audio, int(MAX_WINDOW_S * SAMPLE_RATE))
    cut = len(windows[0])
    assert 24 * SAMPLE_RATE <= cut <= 24.5 * SAMPLE_RATE  # inside the first quiet gap


def test_log_mel_features_equal_faster_whispers():
    from faster_whisper.feature_extractor import FeatureExtractor

    audio = say("How many people live in Paris?", "flite:slt", SAMPLE_RATE)
    np.testing.assert_allclose(LogMelSpectrogram(80)(audio), FeatureExtractor()(audio, padding=0), atol=1e-5)


def test_decoder_loops_are_cut():
    assert cut_loop("Hello, hello", truncated=False) == "Hello"
    assert cut_loop("Stop Stop", truncated=False) == "Stop"
    assert cut_loop("Can you sum it up? Can you sum it up?", truncated=False) == "Can you sum it up?"
    assert cut_loop("Call my mother. Call my mother. Call my", truncated=False) == "Call my mother."
    assert cut_loop("I need eggs. Eggs. Eggs. Eggs.", truncated=False) == "I need eggs."
    assert cut_loop("Open the file, redefirst line. Open the file, redef", truncated=True) == \
        "Open the file, redefirst line."
    assert cut_loop("I want to go home. I", truncated=True) == "I want to go home."
    # Real repeats are kept.
    for text in ("Tell me about Bora Bora.", "I had had enough.", "It is very very good.",
                 "Tell me about Paris. Tell me about Rome.", "I want to go home. I"):
        assert cut_loop(text, truncated=False) == text


def test_transcription_time_by_length(asr, full_window_asr):
    speech = say(LONG_SENTENCE + " Then read me the first three appointments on my calendar.", "flite:slt", SAMPLE_RATE)
    print("\nWhisper tiny.en int8, 1 thread per model (median of 3):")
    for seconds in (1, 3, 6):
        clip = speech[: seconds * SAMPLE_RATE]
        times = {}
        for name, model in (("short window", asr), ("30 s window", full_window_asr)):
            runs = []
            for _ in range(3):
                started = time.perf_counter()
                model.transcribe(clip)
                runs.append((time.perf_counter() - started) * 1000)
            times[name] = np.median(runs)
        print(f"  {seconds} s audio: short window {times['short window']:4.0f} ms, "
              f"30 s window {times['30 s window']:4.0f} ms")


# --- transcription while speaking -----------------------------------------------------------------


def at_protocol_rate(text: str, voice: str, lead: float = 0.3, trail: float = 0.0) -> np.ndarray:
    speech = say(text, voice, PROTOCOL_RATE)
    return np.concatenate([np.zeros(int(lead * PROTOCOL_RATE), np.float32), speech,
                           np.zeros(int(trail * PROTOCOL_RATE), np.float32)])


def feed(transcriber: UtteranceTranscriber, audio: np.ndarray, speed: float | None = None, chunk: int = 480):
    """Feed 20 ms chunks, `speed` times faster than real time (None: as fast as possible)."""
    started = time.monotonic()
    for offset in range(0, len(audio), chunk):
        transcriber.feed(audio[offset : offset + chunk])
        if speed:
            time.sleep(max(0.0, started + (offset + chunk) / PROTOCOL_RATE / speed - time.monotonic()))


@pytest.mark.parametrize("voice", ["flite:slt", "piper:joe"])
def test_partials_arrive_while_speaking(asr, voice):
    audio = at_protocol_rate(LONG_SENTENCE, voice)
    partials: list[tuple[float, str]] = []
    started = time.monotonic()
    transcriber = UtteranceTranscriber(asr, partial_interval_s=0.4,
                                       on_partial=lambda text: partials.append((time.monotonic() - started, text)))
    try:
        feed(transcriber, audio, speed=2.0)
        fed_at = time.monotonic() - started
        heard_while_speaking = [p for p in partials if p[0] < fed_at]
        final = transcriber.transcript()
    finally:
        transcriber.close()
    print(f"\n{voice}: {len(audio) / PROTOCOL_RATE:.1f} s fed in {fed_at:.1f} s; partials:")
    for at, text in partials:
        print(f"  {at:5.2f} s  {text}")
    assert len(heard_while_speaking) >= 3
    assert len(partials) <= fed_at / 0.4 + 4  # the interval holds (plus passes at pauses)
    assert word_error_rate(LONG_SENTENCE, final) <= 0.15, final
    for _, text in heard_while_speaking:  # partials are the start of the same sentence, not noise
        assert recall(text, final) >= 0.6, (text, final)


def test_no_partial_of_a_fragment(asr):
    """Under MIN_PARTIAL_SPAN_S of speech no partial is guessed at while the person goes on talking;
    the transcript, once asked for, still covers it."""
    partials = []
    transcriber = UtteranceTranscriber(asr, partial_interval_s=0.0, on_partial=partials.append)
    audio = at_protocol_rate(LONG_SENTENCE, "piper:joe")
    try:
        feed(transcriber, audio[: int(0.8 * PROTOCOL_RATE)])  # 0.3 s of silence, then half a second of words
        time.sleep(1.0)
        assert partials == []
        feed(transcriber, audio[int(0.8 * PROTOCOL_RATE): int(2.0 * PROTOCOL_RATE)])
        assert recall("Remind me", transcriber.transcript()) == 1.0
    finally:
        transcriber.close()


@pytest.mark.parametrize("voice", ["espeak:en-us", "flite:awb", "piper:joe"])
def test_transcript_is_ready_when_the_turn_ends(asr, vad, voice):
    """Real-time feeding through the turn detector, as the engine does: the ASR tail after SpeechStopped."""
    audio = at_protocol_rate(LONG_SENTENCE, voice, lead=0.5, trail=0.8)
    detector = TurnDetector(vad)
    transcriber, text, waited = None, None, None
    started = time.monotonic()
    chunk = PROTOCOL_RATE // 50
    for offset in range(0, len(audio), chunk):
        piece = audio[offset : offset + chunk]
        events = detector.feed(piece)
        if transcriber is not None:
            transcriber.feed(piece)
        for event in events:
            if isinstance(event, SpeechStarted):
                transcriber = UtteranceTranscriber(asr)
                transcriber.feed(audio[int(event.audio_start_ms * PROTOCOL_RATE / 1000) : offset + chunk])
            elif isinstance(event, SpeechStopped):
                asked = time.perf_counter()
                text = transcriber.transcript()
                waited = (time.perf_counter() - asked) * 1000
                transcriber.close()
                transcriber = None
        time.sleep(max(0.0, started + (offset + chunk) / PROTOCOL_RATE - time.monotonic()))
    print(f"\n{voice}: transcript {waited:.1f} ms after SpeechStopped: {text!r}")
    assert text is not None and word_error_rate(LONG_SENTENCE, text) <= 0.2, text


def test_transcript_twice_is_instant_and_silence_changes_nothing(asr):
    transcriber = UtteranceTranscriber(asr)
    try:
        feed(transcriber, at_protocol_rate("Set a timer for twenty minutes.", "flite:rms", trail=0.3))
        first = transcriber.transcript()
        asked = time.perf_counter()
        again = transcriber.transcript()
        instant_ms = (time.perf_counter() - asked) * 1000
        feed(transcriber, np.zeros(PROTOCOL_RATE, np.float32))  # a second of silence after the speech
        asked = time.perf_counter()
        after_silence = transcriber.transcript()
        silence_ms = (time.perf_counter() - asked) * 1000
    finally:
        transcriber.close()
    print(f"\ntranscript() again: {instant_ms:.3f} ms; after 1 s more silence: {silence_ms:.1f} ms")
    assert word_error_rate("Set a timer for twenty minutes.", first) == 0, first
    assert again == first and after_silence == first
    assert instant_ms < 20  # a cached answer; generous for a loaded machine


def test_more_speech_after_a_pause_is_transcribed_too(asr):
    transcriber = UtteranceTranscriber(asr)
    try:
        feed(transcriber, at_protocol_rate("Turn left at the corner.", "piper:joe", trail=0.5))
        first = transcriber.transcript()
        feed(transcriber, at_protocol_rate("Then go straight on.", "piper:joe", lead=0.0, trail=0.3))
        both = transcriber.transcript()
    finally:
        transcriber.close()
    assert recall("Turn left at the corner.", first) == 1.0, first
    assert recall("Turn left at the corner. Then go straight on.", both) >= 0.9, both


def test_final_request_outranks_partial_work(asr):
    """Partial passes run back to back; transcript() must still cover all audio, without waiting
    for passes that cannot be its answer."""
    passes = []
    transcriber = UtteranceTranscriber(asr, partial_interval_s=0.0, on_partial=passes.append)
    audio = at_protocol_rate(LONG_SENTENCE, "flite:slt")
    try:
        feed(transcriber, audio[: len(audio) * 3 // 4])
        time.sleep(0.15)  # a partial pass is under way
        feed(transcriber, audio[len(audio) * 3 // 4 :])
        asked = time.perf_counter()
        final = transcriber.transcript()
        waited = (time.perf_counter() - asked) * 1000
    finally:
        transcriber.close()
    print(f"\ntranscript() with partial work in flight: {waited:.0f} ms (after {len(passes)} partials)")
    assert word_error_rate(LONG_SENTENCE, final) <= 0.15, final
    assert recall("about the budget", final) == 1.0, final  # the last words, fed last, are in


def test_silence_only_is_empty_without_running_whisper(asr):
    passes = []
    transcriber = UtteranceTranscriber(asr, on_partial=passes.append)
    try:
        noise = (np.random.default_rng(0).standard_normal(2 * PROTOCOL_RATE) * 0.01).astype(np.float32)
        feed(transcriber, noise)
        asked = time.perf_counter()
        assert transcriber.transcript() == ""
        assert (time.perf_counter() - asked) < 0.5 and not passes
    finally:
        transcriber.close()


def test_worker_sleeps_when_idle_and_close_stops_it(asr):
    transcriber = UtteranceTranscriber(asr)
    feed(transcriber, at_protocol_rate("How many people live in Paris?", "flite:awb", trail=0.3))
    transcriber.transcript()
    cpu = time.process_time()
    time.sleep(1.0)
    idle_cpu_ms = (time.process_time() - cpu) * 1000
    assert idle_cpu_ms < 50, idle_cpu_ms  # no busy waiting

    # Close in the middle of a pass: the worker stops at the pass's next step.
    feed(transcriber, at_protocol_rate(LONG_SENTENCE, "flite:awb"))
    outcome = []

    def wait_for_transcript():
        try:
            outcome.append(transcriber.transcript())
        except RuntimeError as error:  # closed before the pass finished
            outcome.append(error)

    waiting = threading.Thread(target=wait_for_transcript)
    waiting.start()
    time.sleep(0.05)
    asked = time.perf_counter()
    transcriber.close()
    close_ms = (time.perf_counter() - asked) * 1000
    transcriber.close(wait=True)
    stop_ms = (time.perf_counter() - asked) * 1000
    waiting.join(5)
    print(f"\nidle worker: {idle_cpu_ms:.1f} ms CPU in 1 s; close() during a pass returns in "
          f"{close_ms:.2f} ms, the worker is gone {stop_ms:.0f} ms later")
    assert close_ms < 20
    assert not transcriber._worker.is_alive() and not waiting.is_alive() and len(outcome) == 1
    with pytest.raises(RuntimeError):
        transcriber.feed(np.zeros(480, np.float32))


def test_streaming_input_is_resampled_like_batch(asr):
    """The transcriber hears 24 kHz; batch transcription of the same speech at 16 kHz agrees."""
    audio = at_protocol_rate("Is it going to rain this afternoon?", "espeak:en+f3", trail=0.3)
    transcriber = UtteranceTranscriber(asr)
    try:
        feed(transcriber, audio)
        streamed = transcriber.transcript()
    finally:
        transcriber.close()
    batch = asr.transcribe(resample(audio, PROTOCOL_RATE, SAMPLE_RATE))
    assert recall("Is it going to rain this afternoon?", streamed) >= 0.8, streamed
    assert word_error_rate(batch, streamed) <= 0.2, (batch, streamed)
