"""Audio standby: when nothing can happen for a while, the microphone and speaker streams close.

An open PortAudio stream costs a few percent of a core even in silence (a callback every 5-10 ms, the
sound server's client thread, the capture worker), which a tray app running all day must not spend.
In push-to-talk mode, idle or muted, nothing needs the microphone or the speaker until the person acts,
so after STANDBY_AFTER_S both close. Every action leaves IDLE first (the talk key and a screen question
go to LISTENING, a typed question to THINKING), and the streams reopen on that state change, well before
a reply's first audio arrives; a stream opens in a few tens of milliseconds.
Hands-free keeps both open: the microphone is the way in.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from PySide6.QtCore import QObject, QTimer

from app.state import AppState

log = logging.getLogger(__name__)

STANDBY_AFTER_S = 5.0
RESTING_STATES = (AppState.IDLE, AppState.MUTED)


class AudioStandby(QObject):
    def __init__(self, microphone, speaker, on_device_failed: Callable[[str, str], None], parent=None,
                 after_s: float = STANDBY_AFTER_S):
        """`microphone` and `speaker` have start() -> bool, stop() and last_error;
        `on_device_failed(kind, message)` hears of a stream that would not reopen."""
        super().__init__(parent)
        self._devices = {"microphone": microphone, "speaker": speaker}
        self._on_device_failed = on_device_failed
        self._timer = QTimer(self, singleShot=True, interval=round(after_s * 1000), timeout=self._rest)
        self.resting = False

    def state_changed(self, state: AppState, _detail: str = "") -> None:
        if state in RESTING_STATES:
            if not self.resting and not self._timer.isActive():
                self._timer.start()
        else:
            self._timer.stop()
            self.wake()

    def wake(self) -> None:
        if not self.resting:
            return
        self.resting = False
        for kind, device in self._devices.items():
            if not device.start():
                self._on_device_failed(kind, device.last_error or f"The {kind} could not be opened.")
        log.info("audio streams open again")

    def stop(self) -> None:
        self._timer.stop()

    def _rest(self) -> None:
        if self._devices["speaker"].playing is not None:
            self._timer.start()  # a reply still plays out (stopped, not yet drained): look again later
            return
        self.resting = True
        for device in self._devices.values():
            device.stop()
        log.info("audio streams closed until needed (push-to-talk, idle)")
