"""Where each microphone chunk goes: to the engine while listening, to the barge-in detector while a reply
plays. Runs on the capture worker thread, so a barge-in silences the speaker without waiting for the GUI.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import numpy as np

LEVEL_INTERVAL_S = 0.05  # the meter needs 20 updates a second, not one per 10 ms chunk


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
        self._half_duplex = False  # the echo gets through: the engine hears nothing while a reply plays
        self._level_sum, self._level_count, self._level_due = 0.0, 0, 0.0

    def set_streaming(self, streaming: bool) -> None:
        with self._lock:
            self._streaming = streaming

    def set_half_duplex(self, on: bool) -> None:
        """When echo cancellation cannot cope: nothing goes to the engine while a reply plays, so its own
        speech detector cannot take the echo for the person; only the local detector can interrupt."""
        with self._lock:
            self._half_duplex = on

    def guard(self, response_id: str | None) -> None:
        """Listen for the person talking over `response_id` (None: nothing is playing)."""
        with self._lock:
            if response_id != self._guarding:
                self._fresh_guard = response_id is not None
            self._guarding = response_id

    def on_audio(self, chunk: np.ndarray, capture_time: float | None = None) -> None:
        with self._lock:
            streaming, guarding, fresh = self._streaming, self._guarding, self._fresh_guard
            self._fresh_guard = False
            if guarding is not None and self._half_duplex:
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
            self._silence_speaker(guarding)  # first: the person must hear silence before anything else
            self._on_barge_in(guarding, capture_time if capture_time is not None else time.monotonic())

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
