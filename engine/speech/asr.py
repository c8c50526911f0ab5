"""Speech to text with Whisper on CTranslate2, sized for short conversational turns.

Whisper is trained on 30 s windows and faster-whisper always pads to 30 s, so every call pays
~600 ms of encoder time on one core however short the speech. CTranslate2's encoder also takes
shorter windows, so the speech gets only a little silence around it instead: a sixth of the cost
for a 1-3 s turn, a third for 6 s, and on the test voices *fewer* errors than the 30 s window. The
price is that the decoder, no longer seeing long silence after the speech, sometimes fails to stop
and says the utterance again; `cut_loop` removes such repeats and a token budget bounds their cost.

`UtteranceTranscriber` re-transcribes one utterance while it is being spoken, so that when the
turn ends its transcript is usually there already.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path

import ctranslate2
import numpy as np
import soxr
import tokenizers

from engine.audio.pcm import PROTOCOL_RATE, resample
from engine.runtime import inference_threads
from engine.turns.vad import FRAME_SAMPLES, SileroVadModel

log = logging.getLogger(__name__)

SAMPLE_RATE = 16_000
N_FFT = 400
HOP = 160  # samples per mel frame
FULL_WINDOW_FRAMES = 3000  # Whisper's 30 s window
# Audio longer than this is cut into windows at the quietest moment near each window's end.
MAX_WINDOW_S = 28.0
# Silence put around the speech. Measured over 6 voices x 20 sentences: 0.3 s before and 1.0 s after
# gave 3.0% WER (the 30 s window: 8.6%); nothing before, 12%; 0.5 s after, 5.4%; 2 s after, 2.9%.
LEAD_PADDING_S = 0.3
TAIL_PADDING_S = 1.0
# Decoding budget: conversational speech runs 2-4 tokens/s. A decoder still going at 5 tokens/s
# is looping (cut) or a fast talker (continued up to the hard limit).
EXPECTED_TOKENS_PER_S = 5.0
MAX_TOKENS_PER_S = 10.0
BUDGET_SLACK_TOKENS = 8
# faster-whisper's defaults for "this window held no speech".
NO_SPEECH_THRESHOLD = 0.6
LOG_PROB_THRESHOLD = -1.0
# A frame this likely to be speech counts as speech for gating and trimming (Silero's default).
SPEECH_THRESHOLD = 0.5


class WhisperAsr:
    """Whisper (CTranslate2) transcription of whole 16 kHz utterances; thread-safe.

    With a `vad`, audio in which no 32 ms frame sounds like speech is "" without running Whisper,
    which otherwise hears words in clicks. `full_window` pads every window to 30 s as
    faster-whisper does: the slow reference the short windows are measured against.
    """

    def __init__(self, model_dir: str | Path, threads: int | None = None, *,
                 vad: SileroVadModel | None = None, compute_type: str = "int8",
                 full_window: bool = False, language: str = "en"):
        self.model_dir = model_dir = Path(model_dir)
        self.threads = threads or inference_threads()
        self.vad = vad
        self._model = ctranslate2.models.Whisper(
            str(model_dir), device="cpu", compute_type=compute_type,
            intra_threads=self.threads, inter_threads=1,
        )
        self._features = LogMelSpectrogram(self._model.n_mels)
        self._tokenizer = tokenizers.Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        token = self._tokenizer.token_to_id
        self._end_of_text = token("<|endoftext|>")
        self._prompt = [token("<|startoftranscript|>")]
        if self._model.is_multilingual:
            self._prompt += [token(f"<|{language}|>"), token("<|transcribe|>")]
        self._prompt.append(token("<|notimestamps|>"))
        self._full_window = full_window
        self._lock = threading.Lock()

    def warm_up(self) -> None:
        """Run the model once (on silence, past the VAD gate) so the first turn pays no setup."""
        self.transcribe(np.zeros(SAMPLE_RATE, np.float32), check_speech=False)

    def transcribe(self, audio: np.ndarray, should_stop: Callable[[], bool] | None = None, *,
                   check_speech: bool = True) -> str | None:
        """Text of 16 kHz float32 mono speech, "" when there is none.

        Returns None when `should_stop` answers True; it is asked between the steps of the work
        (before each encoder and decoder run), the points where work can be dropped.
        `check_speech=False` skips the VAD gate for callers that have run the VAD already.
        """
        audio = np.asarray(audio, dtype=np.float32)
        if check_speech and self.vad is not None and not has_speech(self.vad, audio):
            return ""
        texts = []
        with self._lock:
            for window in _windows(audio, int(MAX_WINDOW_S * SAMPLE_RATE)):
                text = self._transcribe_window(window, should_stop)
                if text is None:
                    return None
                texts.append(text)
        return " ".join(text for text in texts if text)

    def _transcribe_window(self, audio: np.ndarray, should_stop: Callable[[], bool] | None) -> str | None:
        if len(audio) < HOP:
            return ""
        if self._full_window:
            padded = np.zeros(FULL_WINDOW_FRAMES * HOP, np.float32)
            padded[: len(audio)] = audio
        else:
            lead, tail = int(LEAD_PADDING_S * SAMPLE_RATE), int(TAIL_PADDING_S * SAMPLE_RATE)
            padded = np.zeros(lead + len(audio) + tail, np.float32)
            padded[lead : lead + len(audio)] = audio
        features = self._features(padded)
        frames = min(FULL_WINDOW_FRAMES, features.shape[1] & ~1)  # the encoder halves the frames
        window = np.ascontiguousarray(features[None, :, :frames])
        if should_stop and should_stop():
            return None
        encoded = self._model.encode(ctranslate2.StorageView.from_array(window), to_cpu=False)
        if should_stop and should_stop():
            return None
        return self._decode(encoded, len(audio) / SAMPLE_RATE)

    def _decode(self, encoded: ctranslate2.StorageView, seconds: float) -> str:
        expected = int(seconds * EXPECTED_TOKENS_PER_S) + BUDGET_SLACK_TOKENS
        limit = int(seconds * MAX_TOKENS_PER_S) + BUDGET_SLACK_TOKENS
        first = self._generate(encoded, [], expected, first_pass=True)
        if first is None:
            return ""
        tokens, finished = first
        text = self._tokenizer.decode(tokens).strip()
        if not finished and cut_loop(text, truncated=True) == text:
            # A fast talker, not a loop: go on from here (the prefix costs one batched step).
            tokens, finished = self._generate(encoded, tokens, limit - len(tokens), first_pass=False)
            text = self._tokenizer.decode(tokens).strip()
        return cut_loop(text, truncated=not finished)

    def _generate(self, encoded: ctranslate2.StorageView, prefix: list[int], budget: int,
                  first_pass: bool) -> tuple[list[int], bool] | None:
        """Greedy tokens (`prefix` included) and whether the model ended them itself; None when
        the first pass finds no speech."""
        result = self._model.generate(
            encoded, [self._prompt + prefix], beam_size=1,
            # CTranslate2 4.x returns at most max_length / 2 tokens, prefix included (measured).
            max_length=min(448, 2 * (len(prefix) + budget)),
            return_scores=first_pass, return_no_speech_prob=first_pass,
        )[0]
        tokens = [t for t in result.sequences_ids[0] if t < self._end_of_text]
        if first_pass and result.no_speech_prob > NO_SPEECH_THRESHOLD:
            if not tokens or result.scores[0] < LOG_PROB_THRESHOLD:  # score: mean log-prob
                return None
        return tokens, len(tokens) < len(prefix) + budget


class LogMelSpectrogram:
    """Whisper's log-mel features, equal to faster-whisper's, without a BLAS call.

    NumPy's matrix product goes to OpenBLAS, which starts a thread per core and spins: on a busy
    2-core machine the 80 x 201 mel product took 8-16 ms instead of 0.3 ms. Each mel filter spans a
    few FFT bins (391 weights in all), so a gathered, weighted sum does the same work in plain NumPy.
    """

    def __init__(self, n_mels: int):
        filters = mel_filters(n_mels).astype(np.float32)
        rows, self._bins = np.nonzero(filters)  # row-major: each filter's bins together, in order
        self._weights = filters[rows, self._bins][:, None]
        self._starts = np.flatnonzero(np.r_[True, rows[1:] != rows[:-1]])
        if len(self._starts) != n_mels:
            raise ValueError(f"{n_mels} mel filters over {N_FFT // 2 + 1} FFT bins leave some filter empty")
        self._window = np.hanning(N_FFT + 1)[:-1].astype(np.float32)

    def __call__(self, audio: np.ndarray) -> np.ndarray:
        """[n_mels, len(audio) // HOP] features of 16 kHz audio."""
        padded = np.pad(audio, N_FFT // 2, mode="reflect")
        frames = np.lib.stride_tricks.sliding_window_view(padded, N_FFT)[::HOP][:-1]
        spectrum = np.fft.rfft(frames * self._window, axis=-1)
        power = np.ascontiguousarray((spectrum.real**2 + spectrum.imag**2).T)
        mel = np.add.reduceat(power[self._bins] * self._weights, self._starts, axis=0)
        log_mel = np.log10(np.maximum(mel, 1e-10))
        return (np.maximum(log_mel, log_mel.max() - 8.0) + 4.0) / 4.0


def mel_filters(n_mels: int) -> np.ndarray:
    """[n_mels, N_FFT // 2 + 1] Slaney mel filters from 0 to 8 kHz, as Whisper (and faster-whisper) use.

    Computed here rather than imported from faster_whisper, whose package import also loads PyAV (FFmpeg,
    ~100 MB in the installers' bundle) and huggingface_hub, neither of which the engine uses.
    """
    fft_freqs = np.fft.rfftfreq(n=N_FFT, d=1.0 / SAMPLE_RATE)
    linear_step, log_start_hz = 200.0 / 3, 1000.0  # Hz per mel below log_start_hz; above it, log-spaced
    log_start_mel, log_step = log_start_hz / linear_step, np.log(6.4) / 27.0
    max_mel = log_start_mel + np.log(SAMPLE_RATE / 2 / log_start_hz) / log_step
    mels = np.linspace(0.0, max_mel, n_mels + 2)
    freqs = np.where(mels < log_start_mel, linear_step * mels,
                     log_start_hz * np.exp(log_step * (mels - log_start_mel)))
    ramps = freqs[:, None] - fft_freqs[None, :]
    widths = np.diff(freqs)
    lower = -ramps[:-2] / widths[:-1, None]
    upper = ramps[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    return weights * (2.0 / (freqs[2:] - freqs[:-2]))[:, None]  # about constant energy per filter


def has_speech(vad: SileroVadModel, audio: np.ndarray) -> bool:
    """Whether any 32 ms frame of 16 kHz audio sounds like speech."""
    stream = vad.stream()
    for start in range(0, len(audio) - FRAME_SAMPLES + 1, FRAME_SAMPLES):
        if stream.probability(audio[start : start + FRAME_SAMPLES]) >= SPEECH_THRESHOLD:
            return True
    return False


_WORD = re.compile(r"\S+")


def cut_loop(text: str, truncated: bool) -> str:
    """`text` without the decoder loop at its end, if it has one.

    A decoder that does not stop says the utterance again ("A B C. A B C. A B") or repeats its
    last words ("... eggs. Eggs. Eggs."): from some word on, the text only repeats the stretch
    just before that word, to the very end. That tail is cut when it is a full repeat (or four
    words) long, or at any length when the decoder ran out of budget (`truncated`). A doubled
    word counts only when it is all there is ("Stop stop"), so "Bora Bora" survives.
    """
    spans = [(m.start(), re.sub(r"[^\w']", "", m.group().lower())) for m in _WORD.finditer(text)]
    spans = [(start, word) for start, word in spans if word]
    words = [word for _, word in spans]
    for cut in range(1, len(words)):
        tail = len(words) - cut
        for period in range(1, cut + 1):
            if not _repeats(words, cut, period):
                continue
            if truncated or (tail >= min(period, 4) and (period > 1 or cut == 1 or tail >= 2)):
                return text[: spans[cut][0]].rstrip(" ,;:-")
    return text


def _repeats(words: list[str], cut: int, period: int) -> bool:
    """Whether words[cut:] repeats the `period` words before it, the last one possibly cut short."""
    last = len(words) - 1
    if any(words[k] != words[k - period] for k in range(cut, last)):
        return False
    return words[last - period].startswith(words[last])


def _windows(audio: np.ndarray, max_samples: int) -> list[np.ndarray]:
    """Split audio longer than one window at the quietest 100 ms in each window's last quarter."""
    windows = []
    block = SAMPLE_RATE // 10
    while len(audio) > max_samples:
        search_from = max_samples * 3 // 4
        tail = audio[search_from:max_samples]
        energy = np.square(tail[: len(tail) - len(tail) % block]).reshape(-1, block).sum(axis=1)
        cut = search_from + int(np.argmin(energy)) * block + block // 2
        windows.append(audio[:cut])
        audio = audio[cut:]
    windows.append(audio)
    return windows


class UtteranceTranscriber:
    """Transcribes one utterance while it is spoken, so its end finds little work left.

    `feed` only queues audio (safe to call from the network loop). A worker thread runs the VAD
    over it and, while the speaker is audibly talking, re-transcribes the speech so far at most
    every `partial_interval_s` (and at most half the time), calling `on_partial(text)` from that
    thread when the text changes. Once the speech has been followed by `TAIL_MARGIN_S` of silence
    it transcribes at once: that pass is the final transcript unless the speaker goes on, and it
    is done inside the turn detector's silence window, so `transcript()` at the end of the turn
    usually returns at once. The answer outranks partial work: a partial pass that will not be it
    is dropped at its next step once a `transcript()` waits or the speech has paused.

    Every pass covers the speech from `LEAD_MARGIN_S` before the first voiced frame to
    `TAIL_MARGIN_S` after the last one, so silence fed after the speech changes nothing. Without a
    VAD (none given and none on `asr`) every pass covers all the audio and none runs at pauses.
    """

    # Silero flags an unvoiced onset ("p" of "please") up to ~90 ms late and keeps flagging 30-80 ms
    # past the end. Over 6 voices x 20 sentences with a -60 dB noise floor: 0.1 s margins gave 4.7%
    # WER, 0.15 s 6.7% (more real noise next to the padding silence), 0.05 s after the speech 6.1%.
    LEAD_MARGIN_S = 0.1
    TAIL_MARGIN_S = 0.1
    # Extent threshold: Silero's hysteresis low mark, so fading word endings stay in.
    EXTENT_THRESHOLD = SPEECH_THRESHOLD - 0.15
    # No partial pass over less speech than this: on a fragment Whisper guesses a word ("Re-" came out
    # as "Right" in a CI run) that the live transcript would show and then take back.
    MIN_PARTIAL_SPAN_S = 0.8

    def __init__(self, asr: WhisperAsr, *, vad: SileroVadModel | None = None,
                 on_partial: Callable[[str], None] | None = None,
                 partial_interval_s: float = 0.5, input_rate: int = PROTOCOL_RATE):
        self._asr = asr
        self._on_partial = on_partial
        self._interval = partial_interval_s
        self._rate = input_rate
        vad = vad or asr.vad
        self._vad = vad.stream() if vad is not None else None
        # QQ: the VAD needs no anti-aliasing and QQ holds no audio back (see turns.detector).
        self._vad_resampler = soxr.ResampleStream(input_rate, SAMPLE_RATE, 1, dtype="float32", quality="QQ")
        self._vad_pending = np.zeros(0, np.float32)
        self._vad_frames = 0
        self._first_voiced: int | None = None  # VAD frame indexes
        self._last_extent: int | None = None
        self._talking = True  # the latest VAD frame is speech (always, without a VAD)

        self._audio = np.zeros(input_rate * 10, np.float32)  # grows by doubling
        self._length = 0

        self._cond = threading.Condition()
        self._queued: list[np.ndarray] = []  # fed, not yet taken by the worker
        self._fed = 0  # chunks fed
        self._processed = 0  # chunks in the buffer and through the VAD
        self._final_wanted = 0  # transcript() calls waiting
        self._closed = False
        self._error: BaseException | None = None
        self._result: tuple[tuple[int, int], str] | None = None  # (span, text) of the last pass
        self._span_now: tuple[int, int] | None = None  # what a pass would cover now; None: no speech
        self._reported = ""
        self._last_pass_start = -1e9
        self._last_pass_end = -1e9
        self._last_pass_cost = 0.0

        self._worker = threading.Thread(target=self._run, name="utterance-asr", daemon=True)
        self._worker.start()

    # --- called from any thread ---------------------------------------------------------------

    def feed(self, audio: np.ndarray) -> None:
        """Queue audio at the input rate; returns at once."""
        with self._cond:
            if self._closed:
                raise RuntimeError("the transcriber is closed")
            self._queued.append(np.array(audio, dtype=np.float32))
            self._fed += 1
            self._cond.notify_all()

    def transcript(self) -> str:
        """The transcript of all audio fed so far; blocks until it is known."""
        with self._cond:
            fed = self._fed
            self._raise_if_failed()
            if (text := self._ready_transcript(fed)) is not None:
                return text  # nothing new since the last pass
            self._final_wanted += 1
            self._cond.notify_all()
            try:
                while (text := self._ready_transcript(fed)) is None:
                    if self._closed:
                        raise RuntimeError("the transcriber was closed")
                    self._cond.wait()
                    self._raise_if_failed()
                return text
            finally:
                self._final_wanted -= 1

    def close(self, wait: bool = False) -> None:
        """Stop the worker; a pass in progress is dropped at its next step. Returns at once, so the
        network loop can call it, unless `wait` asks to wait for the worker to end."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if wait and threading.current_thread() is not self._worker:
            self._worker.join()

    def _ready_transcript(self, fed: int) -> str | None:
        """The transcript covering the first `fed` chunks, if known (call with the lock held)."""
        if self._processed < fed:
            return None
        if self._span_now is None:
            return ""
        if self._result is not None and self._result[0] == self._span_now:
            return self._result[1]
        return None

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise RuntimeError("transcription failed") from self._error

    # --- worker thread ------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while True:
                with self._cond:
                    while not self._closed and not self._queued and not self._work_due():
                        self._cond.wait(self._wait_time())
                    if self._closed:
                        return
                self._take_queued()
                with self._cond:
                    span, final = self._span_now, self._final_wanted > 0
                    if span is None or (self._result is not None and self._result[0] == span):
                        self._cond.notify_all()  # a transcript() may be waiting on this
                        continue
                    due = final or self._pass_due(span)
                if due:
                    self._transcribe(span, final)
        except BaseException as error:  # surfaced by transcript()
            with self._cond:
                self._error = error
                self._cond.notify_all()

    def _take_queued(self) -> None:
        """Move queued audio into the buffer and run the VAD over it."""
        with self._cond:
            chunks, self._queued = self._queued, []
            taken = self._fed
        for chunk in chunks:
            self._append(chunk)
        with self._cond:
            self._span_now = self._span()
            self._processed = taken

    def _append(self, chunk: np.ndarray) -> None:
        if self._length + len(chunk) > len(self._audio):
            grown = np.zeros(max(2 * len(self._audio), self._length + len(chunk)), np.float32)
            grown[: self._length] = self._audio[: self._length]
            self._audio = grown
        self._audio[self._length : self._length + len(chunk)] = chunk
        self._length += len(chunk)
        if self._vad is None:
            return
        samples = np.concatenate((self._vad_pending, self._vad_resampler.resample_chunk(chunk)))
        whole = len(samples) - len(samples) % FRAME_SAMPLES
        for start in range(0, whole, FRAME_SAMPLES):
            probability = self._vad.probability(samples[start : start + FRAME_SAMPLES])
            self._talking = probability >= SPEECH_THRESHOLD
            if self._talking and self._first_voiced is None:
                self._first_voiced = self._vad_frames
            if probability >= self.EXTENT_THRESHOLD and self._first_voiced is not None:
                self._last_extent = self._vad_frames
            self._vad_frames += 1
        self._vad_pending = samples[whole:]

    def _span(self) -> tuple[int, int] | None:
        """Input-rate sample range a pass should cover now; None while there is no speech."""
        if self._vad is None:
            return (0, self._length) if self._length else None
        if self._first_voiced is None:
            return None
        frame = FRAME_SAMPLES * self._rate / SAMPLE_RATE
        start = max(0, int(self._first_voiced * frame - self.LEAD_MARGIN_S * self._rate))
        end = min(self._length, int((self._last_extent + 1) * frame + self.TAIL_MARGIN_S * self._rate))
        return start, end

    def _speech_ended(self, span: tuple[int, int]) -> bool:
        """Whether the tail margin after the last speech has been fed (the span stops growing)."""
        return self._vad is not None and span[1] < self._length

    def _pass_due(self, span: tuple[int, int]) -> bool:
        if self._speech_ended(span):
            return True  # likely the final transcript: do it now
        # Partial passes only while the speaker is audibly talking: one started as the speech fades
        # would still hold the model when the pass that matters, at the pause, wants it.
        return self._partial_possible(span) and time.monotonic() >= self._partial_due_at()

    def _partial_possible(self, span: tuple[int, int]) -> bool:
        return self._talking and span[1] - span[0] >= self.MIN_PARTIAL_SPAN_S * self._rate

    def _partial_due_at(self) -> float:
        """Every `partial_interval_s` at most, and idle at least as long as the last pass took."""
        return max(self._last_pass_start + self._interval, self._last_pass_end + self._last_pass_cost)

    def _work_due(self) -> bool:
        span = self._span_now
        if span is None or (self._result is not None and self._result[0] == span):
            return False
        return self._final_wanted > 0 or self._pass_due(span)

    def _wait_time(self) -> float | None:
        span = self._span_now
        if span is None or (self._result is not None and self._result[0] == span) \
                or not self._partial_possible(span):
            return None  # nothing to do until audio or a request comes
        return max(0.0, self._partial_due_at() - time.monotonic())

    def _transcribe(self, span: tuple[int, int], final: bool) -> None:
        started = time.monotonic()
        audio = resample(self._audio[span[0] : span[1]], self._rate, SAMPLE_RATE)

        def should_stop() -> bool:
            # Drop partial work that will not be the answer once the answer is wanted: when a
            # transcript() waits, or when the speech has paused (that pass is likely the final one).
            with self._cond:
                if self._closed:
                    return True
                if final:
                    return False
            self._take_queued()
            with self._cond:
                wanted = self._final_wanted > 0 or self._speech_ended(self._span_now)
                return wanted and self._span_now != span

        text = self._asr.transcribe(audio, should_stop, check_speech=False)
        finished = time.monotonic()
        with self._cond:
            self._last_pass_start, self._last_pass_end = started, finished
            self._last_pass_cost = finished - started
            if text is not None:
                self._result = (span, text)
            self._cond.notify_all()
        if text and text != self._reported and self._on_partial is not None:
            self._reported = text
            try:
                self._on_partial(text)
            except Exception:  # the listener's bug must not stop the transcription
                log.exception("on_partial failed")
