"""What the running app does, and when: engine events as they reach its link thread, barge-ins as its
microphone worker fires them, states as its controller derives them.

Observation only: it listens to signals the app already emits. Engine events and barge-ins are taken
with direct connections, on the emitting thread, so their timestamps carry no GUI-thread delay.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from PySide6.QtCore import Qt

from app.state import AppState

_AUDIO_DELTAS = ("response.output_audio.delta", "response.audio.delta")


@dataclass(frozen=True)
class BargeIn:
    response_id: str
    onset: float  # capture time of the chunk that tipped the detector (monotonic)
    fired: float  # when the microphone worker silenced the speaker


class AppProbe:
    def __init__(self, confide):
        self._lock = threading.Lock()
        self._first_audio: dict[str, float] = {}  # response id -> arrival of its first audio delta
        self._barge_ins: list[BargeIn] = []
        self._states: list[tuple[float, AppState]] = []
        self.engine_model: str | None = None
        self.hotkeys_ready = False
        self.hotkey_fired_at: float | None = None  # after the app's own handler ran (it connected first)
        self.messages: list[str] = []  # what the app told the person
        direct = Qt.ConnectionType.DirectConnection
        confide.bridge.event.connect(self._on_engine_event, direct)
        confide.bridge.barge_in.connect(self._on_barge_in, direct)
        confide.controller.state_changed.connect(self._on_state)
        confide.hotkeys.ready.connect(self._on_hotkeys_ready)
        confide.hotkeys.triggered.connect(self._on_hotkey)
        confide.controller.message.connect(lambda text, _error: self.messages.append(text))

    # --- on the app's threads ------------------------------------------------------------------------

    def _on_engine_event(self, event: dict) -> None:  # the link thread: keep it short
        kind = event.get("type")
        if kind in _AUDIO_DELTAS:
            response_id = event.get("response_id") or ""
            if response_id not in self._first_audio:
                with self._lock:
                    self._first_audio.setdefault(response_id, time.monotonic())
        elif kind == "session.created":
            self.engine_model = (event.get("session") or {}).get("model")

    def _on_barge_in(self, response_id: str, onset: float) -> None:  # the microphone worker
        with self._lock:
            self._barge_ins.append(BargeIn(response_id, onset, time.monotonic()))

    def _on_state(self, state: AppState, _detail: str) -> None:
        self._states.append((time.monotonic(), state))

    def _on_hotkeys_ready(self) -> None:
        self.hotkeys_ready = True

    def _on_hotkey(self, name: str) -> None:
        if name == "toggle_window":
            self.hotkey_fired_at = time.monotonic()

    # --- questions the benchmark asks ---------------------------------------------------------------

    def first_audio_since(self, moment: float) -> float | None:
        """When the first audio delta of a reply started after `moment` reached the app."""
        with self._lock:
            times = [t for t in self._first_audio.values() if t >= moment]
        return min(times) if times else None

    def barge_ins_since(self, moment: float) -> list[BargeIn]:
        with self._lock:
            return [b for b in self._barge_ins if b.fired >= moment]

    def reached_since(self, state: AppState, moment: float) -> bool:
        return any(at >= moment and s is state for at, s in self._states)
