"""Echo cancellation on the microphone path: the assistant must not hear itself on open speakers.

WebRTC's AEC3 (pywebrtc-audio) sits between the microphone worker and the router, so the engine and
the local barge-in detector both get the echo-cancelled signal. Every 10 ms capture frame is paired
with what the speaker played at the frame's capture time (PlayedAudio: both on one clock), read earlier
or later by what holds the echo's delay still against the two clocks' drift (EchoDelay), and AEC3
finds the acoustic delay itself, once.

While nothing has played for a while, frames pass straight through: no echo to cancel, and no CPU
spent on it. EchoMonitor keeps the figures (ERLE) and the verdict on whether the canceller copes.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable

import numpy as np
from pywebrtc_audio import AudioProcessor

from app.audio.capture import PROTOCOL_RATE
from app.audio.echo_delay import EchoDelay
from app.audio.echo_excess import LEAD, TAPS, EchoExcess
from app.audio.echo_reference import PlayedAudio

FRAME = PROTOCOL_RATE // 100  # AEC3 works in 10 ms frames
# Echo rings on after the reply's last sample (the acoustic path plus the room): keep cancelling.
ECHO_TAIL_S = 1.0
# A capture time this far from where the reports' trend puts it means the microphone stream was reopened.
RESYNC_S = 0.05
REPORT_NUDGE = 0.01  # per chunk: the reports' trend averages their jitter over ~100 chunks (a second)
ACTIVE_REFERENCE = 1e-5  # -50 dBFS mean square: the speaker is really playing something
AUDIBLE_ECHO = 1e-6  # -60 dBFS at the microphone: quieter than that there is nothing to judge
MONITOR_WINDOW_S = 2.0  # the verdict looks at this much playback
MIN_ERLE_DB = 6.0  # below this over a whole window of playback, the echo is getting through
# Echo-likeness (see EchoCanceller._likeness): how far back the echo may lag what was played, and how
# much recent audio is kept to look there.
MAX_ECHO_LAG_S = 0.4
RECENT_S = 1.0
# Whether the speaker is heard at the microphone at all: the raw microphone's likeness to what played,
# over PRESENCE_SPAN_S, looked at every PRESENCE_EVERY frames of playback. An echo scores 0.8-0.95 on
# the harness's paths (the saturating one too); noise, or a person with headphones on, well under 0.3.
PRESENCE_SPAN_S = 0.5
PRESENCE_EVERY = 100
ECHO_PRESENT = 0.5
# The delay is measured only by a check whose peak stands out as the path's usually do: at least
# TRUSTED_SHARE of the median of the last TYPICAL_CHECKS checks' (what is usual differs by path: 0.8-0.9 on
# the harness's, 0.6-0.7 on the tests' small speaker). On the saturating path one check in ~30 scores
# 0.4-0.65, and its peak may sit tens or hundreds of samples off: false peaks 30 and 192 samples off,
# followed at once, let the echo through for the second after. Replayed on 11 recordings of that path
# (no placements), ERLE 31.5 dB against 30.4 on average (0.8: 30.7, 0.9: 31.2), the loopback path's
# unchanged (32.0 and 43.3 dB against 31.2 and 43.5). A person talking over the reply lowers it too.
TRUSTED_SHARE = 0.85
TYPICAL_CHECKS = 10
# Losing the echo is judged more slowly than finding it: a check that falls while the person talks over
# the reply (or while an overloaded machine drops a block) scores low too, and one such check used to
# switch the detector to the raw microphone, where the next replies' echo cut them at once. So it takes
# ABSENT_CHECKS checks in a row under ECHO_ABSENT, or a microphone that heard nothing at all.
ECHO_ABSENT = 0.3
ABSENT_CHECKS = 3
LAG_AGREES_S = 0.005
# A check that found the delay jumped with no placement to explain it is confirmed this much playback
# later (frames), not at the next regular check: until then the excess is not listened to.
CONFIRM_AFTER = 50
_NEVER = 1 << 62  # a frame count never reached


class EchoMonitor:
    """How much echo the canceller removes (ERLE) while the speaker plays, and whether it copes.

    Counted only over frames where the speaker played something and the microphone heard something.
    Failure is a whole window of playback with ERLE below MIN_ERLE_DB: the echo is getting through.
    Double talk lowers the figure too, but the person talking over a reply interrupts it within a
    fraction of a second and ends the playback, so a whole window of it means a canceller that lost
    the echo path (a saturating speaker, a changed path it cannot follow).
    """

    def __init__(self, window_s: float = MONITOR_WINDOW_S, min_erle_db: float = MIN_ERLE_DB):
        self._window_frames = int(window_s * 100)

        self._min_erle_db = min_erle_db
        self._lock = threading.Lock()
        self.reset_totals()
        self._recent_in = self._recent_out = 0.0
        self._recent_frames = 0

    def reset_totals(self) -> None:
        with self._lock:
            self.total_in = self.total_out = 0.0
            self.frames = 0

    def add(self, near: np.ndarray, cleaned: np.ndarray, far: np.ndarray) -> bool:
        """One frame; True when the verdict turned to failing with it."""
        if float(np.dot(far, far)) / len(far) < ACTIVE_REFERENCE:
            return False
        power_in = float(np.dot(near, near)) / len(near)
        if power_in < AUDIBLE_ECHO:
            return False
        power_out = float(np.dot(cleaned, cleaned)) / len(cleaned)
        with self._lock:
            self.total_in += power_in
            self.total_out += power_out
            self.frames += 1
        self._recent_in += power_in
        self._recent_out += power_out
        self._recent_frames += 1
        if self._recent_frames < self._window_frames:
            return False
        failing = _db(self._recent_in, self._recent_out) < self._min_erle_db
        self._recent_in = self._recent_out = 0.0
        self._recent_frames = 0
        return failing

    def erle_db(self) -> float | None:
        """Echo return loss enhancement over everything counted so far."""
        with self._lock:
            return None if self.frames == 0 else round(float(_db(self.total_in, self.total_out)), 1)


class _Recent:
    """The last `size` samples, in a ring (one writer, the capture worker)."""

    def __init__(self, size: int):
        self._ring = np.zeros(size, np.float32)
        self._end = 0  # samples written in all
        self.filled = False

    def add(self, samples: np.ndarray) -> None:
        size = len(self._ring)
        at = self._end % size
        first = min(len(samples), size - at)
        self._ring[at:at + first] = samples[:first]
        self._ring[:len(samples) - first] = samples[first:]
        self._end += len(samples)
        self.filled = self._end >= size

    def last(self, count: int) -> np.ndarray:
        """A copy of the newest `count` samples (fewer while fewer were written), oldest first."""
        count = min(count, len(self._ring), self._end)
        at = self._end % len(self._ring)  # one past the newest sample
        if count <= at:
            return self._ring[at - count:at].copy()
        return np.concatenate((self._ring[len(self._ring) - (count - at):], self._ring[:at]))

    def before_last(self, back: int, count: int) -> np.ndarray:
        """last(back + count)[:count], without copying the `back` newest samples (the capture worker reads
        one frame of reference up to 0.4 s back every 10 ms)."""
        size = len(self._ring)
        if back + count > min(self._end, size):
            return self.last(back + count)[:count]
        start = (self._end - back - count) % size
        if start + count <= size:
            return self._ring[start:start + count].copy()
        return np.concatenate((self._ring[start:], self._ring[:start + count - size]))

    def clear(self) -> None:
        self._end, self.filled = 0, False


def _db(power_in: float, power_out: float) -> float:
    return 10.0 * np.log10(max(power_in, 1e-20) / max(power_out, 1e-20))


class EchoCanceller:
    """Runs on the microphone worker: `process` is its on_audio; cleaned audio goes to `on_audio`."""

    def __init__(self, played: PlayedAudio, on_audio: Callable[[np.ndarray, float], None],
                 enabled: bool = True, noise_suppression: bool = False,
                 on_failing: Callable[[], None] | None = None):
        self._played = played
        self._on_audio = on_audio
        self._on_failing = on_failing
        self._noise_suppression = noise_suppression
        self._processor: AudioProcessor | None = None
        self._wanted = (enabled, noise_suppression)
        self._pending = np.zeros(0, np.float32)
        self._pending_time = 0.0  # capture time of _pending's first sample
        self._timeline = -1e9  # capture time of the next sample to arrive (see _place)
        self._report_drift = 0.0  # how far the reported capture times have wandered from the timeline
        self._last_played = -1e9  # when the reference last had something in it
        self.monitor = EchoMonitor()
        self._recent_near = _Recent(round(RECENT_S * PROTOCOL_RATE))
        self._echo_present: bool | None = None  # None: not known yet (see echo_heard)
        self._absent_checks = 0  # checks in a row that found no echo
        self._check_scores: deque[float] = deque(maxlen=TYPICAL_CHECKS)  # the last checks' likeness
        self._playing_frames = 0  # frames of playback so far
        self._next_check = PRESENCE_EVERY  # the playback frame at which the presence check next runs
        self._recent_far = _Recent(round(RECENT_S * PROTOCOL_RATE))
        self._echo_lag: int | None = None  # samples from the reference to its echo, once a check found it
        self._delay = EchoDelay(LAG_AGREES_S * PROTOCOL_RATE)  # holds that delay still (echo_delay.py)
        # The frame count after which the excess's reference lines up with the echo: never while the delay
        # is not trusted (after the reference was placed afresh, the new placement is off by the device's
        # reported-time error, 7-20 ms on a loaded machine, until a check measures it on audio placed afresh
        # alone; after a jump of more than LAG_AGREES_S with no placement to explain it, until a second
        # check agrees), and once it is again, when what the excess holds of the reference read at the old
        # delay has passed through.
        self._aligned_after = _NEVER
        self._placements = self._checked_placements = 0  # the reference's placements seen, and at the last check
        self._excess: EchoExcess | None = None
        # The part of the frame just handed on that the echo cannot explain (EchoExcess; None where not
        # known): read by the barge-in detector on this same thread, during on_audio.
        self.last_excess: np.ndarray | None = None
        self.cpu_s = 0.0  # spent inside AEC3
        self.frames_cancelled = 0
        # Called on the capture worker with each frame cancelled, the reference frame handed to the excess
        # with it (None while there is no excess) and whether that reference lines up with the echo: what
        # `confide bench --aec-record` keeps for replaying the excess offline (app/bench/echo_recording.py).
        self.frame_tap: Callable[[np.ndarray, np.ndarray | None, bool], None] | None = None

    @property
    def enabled(self) -> bool:
        return self._wanted[0]

    def configure(self, enabled: bool, noise_suppression: bool) -> None:
        """From any thread; takes effect at the next chunk."""
        self._wanted = (enabled, noise_suppression)

    def process(self, chunk: np.ndarray, capture_time: float) -> None:
        enabled, noise_suppression = self._wanted
        if not enabled:
            self._processor = None
            self._flush_pending()
            self._on_audio(chunk, capture_time)
            return
        if self._processor is None or noise_suppression != self._noise_suppression:
            self._noise_suppression = noise_suppression
            # The high-pass filter (as in WebRTC's own pipeline) keeps rumble and DC out of the echo
            # estimate: on the harness's saturating speaker it raised ERLE from 23.5 to 28 dB and
            # halved the residual echo's speech-likeness (99th percentile VAD score 0.17 → 0.11).
            self._processor = AudioProcessor(sample_rate=PROTOCOL_RATE, echo_cancellation=True,
                                             noise_suppression=noise_suppression, high_pass_filter=True)
        start = self._place(chunk, capture_time)
        if not len(self._pending):
            self._pending_time = start
            if not self._echo_possible(start, len(chunk)):
                self._on_audio(chunk, start)  # nothing played lately: no echo, no framing delay
                return
        self._pending = np.concatenate((self._pending, chunk)) if len(self._pending) else chunk
        while len(self._pending) >= FRAME:
            frame, frame_start = self._pending[:FRAME], self._pending_time
            self._pending = self._pending[FRAME:]
            self._pending_time += FRAME / PROTOCOL_RATE
            cleaned = self._cancel(frame, frame_start)
            self._on_audio(cleaned, frame_start)
            self.last_excess = None

    def _place(self, chunk: np.ndarray, capture_time: float) -> float:
        """Where `chunk` starts on a steady timeline: the stream's own sample count from where it was
        placed. Reported capture times jitter by a millisecond or two, and under PulseAudio they also
        wander from the sample count (by -630 to +1300 ppm on the harness, differently for the speaker):
        followed, even slowly, they made the echo's delay wobble by tens of samples within a second,
        which no correction of the delay keeps up with. So the reports only tell when the stream was
        reopened: one far from their own slowly followed trend restarts the timeline there, less the
        wander so far (which belongs to the sound server, not the stream: the speaker's placement runs
        on the same footing). What remains between the two streams' clocks, EchoDelay takes out."""
        error = capture_time - (self._timeline + self._report_drift)
        if abs(error) > RESYNC_S:
            self._flush_pending()  # a new stream: its audio does not follow on from what we hold
            self._timeline = capture_time - self._report_drift
        else:
            self._report_drift += error * REPORT_NUDGE
        start = self._timeline
        self._timeline += len(chunk) / PROTOCOL_RATE
        return start

    def reset(self) -> None:
        """Forget the learnt echo path (after a device change)."""
        self._processor = None
        self._echo_present = None
        self._absent_checks = 0
        self._check_scores.clear()
        self._echo_lag = self._excess = None
        self._delay.reset()
        self._aligned_after = _NEVER

    @property
    def delay_drift_ppm(self) -> float:
        """How fast the echo's delay drifts between the two streams' clocks, as followed (EchoDelay)."""
        return self._delay.rate / PROTOCOL_RATE * 1e6

    @property
    def excess_margin_db(self) -> float | None:
        """By how much the excess over-subtracts the echo it predicts, as it measured the path (EchoExcess)."""
        return None if self._excess is None else round(float(self._excess.margin_db), 1)

    @property
    def excess_ear(self) -> bool:
        """Whether the detector has the excess to listen to (now or once the delay is verified again):
        from the first check that found the echo on."""
        return self._excess is not None

    def echo_heard(self) -> bool:
        """Whether the speaker's sound reaches the microphone (open speakers, not headphones). Until a
        second of playback has shown it, yes: the safe guess."""
        return self.enabled and self._echo_present is not False

    def _likeness(self, heard: np.ndarray) -> tuple[float, float]:
        """How much `heard` (the microphone's latest samples) looks like an echo of what was played: the
        highest normalised correlation with the played audio at any lag up to MAX_ECHO_LAG_S (0..1), and
        that lag in samples (to a fraction of one: the peak's parabola)."""
        if not self._recent_far.filled:
            return 0.0, 0
        heard = heard.astype(np.float64)
        far = self._recent_far.last(len(heard) + round(MAX_ECHO_LAG_S * PROTOCOL_RATE)).astype(np.float64)
        if len(heard) < 2 or len(far) < len(heard):
            return 0.0, 0
        heard -= heard.mean()
        energy = float(np.dot(heard, heard))
        if energy <= 0.0:
            return 0.0, 0
        # Full rate, by FFT: decimating without a filter aliased the treble differently at every lag,
        # and a full-band echo then scored as unlike the reply as a stranger's voice.
        size = 1 << int(np.ceil(np.log2(len(far) + len(heard))))
        spectrum = np.fft.rfft(far, size) * np.conj(np.fft.rfft(heard, size))
        products = np.fft.irfft(spectrum, size)[:len(far) - len(heard) + 1]  # one per lag
        squares = np.concatenate(([0.0], np.cumsum(far * far)))
        window_energy = squares[len(heard):] - squares[:-len(heard)]
        scores = np.abs(products) / np.sqrt(energy * np.maximum(window_energy, 1e-12))
        best = int(np.argmax(scores))
        between = 0.0
        if 0 < best < len(scores) - 1:
            before, peak, after = scores[best - 1], scores[best], scores[best + 1]
            curve = before - 2.0 * peak + after
            between = float(np.clip(0.5 * (before - after) / curve, -0.5, 0.5)) if curve < 0 else 0.0
        return float(np.clip(scores[best], 0.0, 1.0)), len(far) - len(heard) - best - between

    def _judge_presence(self, moment: float) -> None:
        heard = self._recent_near.last(round(PRESENCE_SPAN_S * PROTOCOL_RATE))
        if not self._echo_expected_in(len(heard)):
            return  # a reply just begun after a pause: its echo is not in the span yet, nor evidence against it
        if float(np.dot(heard, heard)) / max(1, len(heard)) < AUDIBLE_ECHO:
            self._echo_present, self._absent_checks = False, ABSENT_CHECKS  # the microphone heard nothing
            return
        likeness, lag = self._likeness(heard)
        if likeness >= ECHO_PRESENT:
            self._echo_present, self._absent_checks = True, 0
            placed_afresh = self._played.placements != self._checked_placements
            typical = float(np.median(self._check_scores)) if len(self._check_scores) >= 3 else 0.0
            self._check_scores.append(likeness)
            if likeness < TRUSTED_SHARE * typical and not placed_afresh and self._delay.target is not None:
                return  # the echo is there, but this peak is too faint to move the delay by
            # The reference slides to hold the delay at the first one measured; a jump is taken back too,
            # and keeps the learnt path (its gains per frequency do not depend on when the echo arrives).
            held = self._delay.measured(lag, moment - PRESENCE_SPAN_S / 2, placed_afresh)
            self._echo_lag, self._placements = round(self._delay.target), self._played.placements
            # After a placement, a jump is the placement's error, measured on audio it placed alone: taken
            # back and believed at once (waiting for a second check withheld the excess for 1.5 s after each
            # underrun, and most of the interruptions heard late on a loaded machine fell in those stretches).
            if not (held or placed_afresh):
                self._aligned_after = _NEVER
                self._next_check = self._playing_frames + CONFIRM_AFTER
            elif self._excess is None:
                self._aligned_after = self.frames_cancelled  # nothing read at another delay yet
            elif self._aligned_after == _NEVER:
                stale = -(-self._excess_reference_lag // FRAME)  # frames of reference read at the old delay
                self._aligned_after = self.frames_cancelled + stale + TAPS + 1
            self._checked_placements = self._played.placements
            if self._excess is None:
                self._excess = EchoExcess()
        elif likeness < ECHO_ABSENT:
            self._absent_checks += 1
            if self._absent_checks >= ABSENT_CHECKS:
                self._echo_present = False

    def _echo_expected_in(self, span: int) -> bool:
        """Whether the speaker played in most of what the microphone's last `span` samples would hold the
        echo of (read at the echo's delay where known): checks are counted in playback, across replies, so
        one may fall a few frames into a reply after a pause, and find the microphone silent."""
        played = self._recent_far.before_last(self._echo_lag or 0, span)
        frames = played[:len(played) // FRAME * FRAME].reshape(-1, FRAME)
        active = np.einsum("ij,ij->i", frames, frames) / FRAME >= ACTIVE_REFERENCE
        return bool(active.mean() >= 0.5) if len(active) else False

    @property
    def _excess_reference_lag(self) -> int:
        """How far back the excess's reference is read: LEAD short of the echo's delay."""
        return max(self._echo_lag - LEAD, 0)

    def _echo_possible(self, start: float, length: int) -> bool:
        if self._played.playing_at(start + length / PROTOCOL_RATE - self._delay.shift_at(start) / PROTOCOL_RATE):
            self._last_played = start
        return start - self._last_played < ECHO_TAIL_S

    def _cancel(self, frame: np.ndarray, start: float) -> np.ndarray:
        far = self._played.window(start - self._delay.shift_at(start) / PROTOCOL_RATE, FRAME)
        if far.any():
            self._last_played = start
        began = time.thread_time()
        cleaned = self._processor.process(np.ascontiguousarray(frame, np.float32), far)
        self.cpu_s += time.thread_time() - began
        self.frames_cancelled += 1
        self._recent_near.add(frame)
        self._recent_far.add(far)
        delayed_far, aligned = None, False
        if self._excess is not None and self.echo_heard():  # with headphones on nobody reads it
            if self._played.placements != self._placements:
                self._placements, self._aligned_after = self._played.placements, _NEVER
                # Measure the new placement's delay as soon as the check's span holds only audio placed by it.
                self._next_check = self._playing_frames + round(PRESENCE_SPAN_S * PROTOCOL_RATE / FRAME)
            delayed_far = self._recent_far.before_last(self._excess_reference_lag, FRAME)
            # Not learnt from a reference off the echo: its weights would spread over the wrong taps (the
            # likely reason believing the check at once, while it went on learning, let the echo through
            # in 15 of 200 replies; README, run 14).
            aligned = self.frames_cancelled > self._aligned_after
            excess = self._excess.process(frame, delayed_far, learn=aligned)
            self.last_excess = excess if self._excess.ready and aligned else None
        if self.frame_tap is not None:
            self.frame_tap(frame, delayed_far, aligned)
        if far.any():
            self._playing_frames += 1
            if self._playing_frames >= self._next_check:
                self._next_check = self._playing_frames + PRESENCE_EVERY
                self._judge_presence(start + FRAME / PROTOCOL_RATE)
        if self.monitor.add(frame, cleaned, far) and self.echo_heard() and self._on_failing is not None:
            self._on_failing()  # the echo is there and getting through (not noise the canceller cannot touch)
        if not self.echo_heard():
            # Nothing of the speaker reaches the microphone (headphones): the raw signal is the person
            # alone, and AEC3's double-talk suppression would only dull their first syllable.
            return frame
        return cleaned

    def _flush_pending(self) -> None:
        if len(self._pending):
            self._on_audio(self._pending, self._pending_time)
        self._pending = np.zeros(0, np.float32)
