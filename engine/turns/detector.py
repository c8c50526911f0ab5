"""Server-side turn detection with the OpenAI Realtime `server_vad` semantics, plus a tentative end.

Audio comes in at the protocol rate in chunks of any size; it is resampled to 16 kHz and cut into
32 ms Silero frames. Every time is in ms on the timeline of all audio fed since creation or reset.

Beyond the Realtime events (speech started / stopped) the detector says when speech *seems* to
have ended (`SpeechPaused`) and when that guess was wrong (`SpeechResumed`), so the engine can
start transcribing and answering during the silence window instead of after it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import numpy as np
import soxr

from engine.audio.pcm import PROTOCOL_RATE
from engine.turns.vad import FRAME_MS, FRAME_SAMPLES, SAMPLE_RATE, SileroVadModel

# Silero's own hysteresis: once speech is on, it stays on down to threshold - 0.15.
HYSTERESIS = 0.15
# soxr QQ (cubic, no anti-alias filter) holds back no audio where LQ holds back ~5 ms and HQ ~20 ms.
# On the test voices SpeechPaused came 16 ms sooner than with LQ and 25 ms sooner than with HQ, with
# the same onsets and no extra false pauses in white noise at 10-20 dB SNR: the VAD needs no hi-fi.
RESAMPLER_QUALITY = "QQ"


@dataclass(frozen=True)
class ServerVadSettings:
    threshold: float = 0.5
    prefix_padding_ms: int = 300
    # The longest silence the VAD heard inside one sentence (commas, colons, a full stop between
    # two sentences; 6 test voices x 5 sentences) was 320 ms (Piper). 384 ms clears it by two
    # frames and is a whole number of 32 ms frames. OpenAI's 500 ms default would cost 116 ms more
    # on every turn; a longer pause is caught by SpeechPaused/SpeechResumed anyway.
    silence_duration_ms: int = 384
    # Frames at or above the threshold needed before a turn starts. Clicks, knocks and breaths never
    # reach the threshold at all; 40 ms vocal fragments reach it for up to 96 ms, real words
    # ("No.", "Hi.") for 250 ms and more.
    min_speech_ms: int = 128

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"threshold must be in (0, 1), got {self.threshold}")
        for name in ("prefix_padding_ms", "silence_duration_ms", "min_speech_ms"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")


@dataclass(frozen=True)
class SpeechStarted:
    audio_start_ms: int  # speech onset minus the prefix padding, floored at 0


@dataclass(frozen=True)
class SpeechPaused:
    speech_end_ms: int  # tentative end of speech: the turn may be over


@dataclass(frozen=True)
class SpeechResumed:
    pass  # the pause was not the end: drop whatever was started on SpeechPaused


@dataclass(frozen=True)
class SpeechStopped:
    audio_end_ms: int  # end of the silence window that ended the turn (Realtime semantics)
    speech_end_ms: int  # where the speech itself ended


TurnEvent = SpeechStarted | SpeechPaused | SpeechResumed | SpeechStopped


class _Phase(enum.Enum):
    SILENT = "silent"
    ONSET = "onset"  # voiced, but not yet long enough to be speech
    SPEAKING = "speaking"
    PAUSED = "paused"  # silent, but not yet for the whole silence window


class TurnDetector:
    """Feed protocol-rate audio, get turn events. Not thread-safe: one caller (the network loop).

    `settings` may be replaced at any moment; the next 32 ms frame follows the new ones.
    """

    def __init__(self, vad_model: SileroVadModel, settings: ServerVadSettings | None = None,
                 input_rate: int = PROTOCOL_RATE):
        self.settings = settings or ServerVadSettings()
        self._input_rate = input_rate
        self._vad = vad_model.stream()
        self.reset()

    def reset(self) -> None:
        """Forget all audio and any turn in progress; the timeline restarts at 0."""
        self._resampler = soxr.ResampleStream(
            self._input_rate, SAMPLE_RATE, 1, dtype="float32", quality=RESAMPLER_QUALITY
        )
        self._vad.reset()
        self._pending = np.zeros(0, np.float32)
        self._frames = 0
        self._fed_samples = 0
        self._phase = _Phase.SILENT
        self._onset_ms = 0.0
        self._voiced_ms = 0.0
        self._speech_end_ms = 0.0

    @property
    def fed_ms(self) -> float:
        """How much audio has been fed since creation or reset."""
        return self._fed_samples * 1000 / self._input_rate

    @property
    def in_turn(self) -> bool:
        """Whether a turn has started and not yet stopped."""
        return self._phase in (_Phase.SPEAKING, _Phase.PAUSED)

    def feed(self, audio: np.ndarray) -> list[TurnEvent]:
        self._fed_samples += len(audio)
        resampled = self._resampler.resample_chunk(np.asarray(audio, dtype=np.float32))
        samples = np.concatenate((self._pending, resampled)) if len(self._pending) else resampled
        whole = len(samples) - len(samples) % FRAME_SAMPLES
        events: list[TurnEvent] = []
        for start in range(0, whole, FRAME_SAMPLES):
            self._step(self._vad.probability(samples[start : start + FRAME_SAMPLES]), events)
        self._pending = samples[whole:].copy()
        return events

    def _step(self, probability: float, events: list[TurnEvent]) -> None:
        s = self.settings
        start_ms = self._frames * FRAME_MS
        self._frames += 1
        end_ms = self._frames * FRAME_MS
        voiced = probability >= s.threshold
        # Hysteresis decides whether speech is still going on; the silence window, though, runs
        # from the last confidently voiced frame, as in noise the VAD decays slowly through the band.
        still_voiced = probability >= max(s.threshold - HYSTERESIS, 0.01)
        if voiced:
            self._speech_end_ms = end_ms

        if self._phase is _Phase.SILENT:
            if not voiced:
                return
            self._phase, self._onset_ms, self._voiced_ms = _Phase.ONSET, start_ms, 0.0
        if self._phase is _Phase.ONSET:
            if not still_voiced:
                self._phase = _Phase.SILENT
                return
            if voiced:  # frames in the hysteresis band hold the onset but do not count as speech
                self._voiced_ms += FRAME_MS
            if self._voiced_ms >= s.min_speech_ms:
                self._phase = _Phase.SPEAKING
                events.append(SpeechStarted(round(max(0.0, self._onset_ms - s.prefix_padding_ms))))
            return
        if self._phase is _Phase.SPEAKING:
            if still_voiced:
                return
            self._phase = _Phase.PAUSED
            events.append(SpeechPaused(round(self._speech_end_ms)))
        elif voiced:  # paused, and the speech came back
            self._phase = _Phase.SPEAKING
            events.append(SpeechResumed())
            return
        if end_ms - self._speech_end_ms >= s.silence_duration_ms:
            self._phase = _Phase.SILENT
            events.append(SpeechStopped(round(end_ms), round(self._speech_end_ms)))
