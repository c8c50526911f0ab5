"""Echo cancellation on the microphone path: the assistant must not hear itself on open speakers.

WebRTC's AEC3 (pywebrtc-audio) sits between the microphone worker and the router, so the engine and
the local barge-in detector both get the echo-cancelled signal. Every 10 ms capture frame is paired
with what the speaker played at the frame's capture time (PlayedAudio: both on one clock), and AEC3
finds the remaining acoustic delay itself.

While nothing has played for a while, frames pass straight through: no echo to cancel, and no CPU
spent on it. EchoMonitor keeps the figures (ERLE) and the verdict on whether the canceller copes.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import numpy as np
from pywebrtc_audio import AudioProcessor

from app.audio.capture import PROTOCOL_RATE
from app.audio.echo_reference import PlayedAudio

FRAME = PROTOCOL_RATE // 100  # AEC3 works in 10 ms frames
# Echo rings on after the reply's last sample (the acoustic path plus the room): keep cancelling.
ECHO_TAIL_S = 1.0
# A capture time this far from where the last frame ended means the microphone stream was reopened.
RESYNC_S = 0.05
ACTIVE_REFERENCE = 1e-5  # -50 dBFS mean square: the speaker is really playing something
AUDIBLE_ECHO = 1e-6  # -60 dBFS at the microphone: quieter than that there is nothing to judge
MONITOR_WINDOW_S = 2.0  # the verdict looks at this much playback
MIN_ERLE_DB = 6.0  # below this over a whole window of playback, the echo is getting through


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
            return None if self.frames == 0 else round(_db(self.total_in, self.total_out), 1)


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
        self._last_played = -1e9  # when the reference last had something in it
        self.monitor = EchoMonitor()
        self.cpu_s = 0.0  # spent inside AEC3
        self.frames_cancelled = 0

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
            self._processor = AudioProcessor(sample_rate=PROTOCOL_RATE, echo_cancellation=True,
                                             noise_suppression=noise_suppression)
        if len(self._pending) and abs(capture_time - self._pending_end()) > RESYNC_S:
            self._flush_pending()  # a new stream: its audio does not follow on from what we hold
        if not len(self._pending):
            self._pending_time = capture_time
            if not self._echo_possible(capture_time, len(chunk)):
                self._on_audio(chunk, capture_time)  # nothing played lately: no echo, no framing delay
                return
        self._pending = np.concatenate((self._pending, chunk)) if len(self._pending) else chunk
        while len(self._pending) >= FRAME:
            frame, start = self._pending[:FRAME], self._pending_time
            self._pending = self._pending[FRAME:]
            self._pending_time += FRAME / PROTOCOL_RATE
            self._on_audio(self._cancel(frame, start), start)

    def reset(self) -> None:
        """Forget the learnt echo path (after a device change)."""
        self._processor = None

    def _echo_possible(self, start: float, length: int) -> bool:
        if self._played.playing_at(start + length / PROTOCOL_RATE):
            self._last_played = start
        return start - self._last_played < ECHO_TAIL_S

    def _cancel(self, frame: np.ndarray, start: float) -> np.ndarray:
        far = self._played.window(start, FRAME)
        if far.any():
            self._last_played = start
        began = time.thread_time()
        cleaned = self._processor.process(np.ascontiguousarray(frame, np.float32), far)
        self.cpu_s += time.thread_time() - began
        self.frames_cancelled += 1
        if self.monitor.add(frame, cleaned, far) and self._on_failing is not None:
            self._on_failing()
        return cleaned

    def _pending_end(self) -> float:
        return self._pending_time + len(self._pending) / PROTOCOL_RATE

    def _flush_pending(self) -> None:
        if len(self._pending):
            self._on_audio(self._pending, self._pending_time)
        self._pending = np.zeros(0, np.float32)
