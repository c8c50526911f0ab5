"""Running the app's Qt event loop while the benchmark waits, the way the app runs it itself.

A nested QEventLoop delivers queued signals and X events the moment they arrive; a timer only checks
the condition. Sleeping between processEvents calls instead would delay the controller, and so the
figures, by up to the sleep.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from PySide6.QtCore import QEventLoop, QTimer

CHECK_INTERVAL_MS = 5


class WaitTimedOut(RuntimeError):
    pass


def run_until(condition: Callable[[], object], timeout_s: float, what: str = "") -> float:
    """Run the event loop until `condition()` holds; the seconds it took. Raises WaitTimedOut (with
    `what`) unless `what` is empty, in which case a timeout just returns."""
    started = time.monotonic()
    if condition():
        return 0.0
    loop = QEventLoop()
    timer = QTimer()
    timer.setInterval(CHECK_INTERVAL_MS)
    outcome = {"met": False}

    def check() -> None:
        if condition():
            outcome["met"] = True
            loop.quit()
        elif time.monotonic() - started > timeout_s:
            loop.quit()

    timer.timeout.connect(check)
    timer.start()
    loop.exec()
    timer.stop()
    if not outcome["met"] and what:
        raise WaitTimedOut(f"timed out after {timeout_s:.0f} s waiting for {what}")
    return time.monotonic() - started


def run_for(seconds: float) -> None:
    """Let the app run undisturbed: no polling, so an idle measurement measures the app alone."""
    loop = QEventLoop()
    QTimer.singleShot(max(0, int(seconds * 1000)), loop.quit)
    loop.exec()
