"""The echo a linear path would make of the reply, subtracted sample for sample: what is left of the
microphone holds the person whole, where spectral subtraction carves their voice into what the echo's
level left of each bin.

A partitioned-block frequency-domain adaptive filter (overlap-save, the gradient constrained to a linear
convolution), 10 ms blocks, over the same reference the excess reads (from a frame ahead of the measured
echo delay) and PARTITIONS frames of it: the echo's lead and the room's first ringing. Each bin's step
is normalised by that bin's power in the newest block, smoothed over ~100 ms. It learns only while told
to (the reference lines up with the echo and something plays), and starts again from nothing if what it
leaves grows to DIVERGED times what the microphone heard (it diverged).

Normalising by each bin's power over all the blocks of this frame alone (an NLMS per bin) removed 63 dB
of a synthetic linear path after 8 s of speech, against 29 here, but on the harness's recordings 27-29 dB
of the loopback path's echo and 5-9 of the saturating one's, against 35 and 10 here: the recorded
reference has near-silent bins that the room's noise then drove.

Written here rather than taken from a library: AEC3 (pywebrtc-audio) keeps its linear filter's output
inside, behind the residual-echo suppressor that removes the person too; Speex's MDF (through pyaec)
removed only 8.6-11.5 dB of the harness's loopback echo (README); the other adaptive filters on PyPI
adapt sample by sample in Python loops (pyroomacoustics, padasip).

On the harness's recordings it removes 33-35 dB of the loopback path's echo and 7-10 dB of the
saturating small speaker's (what a linear filter cannot follow). Under double talk it adapts on the
person too and drifts; the excess (echo_excess.py) listens to it only beside the spectral path.
"""

from __future__ import annotations

import collections

import numpy as np

FRAME = 240  # 10 ms at the protocol rate: one block
PARTITIONS = 3  # frames of reference the filter spans (30 ms: the 10 ms lead and 20 ms of the room)
# The normalised step: on the harness's recordings 0.3 removed the most echo after 30 s (35.2 dB on the
# loopback path against 33.1 at 0.1 and 0.6; 10.0 on the saturating one against 8.8 and 6.9). At 1.0 it
# diverged on synthetic speech: the smoothed power lags a reply's onsets.
STEP = 0.3
POWER_SMOOTHING = 0.9  # per frame: each bin's reference power, the step's normaliser, over ~100 ms
QUIET_REFERENCE = 1e-9  # summed square of a reference frame under which nothing is played
# How much of the echo it removes (removed_db): the median, over the last REMOVAL_FRAMES frames it learnt
# from that the microphone heard, of each frame's energy over the residual's. A median, so that a person
# talking over a reply (whose voice it leaves, as it should) or a cough moves it little.
REMOVAL_FRAMES = 500
REMOVAL_MEASURED_FRAMES = 100  # before this many, nothing is known (0 dB)
# A residual with DIVERGED times the microphone's energy over the last half second or so, and audible
# (above -60 dBFS): the filter is lost. (Frame by frame, a half-learnt filter's error at the quiet end of a
# word crossed it.)
DIVERGED = 4.0
DIVERGENCE_MEMORY = 0.98  # per frame
AUDIBLE_FRAME = FRAME * 1e-6
AUDIBLE = AUDIBLE_FRAME / (1 - DIVERGENCE_MEMORY)


class LinearEcho:
    """Fed one 10 ms frame at a time, with the reference frame that the excess reads."""

    def __init__(self) -> None:
        self._spectra = np.zeros((PARTITIONS, FRAME + 1), complex)  # the reference's blocks, newest first
        self._weights = np.zeros((PARTITIONS, FRAME + 1), complex)
        self._previous = np.zeros(FRAME)
        self._power = np.full(FRAME + 1, 1e-6)
        self._energies = np.zeros(2)  # the microphone's and the residual's, decaying by DIVERGENCE_MEMORY
        self._removals: collections.deque[float] = collections.deque(maxlen=REMOVAL_FRAMES)  # dB, per frame
        self.restarts = 0  # times it diverged and started again

    def process(self, near: np.ndarray, reference: np.ndarray, learn: bool = True) -> np.ndarray:
        """`near` less the echo predicted from `reference`; the filter learns from the frame if `learn`."""
        reference = np.asarray(reference, np.float64)
        self._spectra[1:] = self._spectra[:-1]
        self._spectra[0] = np.fft.rfft(np.concatenate((self._previous, reference)))
        self._previous = reference
        echo = np.fft.irfft((self._weights * self._spectra).sum(axis=0))[FRAME:]
        near = np.asarray(near, np.float64)
        residual = near - echo
        heard, left = float(np.dot(near, near)), float(np.dot(residual, residual))
        self._energies = DIVERGENCE_MEMORY * self._energies + (heard, left)
        if self._energies[1] > DIVERGED * self._energies[0] + AUDIBLE:
            self._weights[:] = 0.0
            self._energies[:] = 0.0
            self._removals.clear()
            self.restarts += 1
            return near
        if learn and float(np.dot(reference, reference)) > QUIET_REFERENCE:
            self._learn(residual)
            if heard > AUDIBLE_FRAME:
                self._removals.append(10 * np.log10(heard / max(left, 1e-20)))
        return residual

    @property
    def removed_db(self) -> float:
        """How much of the echo it removes (REMOVAL_FRAMES; 0 until measured)."""
        return float(np.median(self._removals)) if len(self._removals) >= REMOVAL_MEASURED_FRAMES else 0.0

    def _learn(self, residual: np.ndarray) -> None:
        spectrum = self._spectra[0]
        self._power = POWER_SMOOTHING * self._power + (1 - POWER_SMOOTHING) * (spectrum.real ** 2 + spectrum.imag ** 2)
        error = np.fft.rfft(np.concatenate((np.zeros(FRAME), residual)))
        gradient = np.fft.irfft(np.conj(self._spectra) * error / (self._power * PARTITIONS + 1e-8), axis=1)
        gradient[:, FRAME:] = 0.0  # a linear convolution's taps, not a circular one's
        self._weights += STEP * np.fft.rfft(gradient, axis=1)
