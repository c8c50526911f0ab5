"""What the microphone hears beyond the echo: the barge-in detector's second ear during double talk.

AEC3's residual-echo suppressor removes the person along with the echo while both sound at once (on
the harness the cleaned signal stayed near -80 dBFS through most interruptions), so a detector on its
output cannot hear someone talking over a reply. This path keeps them instead of keeping the echo out
at any price:

- Per frequency bin, the echo's level is predicted from the reference's level in the last TAPS frames
  (from one frame ahead of the canceller's measured echo delay: the echo may come a little early, and
  the room rings on) and, beside them, the whole reference's level: a small overdriven speaker spreads
  a loud vowel's energy into bins where the reply had little. The weights are fitted per bin by least
  squares while the reply plays, on levels compressed to the 4th root of power (a saturating speaker
  passes quiet sound at a higher gain than loud sound; compressed, one weight fits both better).
- Spectral subtraction of the predicted echo, a margin times over, leaves the person. The margin is what
  the path is measured to need (its echo-only frames' 95th percentile of the least over-subtraction that
  gates them as silence, plus SAFETY_DB), from MIN_MARGIN_DB to OVERESTIMATE's 7 dB, starting at 7 dB. A
  linear path (a good speaker, the harness's loopback) settles near 4 dB and hears more of the person; a
  saturating small speaker keeps 7 dB.
- A frame whose excess is under GATE_DB of the microphone's level is silence: what saturation leaves
  of a loud vowel is speech-like but far quieter than the echo, while a person as loud as the echo
  keeps most of their level.
- Where a frame's excess keeps most of the microphone's level (KEEPS_MOST_DB), someone is talking
  over the echo, and each bin's gain falls from the last frame's by GAIN_DECAY at most: subtraction
  alone carves the person's voice into bins that come and go frame by frame, which Silero scored 0.05-
  0.45 where the person alone scored 0.8-0.99. Elsewhere (echo alone, its leaks) the gain drops at once.
- Beside it, the same subtraction runs on what a linear adaptive filter leaves of the microphone
  (linear_echo.py): on a linear path it removes 33-35 dB of the echo sample for sample, so the person
  reaches Silero nearly whole. That path is listened to only where the filter removes LINEAR_TRUSTED_DB
  of the echo (a saturating speaker leaves what no linear filter follows), in frames where the
  microphone's excess hears something too and its output keeps RESIDUAL_GATE_DB of the microphone's
  level, and not for RESIDUAL_HELD_FRAMES after the reference was off the echo (the filter's taps are
  then off too). Replayed on eight live recordings (four runs, both harness paths, 400 echo-only
  replies): 0 false onsets, and on the quiet runs' loopback path 96-98% of the interruptions at the
  echo's level heard within 300 ms (82-86% before).

Why this shape: with the echo known exactly, subtracting 6 times it, smeared over the loudest of 6
frames around the delay (this module's earlier prediction), let only 34 of 74 interruptions mixed into
harness recordings be heard within 250 ms; subtracting it once, 70. So the margin and the smear cost
more than the prediction's error did, and a prediction that follows the echo frame by frame can do
with less margin. Replayed on four recordings of the harness's two echo paths (115 echo-only replies,
a person mixed in at the echo's level over 114): 0 false onsets and 81 of 114 heard within 250 ms at
OVERESTIMATE 4.5, against 0 and 56 for the earlier prediction. Live, though, the saturating path's echo
passed for the person at 4 in two runs of three (1 in 50 replies) and at 4.5 in two of three (2 in 50,
1 in 100). A fifth recording (100 echo-only replies on that path, one cut live) shows why: at the end of
a loud vowel the overdriven speaker's hum near 200 Hz (likely the voice's harmonics intermodulated) outlasts the
prediction by a few dB, and Silero takes 40 ms of it for a voice. Replayed, it fires in 1 reply at 4.5
and none at 5; over all five (215 replies, 213 interruptions) 5 gives 0 false onsets and 150 heard
within 250 ms (4.5: 1 and 155). A higher margin below 300 Hz, a per-bin margin from the measured
prediction error, a 3rd-order-distortion feature and a stricter gate all lost more detection than 5 did.
OVERESTIMATE is 5, the margin on a path whose echo is not predicted well. Where it is (two live
recordings of each path on a busy machine), the measured margin settled at 3-4 dB on the loopback path
and heard 76% of 46 and 50 interruptions within 300 ms against 61% and 70% at 7 dB, with no false onset
added (it removed one); on the saturating path it stayed at 7 dB. Live figures: `confide bench --aec`
(README); offline, on frames recorded by its `--aec-record`: `confide bench --aec-replay`.
"""

from __future__ import annotations

import numpy as np

from app.audio.linear_echo import LinearEcho

FRAME = 240  # 10 ms at the protocol rate, the canceller's frame
WINDOW = np.sqrt(np.hanning(2 * FRAME + 1)[:-1])  # sqrt-Hann at 50% overlap: analysis × synthesis adds to 1
LEAD = FRAME  # the reference is taken this much earlier than the measured echo delay
TAPS = 3  # frames of the reference each bin's prediction weighs: the leading one and the two before it
OVERESTIMATE = 5.0  # the most the predicted echo's power is subtracted times over (7 dB)
# The margin the path needs: for each frame of playback, the least over-subtraction (dB) that would have
# gated it as silence; its NEEDED_QUANTILE is followed (NEEDED_STEP_DB up after a frame that needed more,
# a smaller step down after one that needed less: one frame moves it little, double talk included) and
# the margin is that plus SAFETY_DB, at least MIN_MARGIN_DB and at most OVERESTIMATE's.
NEEDED_QUANTILE = 0.95
NEEDED_STEP_DB = 0.02  # from 7 dB to a clean path's 4 dB in ~40 s of playback
SAFETY_DB = 2.5
MIN_MARGIN_DB = 3.0
_SEARCH_DB = (0.0, 15.0)  # where a frame's need is looked for, in five halvings (0.5 dB)
GATE_DB = -16.0
WARM_UP_FRAMES = 150  # frames of playback learnt before the excess is worth listening to (1.5 s)
LEARNING_RATE = 0.005  # per frame of playback: the path's weights are an average over about 2 s
SOLVE_EVERY = 5  # frames between solving for the weights (the sums move slowly)
RIDGE = 1e-3  # keeps each bin's solution tame where the reference's frames are nearly alike
ACTIVE_REFERENCE = 1e-3  # summed magnitude-squared spectrum under which nothing is being played
_COMPRESSION = 0.25  # the power of the power spectrum that is fitted: 4th root
# After the reference was off the echo (EchoExcess.process not told to learn), the linear filter's residual
# is not listened to for this many frames. Replayed on a loaded run's recording (102 placements on the
# loopback path), it let the echo through twice, 48 and 102 frames after learning resumed; held for 150
# frames, never, and held until the residual's echo was back within 3 dB of its usual level, twice.
RESIDUAL_HELD_FRAMES = 150
# What is left of the residual must keep this much of the microphone's level, a stricter gate than GATE_DB:
# on the saturating path (before LINEAR_TRUSTED_DB kept the filter off it) its leftovers passed for the
# person at -16 dB in 4 of 200 replayed replies (one sentence, three times), at -10 dB in none.
RESIDUAL_GATE_DB = -10.0
# The linear filter's residual is listened to only where the filter removes this much of the echo
# (LinearEcho.removed_db): on the harness's loopback path 24-43 dB, on the saturating one 7-14 dB, where
# what it leaves is mostly the speaker's distortion, which passed for the person in 1 of 50 replies live
# even at RESIDUAL_GATE_DB (run 20 in the README).
LINEAR_TRUSTED_DB = 20.0
# Replayed on three live recordings (300 replies, runs 16-18 in the README), a person mixed in at the
# echo's level and 6 dB under: heard within 300 ms 0.78 and 0.567 of the time without the decay, 0.81 and
# 0.63 with it, and no false onset either way. Decaying in every frame heard more (0.945 at 0.8 on the
# quiet runs) but let the echo through in 9 of 200 replies.
GAIN_DECAY = 0.9  # per 10 ms frame, of each bin's amplitude gain
KEEPS_MOST_DB = -6.0


class SpectralExcess:
    """One signal's part that the echo predicted from the reference cannot explain; fed one 10 ms frame
    at a time, with the reference from the echo's delay less LEAD back."""

    def __init__(self) -> None:
        bins, features = FRAME + 1, TAPS + 1
        self._near_previous = np.zeros(FRAME)
        self._far_previous = np.zeros(FRAME)
        self._overlap = np.zeros(FRAME)
        self._gain = np.zeros(bins)  # last frame's spectral gain per bin
        # Per bin: the compressed reference levels of the last TAPS frames (newest first), then the whole
        # reference's level. Shifted in place each frame.
        self._features = np.zeros((bins, features))
        # Exponentially weighted least squares per bin: compressed echo ≈ weights · features.
        self._products = np.zeros((bins, features, features))
        self._correlations = np.zeros((bins, features))
        self.weights = np.zeros((bins, features))
        self.learnt_frames = 0
        self.margin_db = 10 * np.log10(OVERESTIMATE)  # the path is trusted only once measured
        self.needed_db = self.margin_db - SAFETY_DB
        self._margin = OVERESTIMATE  # margin_db as a power ratio: what the echo is multiplied by

    @property
    def ready(self) -> bool:
        """Whether the echo path is learnt: before that, the echo itself would pass for the person."""
        return self.learnt_frames >= WARM_UP_FRAMES

    def process(self, near: np.ndarray, delayed_far: np.ndarray, learn: bool = True) -> np.ndarray:
        """The part of `near` the echo cannot explain, 10 ms late (the overlap-add's price). Not `learn`:
        the reference is known to sit off the echo (placed afresh, not measured yet), so the path's
        weights and margin are left as they are."""
        near_block = np.concatenate((self._near_previous, near))
        far_block = np.concatenate((self._far_previous, delayed_far))
        heard = self._near_previous  # the frame the output is of
        self._near_previous = np.asarray(near, np.float64)
        self._far_previous = np.asarray(delayed_far, np.float64)
        near_spectrum = np.fft.rfft(near_block * WINDOW)
        near_power = near_spectrum.real ** 2 + near_spectrum.imag ** 2
        far_spectrum = np.fft.rfft(far_block * WINDOW)
        far_power = far_spectrum.real ** 2 + far_spectrum.imag ** 2
        features = self._features
        features[:, 1:TAPS] = features[:, :TAPS - 1]
        features[:, 0] = far_power ** _COMPRESSION
        features[:, TAPS] = float(far_power.mean()) ** _COMPRESSION
        learning = learn and far_power.sum() > ACTIVE_REFERENCE
        if learning:
            self._learn(features, near_power ** _COMPRESSION)
        predicted = np.maximum(np.einsum("bf,bf->b", self.weights, features), 0.0) ** (1 / _COMPRESSION)
        if learning and self.ready:
            self._follow_margin(near_power, predicted)
        left = np.maximum(near_power - self._margin * predicted, 0.0)
        gain = np.sqrt(left / np.maximum(near_power, 1e-20))
        if float(left.sum()) >= float(near_power.sum()) * 10 ** (KEEPS_MOST_DB / 10):
            gain = np.maximum(gain, GAIN_DECAY * self._gain)
        self._gain = gain
        spectrum = near_spectrum * gain
        block = np.fft.irfft(spectrum, 2 * FRAME) * WINDOW
        out = self._overlap + block[:FRAME]
        self._overlap = block[FRAME:]
        if float(np.dot(out, out)) < float(np.dot(heard, heard)) * 10 ** (GATE_DB / 10):
            return np.zeros(FRAME, np.float32)
        return out.astype(np.float32)

    def _follow_margin(self, near_power: np.ndarray, predicted: np.ndarray) -> None:
        silence = float(near_power.sum()) * 10 ** (GATE_DB / 10)
        low, needed = _SEARCH_DB
        for _ in range(5):
            middle = (low + needed) / 2
            if float(np.maximum(near_power - 10 ** (middle / 10) * predicted, 0.0).sum()) < silence:
                needed = middle
            else:
                low = middle
        if needed > self.needed_db:
            self.needed_db += NEEDED_STEP_DB
        else:
            self.needed_db -= NEEDED_STEP_DB * (1 - NEEDED_QUANTILE) / NEEDED_QUANTILE
        self.margin_db = min(10 * np.log10(OVERESTIMATE), max(MIN_MARGIN_DB, self.needed_db + SAFETY_DB))
        self._margin = 10 ** (self.margin_db / 10)

    def _learn(self, features: np.ndarray, echo: np.ndarray) -> None:
        self.learnt_frames += 1
        keep, rate = 1.0 - LEARNING_RATE, LEARNING_RATE
        self._products = keep * self._products + rate * features[:, :, None] * features[:, None, :]
        self._correlations = keep * self._correlations + rate * features * echo[:, None]
        if self.learnt_frames % SOLVE_EVERY and self.learnt_frames > SOLVE_EVERY:
            return
        size = features.shape[1]
        scale = np.trace(self._products, axis1=1, axis2=2) / size
        ridge = (RIDGE * scale + 1e-20)[:, None, None] * np.eye(size)
        solved = np.linalg.solve(self._products + ridge, self._correlations[:, :, None])[:, :, 0]
        self.weights = np.maximum(solved, 0.0)


class EchoExcess:
    """What the microphone hears beyond the echo (see the module's docstring), fed as SpectralExcess is:
    a SpectralExcess of the microphone, and one of what LinearEcho leaves of it, listened to only where
    the first hears something too and the linear filter is not learning the path afresh."""

    def __init__(self) -> None:
        self._of_microphone = SpectralExcess()
        self._linear = LinearEcho()
        self._of_residual = SpectralExcess()
        self._heard = np.zeros(FRAME)  # the microphone's frame the outputs are of (10 ms late)
        self._learnt_last = True
        self._residual_held_for = 0  # frames to go before the linear filter is listened to again

    @property
    def ready(self) -> bool:
        return self._of_microphone.ready

    @property
    def learnt_frames(self) -> int:
        return self._of_microphone.learnt_frames

    @property
    def margin_db(self) -> float:
        """The margin the microphone's path was measured to need (SpectralExcess)."""
        return self._of_microphone.margin_db

    def process(self, near: np.ndarray, delayed_far: np.ndarray, learn: bool = True) -> np.ndarray:
        """As SpectralExcess.process, for the two together."""
        heard, self._heard = self._heard, np.asarray(near, np.float64)
        of_microphone = self._of_microphone.process(near, delayed_far, learn)
        residual = self._linear.process(near, delayed_far, learn)
        of_residual = self._of_residual.process(residual, delayed_far, learn)
        if learn and not self._learnt_last:
            # The reference sat off the echo and was put back to within a sample or so: the filter's taps
            # are that far off, and its residual's echo louder than the second excess learnt it to be.
            self._residual_held_for = RESIDUAL_HELD_FRAMES
        self._learnt_last = learn
        if self._residual_held_for:
            self._residual_held_for -= 1
            return of_microphone
        # Silence first: most frames of echo are, and then the filter's removal (a median) is not needed.
        if not of_microphone.any() or self._linear.removed_db < LINEAR_TRUSTED_DB:
            return of_microphone
        if _power(of_residual) < _power(heard) * 10 ** (RESIDUAL_GATE_DB / 10):
            return np.zeros(FRAME, np.float32)
        return of_residual


def _power(frame: np.ndarray) -> float:
    return float(np.dot(frame, frame))
