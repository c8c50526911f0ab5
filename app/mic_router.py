"""Where each microphone chunk goes: to the engine while listening, to the barge-in detector while a reply
plays. Runs on the capture worker thread, so a barge-in silences the speaker without waiting for the GUI.

While a reply plays, the local detector alone decides whether the person is talking: the engine gets no
audio then, so what is left of the speakers' echo can never start a turn there. The audio is held back
instead, and on a barge-in the last HOLD_S of it goes to the engine first, so the words that
interrupted are not lost.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable

import numpy as np

from app.audio.capture import PROTOCOL_RATE

LEVEL_INTERVAL_S = 0.05  # the meter needs 20 updates a second, not one per 10 ms chunk
# Held back while a reply plays: covers the detector's decision time (≤ 0.3 s) and the engine's own
# speech padding before the onset (0.3 s), with room to spare.
HOLD_S = 1.0


class MicRouter:
    def __init__(self, send_audio: Callable[[np.ndarray], object], speech_onset: Callable[[np.ndarray], bool],
                 reset_speech_onset: Callable[[], None], silence_speaker: Callable[[str], object],
                 on_barge_in: Callable[[str, float], None], on_level: Callable[[float], None] | None = None):
        """`speech_onset(chunk) -> bool` is the local speech detector (fed on this thread only);
        `silence_speaker(response_id)` must stop the reply's audio at once;
        `on_barge_in(response_id, onset_monotonic)` then tells the controller."""
        self._send_audio = send_audio
        self._speech_onset = speech_onset
        self._reset_speech_onset = reset_speech_onset
        self._silence_speaker = silence_speaker
        self._on_barge_in = on_barge_in
        self._on_level = on_level
        self._lock = threading.Lock()
        self._streaming = False
        self._guarding: str | None = None  # the response a barge-in would interrupt
        self._fresh_guard = False  # the detector must forget older audio before judging this reply
        self._held: collections.deque[np.ndarray] = collections.deque()  # streamed audio during a reply
        self._held_s = 0.0
        self._level_sum, self._level_count, self._level_due = 0.0, 0, 0.0

    def set_streaming(self, streaming: bool) -> None:
        with self._lock:
            self._streaming = streaming

    def guard(self, response_id: str | None) -> None:
        """Listen for the person talking over `response_id` (None: nothing is playing)."""
        with self._lock:
            if response_id != self._guarding:
                self._fresh_guard = response_id is not None
                self._held.clear()  # the reply ended with nobody talking over it: that audio was echo
                self._held_s = 0.0
            self._guarding = response_id

    def on_audio(self, chunk: np.ndarray, capture_time: float | None = None) -> None:
        with self._lock:
            streaming, guarding, fresh = self._streaming, self._guarding, self._fresh_guard
            self._fresh_guard = False
            if streaming and guarding is not None:
                self._hold(chunk)
                streaming = False
        if streaming:
            self._send_audio(chunk)
        self._report_level(chunk)
        if guarding is None:
            return
        if fresh:
            self._reset_speech_onset()
        if self._speech_onset(chunk):
            with self._lock:
                if self._guarding != guarding:
                    return  # the reply ended (or another began) while this chunk was analysed
                self._guarding = None
                held, self._held = list(self._held), collections.deque()
                self._held_s = 0.0
            self._silence_speaker(guarding)  # first: the person must hear silence before anything else
            self._on_barge_in(guarding, capture_time if capture_time is not None else time.monotonic())
            for piece in held:
                self._send_audio(piece)

    def _hold(self, chunk: np.ndarray) -> None:
        """Under the lock."""
        self._held.append(chunk)
        self._held_s += len(chunk) / PROTOCOL_RATE
        while self._held and self._held_s - len(self._held[0]) / PROTOCOL_RATE >= HOLD_S:
            self._held_s -= len(self._held.popleft()) / PROTOCOL_RATE

    def _report_level(self, chunk: np.ndarray) -> None:
        if self._on_level is None or not chunk.size:
            return
        self._level_sum += float(np.mean(np.square(chunk)))
        self._level_count += 1
        now = time.monotonic()
        if now >= self._level_due:
            rms = (self._level_sum / self._level_count) ** 0.5
            self._level_sum, self._level_count, self._level_due = 0.0, 0, now + LEVEL_INTERVAL_S
            # A meter reads in decibels: -60 dBFS empty, 0 dBFS full.
            self._on_level(min(1.0, max(0.0, 1.0 + 20 * np.log10(max(rms, 1e-6)) / 60)))
