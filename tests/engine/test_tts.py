"""Piper speech with word timings, checked against the real voice and against Whisper's ears."""

from __future__ import annotations

import difflib
import re
import statistics
import threading
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from faster_whisper import WhisperModel

from engine.audio.pcm import PROTOCOL_RATE, resample
from engine.models.store import ModelStore, sha256_of
from engine.runtime import inference_threads
from engine.speech.phrases import PhraseSplitter, speakable
from engine.speech.tts import PiperTts, SpokenPhrase, model_with_alignments

SENTENCES = [
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "Please remember to buy milk, eggs, and bread on your way home tonight.",
    "Honestly, I think the weather will improve by the weekend.",
    "Can you call me back in twenty minutes?",
    "The meeting starts at 42 past nine, so Dr. Smith will be late again.",
    "We moved to the U.S. in June and never looked back.",
]
TRICKY = [
    "Hello there,",
    "Okay.",
    "It costs $3.14, and 1,000 people came! Wait, really?",
    "Dr. Smith lives in the U.S., e.g. in New York, since 5 p.m. yesterday.",
    "I love it 😀 so much, see https://example.com/docs.",
    "**Bold** claims — *italic* doubts... and `code`.",
    "J. R. R. Tolkien wrote 3 books in 1954 & 1955; that's 100% true.",
    "A",
    "Supercalifragilisticexpialidocious!",
    " ".join(["one two three four five, six seven eight nine ten."] * 3),
]
MEDIAN_START_ERROR_MS = 120  # Whisper tiny's own word timestamps are only good to ~50-100 ms
MEDIAN_END_ERROR_MS = 150


@pytest.fixture(scope="module")
def voice_path(model_store: ModelStore) -> Path:
    return model_store.resolve("piper-joe-medium").file("en_US-joe-medium.onnx")


@pytest.fixture(scope="module")
def tts(voice_path: Path) -> PiperTts:
    voice = PiperTts(voice_path, inference_threads())
    voice.warm_up()
    return voice


@pytest.fixture(scope="module")
def whisper(model_store: ModelStore) -> WhisperModel:
    directory = model_store.resolve("whisper-tiny.en").directory
    return WhisperModel(str(directory), compute_type="int8", cpu_threads=1)


def whisper_words(whisper: WhisperModel, audio: np.ndarray) -> list:
    segments, _ = whisper.transcribe(
        resample(audio, PROTOCOL_RATE, 16_000),
        language="en",
        beam_size=1,
        word_timestamps=True,
        condition_on_previous_text=False,
    )
    return [word for segment in segments for word in segment.words]


def transcript(whisper: WhisperModel, audio: np.ndarray) -> str:
    segments, _ = whisper.transcribe(
        resample(audio, PROTOCOL_RATE, 16_000),
        language="en",
        beam_size=1,
        condition_on_previous_text=False,
        without_timestamps=True,
    )
    return "".join(segment.text for segment in segments).strip()


_ONES = "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen seventeen eighteen nineteen".split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()


def spell(number: int) -> list[str]:
    if number < 20:
        return [_ONES[number]]
    if number < 100:
        return [_TENS[number // 10]] + (spell(number % 10) if number % 10 else [])
    if number < 1000:
        return spell(number // 100) + ["hundred"] + (spell(number % 100) if number % 100 else [])
    return spell(number // 1000) + ["thousand"] + (spell(number % 1000) if number % 1000 else [])


def normalise(text: str) -> list[str]:
    """Lower-case words without punctuation, numbers spelt out, so "42" and "forty-two" compare equal."""
    words: list[str] = []
    text = re.sub(r"\b([a-z])\.", r"\1", text.lower())  # "U.S." and "US" are one word
    for token in re.findall(r"[\d,.]*\d|[a-z']+", text.replace("-", " ")):
        if token[0].isdigit():
            whole, _, fraction = token.replace(",", "").partition(".")
            words += spell(int(whole)) + (["point", *(_ONES[int(d)] for d in fraction)] if fraction else [])
        else:
            words.append(token.strip("'"))
    return [word for word in words if word]


def word_error_rate(reference: list[str], hypothesis: list[str]) -> float:
    previous = list(range(len(hypothesis) + 1))
    for i, ref in enumerate(reference, 1):
        current = [i]
        for j, hyp in enumerate(hypothesis, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ref != hyp)))
        previous = current
    return previous[-1] / max(1, len(reference))


def key(word: str) -> str:
    return re.sub(r"[^a-z0-9]", "", word.lower())


def timing_errors(spoken: SpokenPhrase, heard: list) -> list[tuple[str, float, float]]:
    """(word, start error, end error) in ms for the words we and Whisper both found, matched in order."""
    ours = [key(word.text) for word in spoken.words]
    theirs = [key(word.word) for word in heard]
    errors = []
    for block in difflib.SequenceMatcher(a=ours, b=theirs, autojunk=False).get_matching_blocks():
        for k in range(block.size):
            word, other = spoken.words[block.a + k], heard[block.b + k]
            errors.append((word.text, word.start_ms - other.start * 1000, word.end_ms - other.end * 1000))
    return errors


def assert_timings_consistent(spoken: SpokenPhrase) -> None:
    assert " ".join(word.text for word in spoken.words) == spoken.text
    assert spoken.text == speakable(spoken.text)
    previous_end = 0.0
    for word in spoken.words:
        assert previous_end <= word.start_ms <= word.end_ms <= spoken.duration_ms + 1e-6, spoken.words
        previous_end = word.end_ms


def test_load_caches_the_patched_model_by_source_checksum(voice_path: Path, tmp_path: Path) -> None:
    started = time.perf_counter()
    PiperTts(voice_path, 1, cache_dir=tmp_path)
    first_load = time.perf_counter() - started
    cached = tmp_path / "piper-aligned" / f"{sha256_of(voice_path)}.onnx"
    assert cached.is_file()
    assert not list(cached.parent.glob("*.partial"))
    written_at = cached.stat().st_mtime_ns
    started = time.perf_counter()
    PiperTts(voice_path, 1, cache_dir=tmp_path)
    cached_load = time.perf_counter() - started
    assert cached.stat().st_mtime_ns == written_at, "the cached copy is reused, not rewritten"
    outputs = [output.name for output in onnx.load(str(cached)).graph.output]
    assert len(outputs) == 2, outputs  # audio + per-phoneme durations
    print(f"\nload: first (patch + cache) {first_load:.2f} s, cached {cached_load:.2f} s")


def test_an_unwritable_cache_patches_in_memory(voice_path: Path, tmp_path: Path) -> None:
    not_a_directory = tmp_path / "file"
    not_a_directory.write_text("")
    model = model_with_alignments(voice_path, not_a_directory)
    assert isinstance(model, bytes)
    assert len(onnx.load_from_string(model).graph.output) == 2


def test_audio_is_float32_mono_at_the_protocol_rate(tts: PiperTts) -> None:
    spoken = tts.synthesize("Testing one two three.")
    assert tts.rate == PROTOCOL_RATE == 24_000
    assert spoken.audio.dtype == np.float32 and spoken.audio.ndim == 1
    assert 0.8 < spoken.duration_ms / 1000 < 3.0
    assert 0.01 < np.abs(spoken.audio).max() <= 1.0


def test_speech_transcribes_back_to_the_text(tts: PiperTts, whisper: WhisperModel) -> None:
    total_errors = total_words = 0
    for text in SENTENCES:
        heard = transcript(whisper, tts.synthesize(text).audio)
        rate = word_error_rate(normalise(text), normalise(heard))
        print(f"\n{rate:.2f}  {text!r} -> {heard!r}")
        assert rate <= 0.3, heard  # Whisper tiny mishears the odd word ("Paris" -> "Harris")
        total_errors += rate * len(normalise(text))
        total_words += len(normalise(text))
    assert total_errors / total_words <= 0.08


@pytest.mark.parametrize("text", SENTENCES + TRICKY)
def test_word_timings_are_ordered_inside_the_audio_and_rebuild_the_text(tts: PiperTts, text: str) -> None:
    spoken = tts.synthesize(text)
    assert_timings_consistent(spoken)
    assert [word.text for word in spoken.words] == speakable(text).split(" ")
    sounding = [word for word in spoken.words if word.end_ms > word.start_ms]
    assert len(sounding) == len(spoken.words), "every word here is pronounced, so each has a span"
    # Only the leading breath and the final pause lie outside the words.
    assert spoken.words[0].start_ms < 150
    assert spoken.duration_ms - spoken.words[-1].end_ms < 500


def test_word_timings_agree_with_whisper(tts: PiperTts, whisper: WhisperModel) -> None:
    starts, ends, compared, total = [], [], 0, 0
    for text in SENTENCES:
        spoken = tts.synthesize(text)
        errors = timing_errors(spoken, whisper_words(whisper, spoken.audio))
        compared += len(errors)
        total += len(spoken.words)
        starts += [abs(start) for _, start, _ in errors]
        ends += [abs(end) for _, _, end in errors]
    assert compared >= 0.8 * total, "most words are found by both"
    median_start, median_end = statistics.median(starts), statistics.median(ends)
    print(
        f"\nword timing vs Whisper over {compared} words: start median {median_start:.0f} ms "
        f"(p90 {np.percentile(starts, 90):.0f}), end median {median_end:.0f} ms (p90 {np.percentile(ends, 90):.0f})"
    )
    assert median_start < MEDIAN_START_ERROR_MS
    assert median_end < MEDIAN_END_ERROR_MS


@pytest.mark.parametrize(
    "text, word, heard_as",
    [
        ("We moved there in 1998 and never looked back.", "1998", "1998"),
        ("The answer is 42 and nothing else.", "42", "42"),
        ("It costs $3.14 today, more or less.", "$3.14", "3.14"),
        ("Dr. Smith lives in the U.S. with his family.", "U.S.", "us"),
        ("About 1,000 people came to the show.", "1,000", "1000"),
    ],
)
def test_a_number_or_abbreviation_span_holds_exactly_that_word(
    tts: PiperTts, whisper: WhisperModel, text: str, word: str, heard_as: str
) -> None:
    """Cut the audio at the word's span: Whisper must hear that word alone, and the rest stays aligned."""
    spoken = tts.synthesize(text)
    timing = next(t for t in spoken.words if t.text == word)
    start, end = int(timing.start_ms * PROTOCOL_RATE / 1000), int(timing.end_ms * PROTOCOL_RATE / 1000)
    pad = np.zeros(PROTOCOL_RATE // 5, np.float32)
    alone = transcript(whisper, np.concatenate([pad, spoken.audio[start:end], pad]))
    assert key(alone) in (key(heard_as), "".join(normalise(heard_as))), alone
    errors = timing_errors(spoken, whisper_words(whisper, spoken.audio))
    names = [name for name, _, _ in errors]
    following = errors[names.index(word) + 1 :] if word in names else errors
    assert statistics.median(abs(start) for _, start, _ in following) < 150, errors


@pytest.mark.parametrize(
    "text",
    ["Hmm... ok?!", "1st 2nd 3rd", "A1B2C3", "CO2 and H2O", "12:30 or 3/4 or 50/50", "#1 C++ x²", "&",
     "I.B.M.", "ok ok ok ok", "Ünïcödé façade naïve café", "日本語 text", "Привет мир", "ℕ is nice"],
)
def test_odd_text_never_loses_a_word(tts: PiperTts, text: str) -> None:
    spoken = tts.synthesize(text)
    assert_timings_consistent(spoken)
    assert [word.text for word in spoken.words] == speakable(text).split(" ")
    assert len(spoken.audio) > 0


def test_markup_emoji_and_urls_are_not_spoken(tts: PiperTts, whisper: WhisperModel) -> None:
    spoken = tts.synthesize("**Great** job 🎉! Read the _docs_ at https://www.example.com/docs today.")
    assert spoken.text == "Great job! Read the docs at example dot com slash docs today."
    heard = transcript(whisper, spoken.audio).lower()
    for noise in ("asterisk", "star", "party", "popper", "underscore", "http", "www", "colon"):
        assert noise not in heard, heard
    assert "great job" in heard and "example" in heard


def test_streamed_reply_is_spoken_exactly_as_shown(tts: PiperTts, whisper: WhisperModel) -> None:
    reply = (
        "## Quick answer\n\nSure, here it is: **Paris** is the capital of France. "
        "It has about 2 million people — and many museums.\n\n- the river\n- the old gardens\n\nEnjoy 😀!"
    )
    splitter = PhraseSplitter()
    phrases = [phrase for char in reply for phrase in splitter.push(char)] + splitter.flush()
    spoken = [tts.synthesize(phrase) for phrase in phrases]
    assert [s.text for s in spoken] == phrases
    assert " ".join(word.text for s in spoken for word in s.words) == speakable(reply)
    heard = transcript(whisper, np.concatenate([s.audio for s in spoken]))
    rate = word_error_rate(normalise(speakable(reply)), normalise(heard))
    print(f"\nphrases {phrases}\nheard {heard!r} (WER {rate:.2f})")
    assert rate <= 0.15


def test_first_sound_latency_and_real_time_factor(tts: PiperTts) -> None:
    short = "Sure, I can help."
    latencies = []
    for _ in range(5):
        started = time.perf_counter()
        spoken = tts.synthesize(short)
        latencies.append((time.perf_counter() - started) * 1000)
    long = (
        "The committee reviewed every proposal carefully, and after a long discussion it decided "
        "to fund the three projects that promised the greatest benefit to the community."
    )
    started = time.perf_counter()
    long_spoken = tts.synthesize(long)
    rtf = (time.perf_counter() - started) / (long_spoken.duration_ms / 1000)
    lead = int(np.flatnonzero(np.abs(spoken.audio) > 0.003)[0]) * 1000 / PROTOCOL_RATE
    print(
        f"\nfirst chunk for {short!r}: median {statistics.median(latencies):.0f} ms "
        f"(min {min(latencies):.0f}, max {max(latencies):.0f}), audio {spoken.duration_ms:.0f} ms, "
        f"voice starts {lead:.1f} ms in; RTF {rtf:.3f} on {long_spoken.duration_ms / 1000:.1f} s"
    )
    assert min(latencies) < 1500 and rtf < 1.0  # loose: two shared cores
    assert lead < 15, "leading silence is trimmed"


def test_synthesize_is_thread_safe(tts: PiperTts) -> None:
    texts = ["Hi.", "This one is a little longer than that.", " ".join(SENTENCES[:3])]
    alone = {text: tts.synthesize(text).duration_ms for text in texts}
    results: dict[str, list[SpokenPhrase]] = {text: [] for text in texts}
    errors: list[BaseException] = []

    def speak(text: str) -> None:
        try:
            for _ in range(2):
                results[text].append(tts.synthesize(text))
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=speak, args=(text,)) for text in texts]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    for text, spoken in results.items():
        for phrase in spoken:
            assert phrase.text == text
            assert_timings_consistent(phrase)
            assert 0.7 < phrase.duration_ms / alone[text] < 1.4


def test_heard_text_is_the_words_played(tts: PiperTts) -> None:
    spoken = tts.synthesize("One two three four five.")
    assert spoken.heard_text(0) == ""
    assert spoken.heard_text(spoken.duration_ms) == spoken.text
    third = spoken.words[2]
    assert spoken.heard_text(third.end_ms) == "One two three"
    assert spoken.heard_text(third.start_ms) == "One two"


@pytest.mark.parametrize("text", ["", "   ", "😀🎉", "**", "```\ncode\n```"])
def test_nothing_to_say_is_silence_not_an_error(tts: PiperTts, text: str) -> None:
    spoken = tts.synthesize(text)
    assert spoken.text == "" and spoken.words == [] and len(spoken.audio) == 0


def test_speed_and_volume(voice_path: Path, tts: PiperTts) -> None:
    text = "The quick brown fox jumps over the lazy dog."
    slow = PiperTts(voice_path, 1, length_scale=1.5, volume=0.5)
    normal, slower = tts.synthesize(text), slow.synthesize(text)
    assert slower.duration_ms > 1.25 * normal.duration_ms
    loudness = np.sqrt(np.mean(slower.audio**2)) / np.sqrt(np.mean(normal.audio**2))
    assert 0.35 < loudness < 0.7
    assert_timings_consistent(slower)
