"""What the speaker played, and when: the far-end reference the echo canceller subtracts.

The speaker's PortAudio callback hands over every block it fills with reply audio, with the moment
its first frame reaches the converter (outputBufferDacTime on our monotonic clock); it only queues
them. The microphone worker, which stamps its own blocks with their capture time on the same clock,
asks for "the 24 kHz audio played from time t for n samples": both streams meet on one clock, so the
microphone and the speaker may be separate devices with separate sample clocks, and either can be
reopened or replaced without the two losing step. What is left, the acoustic path and the device
timing error, is a small positive delay the canceller's own delay estimator finds.

Blocks that follow on from the one before (their time is where the last one ended, within
CONTINUITY_S) extend one segment through one resampler, so a reply is one seamless signal however
jittery the reported times are; a gap starts a new segment. Silence is never queued: no segment
there means zeros.
"""

from __future__ import annotations

import collections
import queue

import numpy as np

from app.audio.capture import PROTOCOL_RATE, protocol_rate_resampler

CONTINUITY_S = 0.003  # reported DAC times jitter by ~1 ms on PulseAudio; a real gap is a block or more
KEEP_S = 2.0  # the canceller never looks further back than its delay estimator reaches (~1 s)


class _Segment:
    def __init__(self, dac_time: float, rate: int):
        self.dac_time = dac_time  # when its first device frame left the device
        self.rate = rate  # the device rate its blocks come at
        self.device_frames = 0
        self.resampler = protocol_rate_resampler(rate)
        # Where its first 24 kHz sample sits in time: a filter's output lags its input.
        self.start = dac_time - (0.0 if self.resampler is None else self.resampler.delay_s)
        self.pieces: list[np.ndarray] = []
        self.audio = np.zeros(0, np.float32)  # joined lazily: blocks come 200 times a second

    @property
    def device_end(self) -> float:
        return self.dac_time + self.device_frames / self.rate

    def add(self, block: np.ndarray) -> None:
        self.device_frames += len(block)
        self.pieces.append(block if self.resampler is None else self.resampler.resample_chunk(block))

    def samples(self) -> np.ndarray:
        if self.pieces:
            self.audio = np.concatenate([self.audio, *self.pieces])
            self.pieces.clear()
        return self.audio

    @property
    def end(self) -> float:
        return self.start + len(self.samples()) / PROTOCOL_RATE


class PlayedAudio:
    """Written by the speaker's callback (`played`), read by the microphone worker (`window`)."""

    def __init__(self):
        self._blocks: queue.SimpleQueue = queue.SimpleQueue()
        self._segments: collections.deque[_Segment] = collections.deque()

    def played(self, block: np.ndarray, dac_time: float, rate: int) -> None:
        """From the audio callback: a copy of the mono block handed to the device. Only a put."""
        self._blocks.put((block, dac_time, rate))

    def window(self, start: float, length: int) -> np.ndarray:
        """The 24 kHz audio that left the speaker from `start` on, `length` samples; zeros where
        nothing played (or nothing is known yet)."""
        self._take_new_blocks()
        out = np.zeros(length, np.float32)
        for segment in self._segments:
            audio = segment.samples()
            offset = round((start - segment.start) * PROTOCOL_RATE)  # into the segment
            begin, end = max(0, offset), min(len(audio), offset + length)
            if begin < end:
                out[begin - offset : end - offset] = audio[begin:end]
        self._forget_before(start - KEEP_S)
        return out

    def playing_at(self, moment: float) -> bool:
        """Whether anything was (or is known to be) played around `moment`."""
        self._take_new_blocks()
        return any(s.start - CONTINUITY_S <= moment <= s.end + CONTINUITY_S for s in self._segments)

    def _take_new_blocks(self) -> None:
        while True:
            try:
                block, dac_time, rate = self._blocks.get_nowait()
            except queue.Empty:
                return
            last = self._segments[-1] if self._segments else None
            if last is None or last.rate != rate or abs(dac_time - last.device_end) > CONTINUITY_S:
                last = _Segment(dac_time, rate)
                self._segments.append(last)
            last.add(block)

    def _forget_before(self, moment: float) -> None:
        while len(self._segments) > 1 and self._segments[0].end < moment:
            self._segments.popleft()
