"""What the microphone hears beyond the echo: the barge-in detector's second ear during double talk.

AEC3's residual-echo suppressor removes the person along with the echo while both sound at once (on
the harness the cleaned signal stayed near -80 dBFS through most interruptions), so a detector on its
output cannot hear someone talking over a reply. This path keeps them instead of keeping the echo out
at any price:

- Per frequency bin, the echo is predicted from what was played that long before (the canceller's own
  estimate of the echo delay) and the path's gain, learnt by least squares while the reply plays. The
  prediction takes the loudest of several frames around that moment (the room rings on, the delay is
  an estimate) and, beside each bin's own gain, a share of the whole reference's level: a small
  overdriven speaker spreads a loud vowel's energy into bins where the reply had little. Both are fitted on magnitudes (power ** 0.5),
  which follows a saturating speaker better than power does.
- Spectral subtraction of OVERESTIMATE times the predicted echo leaves the person.
- A frame whose excess is under GATE_DB of the microphone's level is silence: what saturation leaves
  of a loud vowel is speech-like but far quieter than the echo, while a person as loud as the echo
  keeps most of their level.

Tuned offline on recordings of the harness's two echo paths (16 echo-only replies each, a person mixed
in at the echo's level over 15 of them): 0 false onsets at the person's own threshold, and 14 and 13 of
15 interruptions heard within 300 ms (p50 100 ms), where AEC3's output let 2 of 8 be heard in time. Live
figures: `confide bench --aec` (README).
"""

from __future__ import annotations

import numpy as np

FRAME = 240  # 10 ms at the protocol rate, the canceller's frame
WINDOW = np.sqrt(np.hanning(2 * FRAME + 1)[:-1])  # sqrt-Hann at 50% overlap: analysis × synthesis adds to 1
# The reference is taken LEAD earlier than the measured echo delay, and the prediction remembers
# SMEAR_FRAMES of it: the echo may arrive up to 10 ms earlier than measured and ring on for 50 ms.
# Offline, without the lead, a delay measured 10 ms too long let the echo pass for the person in 13 of
# 15 replies on the saturating path; with it, in 1. (Larger errors, after the reference is placed
# afresh, are the canceller's to catch: it stops handing on the excess until the delay is measured.)
LEAD = FRAME
SMEAR_FRAMES = 6
OVERESTIMATE = 6.0  # subtract the predicted echo's power this many times over (7.8 dB)
GATE_DB = -16.0
WARM_UP_FRAMES = 150  # frames of playback learnt before the excess is worth listening to (1.5 s)
LEARNING_RATE = 0.005  # per frame of playback: the path's gain is an average over about 2 s
ACTIVE_REFERENCE = 1e-3  # summed magnitude-squared spectrum under which nothing is being played
_MAGNITUDE = 0.5  # the power fitted: magnitudes


class EchoExcess:
    """Fed one 10 ms frame at a time on the capture worker, with the reference from the echo's delay
    less LEAD back."""

    def __init__(self) -> None:
        bins = FRAME + 1
        self._near_previous = np.zeros(FRAME)
        self._far_previous = np.zeros(FRAME)
        self._overlap = np.zeros(FRAME)
        self._far_history = np.zeros((SMEAR_FRAMES, bins))
        self._history_at = 0
        # Least-squares sums for echo ≈ gain · reference + spread · mean reference (per bin, on magnitudes).
        self._own = np.zeros(bins)
        self._cross = np.zeros(bins)
        self._broad = np.zeros(bins)
        self._own_echo = np.zeros(bins)
        self._broad_echo = np.zeros(bins)
        self.gain = np.zeros(bins)
        self.spread = np.zeros(bins)
        self.learnt_frames = 0

    @property
    def ready(self) -> bool:
        """Whether the echo path is learnt: before that, the echo itself would pass for the person."""
        return self.learnt_frames >= WARM_UP_FRAMES

    def process(self, near: np.ndarray, delayed_far: np.ndarray) -> np.ndarray:
        """The part of `near` the echo cannot explain, 10 ms late (the overlap-add's price)."""
        near_block = np.concatenate((self._near_previous, near))
        far_block = np.concatenate((self._far_previous, delayed_far))
        self._near_previous = np.asarray(near, np.float64)
        self._far_previous = np.asarray(delayed_far, np.float64)
        near_spectrum = np.fft.rfft(near_block * WINDOW)
        near_power = near_spectrum.real ** 2 + near_spectrum.imag ** 2
        far_spectrum = np.fft.rfft(far_block * WINDOW)
        self._far_history[self._history_at] = far_spectrum.real ** 2 + far_spectrum.imag ** 2
        self._history_at = (self._history_at + 1) % SMEAR_FRAMES
        reference = self._far_history.max(axis=0)
        if reference.sum() > ACTIVE_REFERENCE:
            self._learn(reference ** _MAGNITUDE, near_power ** _MAGNITUDE)
        broad = float(reference.mean()) ** _MAGNITUDE
        predicted = np.maximum(self.gain * reference ** _MAGNITUDE + self.spread * broad, 0.0) ** (1 / _MAGNITUDE)
        left = np.maximum(near_power - OVERESTIMATE * predicted, 0.0)
        spectrum = near_spectrum * np.sqrt(left / np.maximum(near_power, 1e-20))
        block = np.fft.irfft(spectrum, 2 * FRAME) * WINDOW
        out = self._overlap + block[:FRAME]
        self._overlap = block[FRAME:]
        if float(np.dot(out, out)) < float(np.dot(self._near_previous, self._near_previous)) * 10 ** (GATE_DB / 10):
            return np.zeros(FRAME, np.float32)
        return out.astype(np.float32)

    def _learn(self, reference: np.ndarray, echo: np.ndarray) -> None:
        self.learnt_frames += 1
        keep, rate = 1.0 - LEARNING_RATE, LEARNING_RATE
        broad = float(reference.mean())
        self._own = keep * self._own + rate * reference * reference
        self._cross = keep * self._cross + rate * reference * broad
        self._broad = keep * self._broad + rate * broad * broad
        self._own_echo = keep * self._own_echo + rate * reference * echo
        self._broad_echo = keep * self._broad_echo + rate * broad * echo
        determinant = self._own * self._broad - self._cross ** 2
        solvable = determinant > 1e-9 * np.maximum(self._own * self._broad, 1e-30)
        safe = np.where(solvable, determinant, 1.0)
        gain = (self._own_echo * self._broad - self._broad_echo * self._cross) / safe
        spread = (self._broad_echo * self._own - self._own_echo * self._cross) / safe
        self.gain = np.where(solvable, np.maximum(gain, 0.0), self.gain)
        self.spread = np.where(solvable, np.maximum(spread, 0.0), self.spread)
