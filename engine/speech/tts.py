"""Piper text-to-speech: one phrase in, 24 kHz audio out, with the time span of every word.

Word timings come from the voice model itself: its duration predictor says how many samples each
phoneme gets (Piper's "alignments", exposed by marking one internal tensor as a model output). The
phonemes are then matched to the phrase's words, so the engine can tell exactly which words a listener
heard before an interruption.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import threading
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime
from piper import PiperVoice
from piper.config import PiperConfig, SynthesisConfig

from engine.audio.pcm import PROTOCOL_RATE, resample
from engine.models.store import default_cache_dir, sha256_of
from engine.runtime import inference_threads
from engine.speech.phrases import is_abbreviation, speakable

_LOG = logging.getLogger(__name__)

_BOS, _EOS = "^", "$"
_SILENCE = 10 ** (-50 / 20)  # below -50 dBFS the voice has not started yet
_ONSET_MARGIN_S = 0.002


@dataclass(frozen=True)
class WordTiming:
    """One word of a phrase and when it sounds, in ms from the start of the phrase's audio."""

    text: str
    start_ms: float
    end_ms: float


@dataclass(frozen=True)
class SpokenPhrase:
    """A synthesized phrase: `text` is exactly " ".join(word.text for word in words), in order."""

    text: str
    audio: np.ndarray = field(repr=False)  # float32 mono at PROTOCOL_RATE
    words: list[WordTiming]

    @property
    def duration_ms(self) -> float:
        return len(self.audio) * 1000 / PROTOCOL_RATE

    def heard_text(self, played_ms: float) -> str:
        """The words heard when playback stopped after `played_ms`: those at least half played."""
        return " ".join(
            word.text for word in self.words if (word.start_ms + word.end_ms) / 2 < played_ms
        )


class PiperTts:
    """A Piper voice. `synthesize` may be called from several threads at once."""

    rate = PROTOCOL_RATE

    def __init__(
        self,
        voice_path: str | Path,
        threads: int | None = None,
        *,
        length_scale: float | None = None,
        volume: float = 1.0,
        cache_dir: Path | None = None,
    ):
        """`threads`: onnxruntime intra-op threads (None: the process policy, `inference_threads()`).
        `length_scale` > 1 speaks slower (None: the voice's own pace); `volume` scales the raw output.
        """
        voice_path = Path(voice_path)
        config = PiperConfig.from_dict(
            json.loads(Path(f"{voice_path}.json").read_text(encoding="utf-8"))
        )
        model = model_with_alignments(voice_path, cache_dir or default_cache_dir())
        session = _session(model, threads if threads is not None else inference_threads())
        self._voice = PiperVoice(session=session, config=config)
        self._source_rate = config.sample_rate
        # Raw output, not Piper's per-sentence peak normalisation: that would make each phrase as
        # loud as its loudest sample, so loudness would jump from phrase to phrase.
        self._synthesis = SynthesisConfig(
            length_scale=length_scale, normalize_audio=False, volume=1.0
        )
        self._volume = volume
        self._word_phonemes = functools.lru_cache(maxsize=8192)(self._phonemes_of_word)

    def warm_up(self) -> None:
        """One tiny synthesis, so the first real reply does not pay for first-run allocations."""
        self.synthesize("Hi.")

    def synthesize(self, text: str, speed: float = 1.0) -> SpokenPhrase:
        """Speak `text` (made speakable first; `SpokenPhrase.text` is what was actually said).
        `speed` > 1 speaks faster (the Realtime session's `audio.output.speed`)."""
        text = speakable(text)
        words = text.split(" ") if text else []
        if not words:
            return SpokenPhrase("", np.zeros(0, np.float32), [])
        said = _espeak_forms(words)
        audio, phonemes = self._run_voice(" ".join(said), speed)
        onset = _voice_onset(audio, phonemes, self._source_rate)
        audio = audio[onset:]
        spans = _word_spans(phonemes, [self._word_phonemes(word) for word in said])
        audio = resample(audio, self._source_rate, PROTOCOL_RATE)
        audio = np.clip(audio * self._volume, -1.0, 1.0).astype(np.float32)
        to_ms = 1000 / self._source_rate
        end_limit = len(audio) * 1000 / PROTOCOL_RATE
        timings = [
            WordTiming(
                word,
                min(max(0.0, (start - onset) * to_ms), end_limit),
                min(max(0.0, (end - onset) * to_ms), end_limit),
            )
            for word, (start, end) in zip(words, spans)
        ]
        return SpokenPhrase(text, audio, timings)

    def _run_voice(self, text: str, speed: float = 1.0) -> tuple[np.ndarray, list[_Phoneme]]:
        """Source-rate audio of the whole text and its timeline of phonemes, sentence after sentence."""
        pieces: list[np.ndarray] = []
        timeline: list[_Phoneme] = []
        offset = 0.0
        synthesis = self._synthesis
        if speed != 1.0:
            pace = synthesis.length_scale or self._voice.config.length_scale
            synthesis = dataclasses.replace(synthesis, length_scale=pace / speed)
        for chunk in self._voice.synthesize(text, synthesis, include_alignments=True):
            symbols = [_BOS, *chunk.phonemes, _EOS]
            samples = len(chunk.audio_float_array)
            if chunk.phoneme_alignments and len(chunk.phoneme_alignments) == len(symbols):
                counts = [float(a.num_samples) for a in chunk.phoneme_alignments]
            else:
                # No alignment from the model: spread the sentence evenly over its phonemes.
                counts = [samples / len(symbols)] * len(symbols)
            position = offset
            for symbol, count in zip(symbols, counts):
                timeline.append(_Phoneme(symbol, position, position + count))
                position += count
            timeline.append(_Phoneme(" ", position, position))  # sentences never share a word group
            pieces.append(chunk.audio_float_array)
            offset += samples
        audio = np.concatenate(pieces) if pieces else np.zeros(0, np.float32)
        return audio.astype(np.float32, copy=False), timeline

    def _phonemes_of_word(self, word: str) -> tuple[str, ...]:
        """The word's phonemes said on its own: what to look for in the phrase's phonemes."""
        return tuple(
            symbol
            for sentence in self._voice.phonemize(word)
            for symbol in sentence
            if not _is_pause(symbol)
        )


@dataclass(frozen=True)
class _Phoneme:
    symbol: str
    start: float  # in source-rate samples from the start of the phrase
    end: float


def model_with_alignments(voice_path: Path, cache_dir: Path) -> str | bytes:
    """The voice model with its phoneme durations exposed: a cached patched copy, made on first use.

    Patching means onnx.load + re-serialising the 63 MB model (~0.6 s); a copy keyed by the source's
    SHA-256 makes later loads a plain file open. Falls back to patching in memory if the cache is
    not writable.
    """
    cached = cache_dir / "piper-aligned" / f"{sha256_of(voice_path)}.onnx"
    if cached.is_file():
        return str(cached)
    import onnx  # only needed to patch, and slow to import
    from piper.patch_voice_with_alignment import add_alignment_output

    model = onnx.load(str(voice_path))
    try:
        add_alignment_output(model)
    except ValueError:
        return str(voice_path)  # already exposes the durations
    data = model.SerializeToString()
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        partial = cached.with_name(f"{cached.name}.{os.getpid()}.{threading.get_ident()}.partial")
        partial.write_bytes(data)
        os.replace(partial, cached)  # atomic: a concurrent loader sees the whole file or none
    except OSError as error:
        _LOG.warning("cannot cache the aligned voice model in %s: %s", cached.parent, error)
    return data


def _session(model: str | bytes, threads: int) -> onnxruntime.InferenceSession:
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = max(1, threads)
    options.inter_op_num_threads = 1
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    # Idle pool threads must sleep, not spin: the language model decodes on the other core.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    # Every phrase has its own length, and ONNX Runtime keeps a memory plan per input shape it has seen:
    # the soak found the engine growing by tens of MB over an hour of replies. Synthesising 40 phrases six
    # times over: with plans 417 → 462 MB (+42 MB on a repeat of shapes already seen), without them flat at
    # 373 MB.
    options.enable_mem_pattern = False
    return onnxruntime.InferenceSession(model, sess_options=options, providers=["CPUExecutionProvider"])


def _espeak_forms(words: list[str]) -> list[str]:
    """Words as handed to espeak. An abbreviation's final "." would make espeak end a sentence there
    ("Dr. Smith" said as two sentences), so it is dropped inside the phrase; the words shown keep it.
    """
    last = len(words) - 1
    return [
        word[:-1] if index < last and word.endswith(".") and is_abbreviation(word) else word
        for index, word in enumerate(words)
    ]


def _is_pause(symbol: str) -> bool:
    return symbol in (_BOS, _EOS) or all(
        char.isspace() or unicodedata.category(char).startswith("P") for char in symbol
    )


def _voice_onset(audio: np.ndarray, timeline: list[_Phoneme], rate: int) -> int:
    """Silent samples before the voice starts (within the leading pause): they only delay the sound."""
    if not timeline or not len(audio):
        return 0
    lead = int(timeline[0].end)
    loud = np.flatnonzero(np.abs(audio[:lead]) > _SILENCE)
    first = int(loud[0]) if loud.size else lead
    return max(0, first - int(_ONSET_MARGIN_S * rate))


def _word_spans(
    timeline: list[_Phoneme], word_phonemes: list[tuple[str, ...]]
) -> list[tuple[float, float]]:
    """(start, end) in samples for each word, from the phrase's phoneme timeline.

    espeak phonemizes in context, so its phonemes do not split cleanly into the written words (it
    fuses "in the", spells "42" as two words, reads "U.S." as letters). Each word's own phonemes are
    aligned to the phrase's by edit distance; the word spans the phonemes matched to it. Pauses
    (spaces, punctuation, the start and end) belong to no word.
    """
    spoken = [p for p in timeline if not _is_pause(p.symbol)]
    groups = _groups(timeline)
    owner = _owners([p.symbol for p in spoken], word_phonemes)
    owner = _fill_unowned(owner, groups, len(word_phonemes))
    spans: list[tuple[float, float] | None] = [None] * len(word_phonemes)
    for phoneme, word in zip(spoken, owner):
        if word < 0:
            continue
        span = spans[word]
        spans[word] = (phoneme.start, phoneme.end) if span is None else (span[0], phoneme.end)
    # A word with no sound of its own (say, a lone symbol) gets an empty span where it stands.
    result: list[tuple[float, float]] = []
    for index, span in enumerate(spans):
        if span is None:
            later = next((s[0] for s in spans[index + 1 :] if s is not None), None)
            at = result[-1][1] if result else (later if later is not None else 0.0)
            span = (at, at)
        result.append(span)
    return result


def _groups(timeline: list[_Phoneme]) -> list[int]:
    """For each spoken phoneme, the number of the espeak word it belongs to (pauses separate them)."""
    groups, group = [], 0
    for phoneme in timeline:
        if _is_pause(phoneme.symbol):
            group += 1
        else:
            groups.append(group)
    return groups


def _owners(spoken: list[str], word_phonemes: list[tuple[str, ...]]) -> list[int]:
    """Index of the word each spoken phoneme is aligned to, -1 where it matches none."""
    expected = [symbol for phonemes in word_phonemes for symbol in phonemes]
    expected_word = [index for index, phonemes in enumerate(word_phonemes) for _ in phonemes]
    codes: dict[str, int] = {}
    a = np.array([codes.setdefault(s, len(codes)) for s in spoken], np.int32)
    b = np.array([codes.setdefault(s, len(codes)) for s in expected], np.int32)
    return [expected_word[j] if j >= 0 else -1 for j in _edit_alignment(a, b)]


def _edit_alignment(a: np.ndarray, b: np.ndarray) -> list[int]:
    """For each item of `a`, the index of the `b` item it is aligned to (-1: none), by Levenshtein.

    Rows are computed with numpy: the in-row insertion chain is a running minimum of (cost - j) + j.
    """
    n, m = len(a), len(b)
    if n == 0 or m == 0:
        return [-1] * n
    steps = np.arange(m + 1, dtype=np.int32)
    cost = np.empty((n + 1, m + 1), np.int32)
    cost[0] = steps
    for i in range(1, n + 1):
        previous = cost[i - 1]
        row = np.empty(m + 1, np.int32)
        row[0] = i
        np.minimum(previous[:-1] + (b != a[i - 1]), previous[1:] + 1, out=row[1:])
        cost[i] = np.minimum.accumulate(row - steps) + steps
    matched = [-1] * n
    i, j = n, m
    while i > 0 and j > 0:
        if cost[i, j] == cost[i - 1, j - 1] + (a[i - 1] != b[j - 1]):
            i, j = i - 1, j - 1
            matched[i] = j
        elif cost[i, j] == cost[i - 1, j] + 1:
            i -= 1
        else:
            j -= 1
    return matched


def _fill_unowned(owner: list[int], groups: list[int], word_count: int) -> list[int]:
    """Give every spoken phoneme a word, keeping the order of words.

    An unmatched phoneme joins a matched neighbour in its espeak word (the previous one first); an
    espeak word with no match at all goes to the next word that has no phonemes yet, else to the
    previous word.
    """
    owner = list(owner)
    by_group: dict[int, list[int]] = {}
    for index, group in enumerate(groups):
        by_group.setdefault(group, []).append(index)
    previous_word = -1
    for members in by_group.values():
        matched = [owner[i] for i in members if owner[i] >= 0]
        if matched:
            current = -1
            for i in members:
                if owner[i] >= 0:
                    current = owner[i]
                owner[i] = current if current >= 0 else matched[0]
            previous_word = owner[members[-1]]
            continue
        later = (owner[i] for i in range(members[-1] + 1, len(owner)) if owner[i] >= 0)
        following = next(later, word_count)
        word = previous_word + 1 if previous_word + 1 < following else max(previous_word, 0)
        word = min(word, word_count - 1)
        for i in members:
            owner[i] = word
        previous_word = word
    return owner
