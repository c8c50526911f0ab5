"""What the speaker played, and when: the far-end reference the echo canceller subtracts.

The speaker's PortAudio callback hands over every block it fills with reply audio, with the moment
its first frame reaches the converter (outputBufferDacTime on our monotonic clock) and that frame's
number in the stream; it only queues them. The microphone worker, which stamps its own blocks with their capture time on the same clock,
asks for "the 24 kHz audio played from time t for n samples": both streams meet on one clock, so the
microphone and the speaker may be separate devices with separate sample clocks, and either can be
reopened or replaced without the two losing step. What is left, the acoustic path and the device
timing error, is a small positive delay the canceller's own delay estimator finds.

Times come from the stream's own sample clock: frame n leaves at anchor + n / rate. Reported times
jitter by a millisecond or two (tens of samples); placed by them, each reply's reference would sit a
little off from the last, and the canceller would have to learn the echo path again at every reply,
letting echo through while it does. They also wander from the sample clock (by hundreds of ppm under
PulseAudio), so they are followed only as a trend, which tells a reopened stream from jitter and
places the audio after an underrun. Blocks that follow on from the one before (the next frame number)
extend one segment through one resampler; a gap starts a new segment. Silence is never queued: no
segment there means zeros.
"""

from __future__ import annotations

import collections
import functools
import queue

import numpy as np

from app.audio.capture import PROTOCOL_RATE, protocol_rate_resampler

CONTINUITY_S = 0.003  # around a segment's ends, for playing_at
RESYNC_S = 0.05  # a reported time this far from the sample clock's means a new stream (or a stall)
# A device that ran dry (an underrun) played silence of its own: the frames after it leave later than
# the sample clock says, by the length of the gap. Those blocks come flagged and are placed by their
# reported time; followed by the sample clock, the reference would sit off by the gap for the rest of
# the reply, and the echo leaked until the canceller found the new delay (on a loaded machine this
# made most false barge-ins). The reported time is taken less the reports' recent drift from the clock.
REPORT_NUDGE = 0.005  # per block: the reports' trend averages their jitter over ~200 blocks (1 s of audio)
KEEP_S = 2.0  # the canceller never looks further back than its delay estimator reaches (~1 s)


_TAPS = 8  # each side of the interpolation point
_KAISER_BETA = 5.0
# Positions are read to 1/_STEPS of a sample (at most 1/512 off: a 0.3° phase error at 9 kHz), so the
# slowly sliding reference reuses a few kernels instead of building one for every 10 ms frame.
_STEPS = 256


@functools.lru_cache(maxsize=64)
def _fraction_kernel(step: int) -> np.ndarray:
    """Weights for the samples at offsets -_TAPS+1 .. _TAPS around a point step/_STEPS past a sample:
    a Kaiser-windowed sinc."""
    fraction = step / _STEPS
    offsets = np.arange(-_TAPS + 1, _TAPS + 1) - fraction
    taper = np.i0(_KAISER_BETA * np.sqrt(np.clip(1.0 - (offsets / _TAPS) ** 2, 0.0, 1.0))) / np.i0(_KAISER_BETA)
    weights = np.sinc(offsets) * taper
    return (weights / weights.sum()).astype(np.float32)


class _Segment:
    def __init__(self, dac_time: float, rate: int, first_frame: int):
        self.dac_time = dac_time  # when its first device frame left the device
        self.rate = rate  # the device rate its blocks come at
        self.next_frame = first_frame  # the stream frame number a following block would start at
        self.device_frames = 0
        self.resampler = protocol_rate_resampler(rate)
        # Where its first 24 kHz sample sits in time: a filter's output lags its input.
        self.start = dac_time - (0.0 if self.resampler is None else self.resampler.delay_s)
        self.pieces: list[np.ndarray] = []
        self.audio = np.zeros(0, np.float32)  # joined lazily: blocks come 200 times a second

    def add(self, block: np.ndarray) -> None:
        self.device_frames += len(block)
        self.next_frame += len(block)
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
        self._anchor: float | None = None  # when frame 0 of the current stream left the device
        self._anchor_rate = 0
        self._report_drift = 0.0  # how far the reported times have wandered from the sample clock
        self.placements = 0  # times the timeline was placed afresh (new stream, ran dry, stalled)

    def played(self, block: np.ndarray, dac_time: float, rate: int, frame_index: int,
               ran_dry: bool = False) -> None:
        """From the audio callback: a copy of the mono block handed to the device. Only a put."""
        self._blocks.put((block, dac_time, rate, frame_index, ran_dry))

    def window(self, start: float, length: int) -> np.ndarray:
        """The 24 kHz audio that left the speaker from `start` on, `length` samples; zeros where
        nothing played (or nothing is known yet). Read between samples where `start` falls between
        them (a windowed-sinc interpolator): the canceller slides its reference by fractions of a
        sample to follow a drifting echo delay."""
        self._take_new_blocks()
        out = np.zeros(length, np.float32)
        for segment in self._segments:
            audio = segment.samples()
            steps = round((start - segment.start) * PROTOCOL_RATE * _STEPS)  # into the segment
            whole, step = divmod(steps, _STEPS)
            if step == 0:
                begin, end = max(0, whole), min(len(audio), whole + length)
                if begin < end:
                    out[begin - whole : end - whole] += audio[begin:end]
                continue
            # Samples whole-TAPS+1 .. whole+length+TAPS-1 feed the interpolator; zeros outside the segment.
            first = whole - _TAPS + 1
            begin, end = max(0, first), min(len(audio), whole + length + _TAPS)
            if begin >= end:
                continue
            padded = np.zeros(length + 2 * _TAPS - 1, np.float32)
            padded[begin - first : end - first] = audio[begin:end]
            out += np.convolve(padded, _fraction_kernel(step)[::-1], mode="valid").astype(np.float32)
        self._forget_before(start - KEEP_S)
        return out

    def playing_at(self, moment: float) -> bool:
        """Whether anything was (or is known to be) played around `moment`."""
        self._take_new_blocks()
        return any(s.start - CONTINUITY_S <= moment <= s.end + CONTINUITY_S for s in self._segments)

    def _take_new_blocks(self) -> None:
        while True:
            try:
                block, dac_time, rate, frame_index, ran_dry = self._blocks.get_nowait()
            except queue.Empty:
                return
            if ran_dry and self._anchor is not None:
                # Placed by this block's reported time (less the reports' drift): the device's own silence
                # delayed it by the gap. The clock then runs on from there.
                self._anchor = dac_time - self._report_drift - frame_index / rate
                self.placements += 1
            moment = self._on_sample_clock(dac_time, rate, frame_index)
            last = self._segments[-1] if self._segments else None
            if ran_dry or last is None or last.rate != rate or last.next_frame != frame_index:
                last = _Segment(moment, rate, frame_index)
                self._segments.append(last)
            last.add(block)

    def _on_sample_clock(self, dac_time: float, rate: int, frame_index: int) -> float:
        """When frame `frame_index` leaves the device, by the stream's steady sample clock."""
        offset = dac_time - frame_index / rate
        if self._anchor is None or rate != self._anchor_rate or \
                abs(offset - self._anchor - self._report_drift) > RESYNC_S:
            # A new stream, or a stall: placed by the report, less the reports' wander so far (the sound
            # server's, which the microphone's timeline carries too).
            self._anchor, self._anchor_rate = offset - self._report_drift, rate
            self.placements += 1
        else:
            self._report_drift += (offset - self._anchor - self._report_drift) * REPORT_NUDGE
        return self._anchor + frame_index / rate

    def _forget_before(self, moment: float) -> None:
        while len(self._segments) > 1 and self._segments[0].end < moment:
            self._segments.popleft()
