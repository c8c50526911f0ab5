"""Holding the echo's delay still: the canceller reads its reference later or earlier by what it measures.

The reference (what the speaker played) and the microphone's audio meet on one clock, each placed by
its own stream's reported times. Those reports wander from the streams' sample clocks, and not by the
same amount: under PulseAudio the echo's delay, measured against the reference, drifted by ~9 samples
(0.4 ms) a second while the timelines followed the reports; counted by samples, the two streams still
drift apart, by 530-820 ppm on the harness (and a speaker and microphone on separate devices do for
real, by tens of ppm). AEC3 follows a moving delay by re-aligning its filter from time to time, and let
echo through each time (ERLE 25-59 dB from one reply to the next on the harness).

So the canceller measures the delay (its presence check, every second of playback, to a fraction of a
sample) and slides the reference it hands AEC3 by the difference from the first delay it measured:
continuously, at the drift rate measured so far, read between samples where it falls there
(PlayedAudio.window). AEC3 then sees one delay for as long as the streams run. A jump (the reference
placed afresh after the speaker ran dry) is taken back at once, at the next check.
"""

from __future__ import annotations

from app.audio.capture import PROTOCOL_RATE

MAX_DRIFT = 0.002  # the most the streams' clocks may run apart (2000 ppm: 48 samples a second)
RATE_GAIN = 0.5  # of the drift rate a check's error suggests, taken at once (the rest at later checks)


class EchoDelay:
    """Used on the capture worker only."""

    def __init__(self, jump_samples: float):
        self._jump = jump_samples  # a change this large is a jump, not drift
        self.reset()

    def reset(self) -> None:
        self.target: float | None = None  # the delay (samples) the reference is held at
        self._shift = 0.0  # samples the reference is read earlier than placed, at _since
        self._since = 0.0
        self.rate = 0.0  # samples per second the shift moves by

    def shift_at(self, moment: float) -> float:
        """Samples by which the reference for the audio captured at `moment` is read earlier."""
        return self._shift + self.rate * (moment - self._since) if self.target is not None else 0.0

    def measured(self, lag: float, moment: float, placed_afresh: bool = False) -> bool:
        """A check found the echo `lag` samples behind the reference it was handed, around `moment`;
        False when that is a jump from the held delay (it is taken back at once all the same). After
        the reference was `placed_afresh`, any change is the placement's error, not drift: half a
        second after an underrun, 1.4 ms of it read as drift once set the rate off by 34 samples a second."""
        if self.target is None:
            self.target, self._shift, self._since = lag, 0.0, moment
            return True
        error = lag - self.target
        now = self.shift_at(moment)
        jumped = abs(error) > self._jump
        if not (jumped or placed_afresh) and moment > self._since:
            limit = MAX_DRIFT * PROTOCOL_RATE
            self.rate = min(limit, max(-limit, self.rate + RATE_GAIN * error / (moment - self._since)))
        self._shift, self._since = now + error, moment
        return not jumped
