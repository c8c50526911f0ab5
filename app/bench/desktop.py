"""The virtual desktop the benchmark runs the app on: the test harness's X display with a tray host and
its PulseAudio server, this process pointed at both, and a QApplication on that display.

The harness lives in the source checkout's tests/ folder, not in the installed package: it is imported
only here, lazily, and its absence is a one-line message rather than a traceback.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

SOURCE_ROOT = Path(__file__).resolve().parents[2]
SETUP_HINT = "run from a source checkout after ./dev test's setup"

# Qt prefers a D-Bus tray over the X11 one when a session bus is set, and a Wayland hint turns the global
# hotkeys off: neither may leak in from the person's own session.
_UNSET_FOR_X11 = ("DBUS_SESSION_BUS_ADDRESS", "WAYLAND_DISPLAY")
# The person's settings and history stay untouched. The cache stays: the models are assembled there.
_PRIVATE_FOLDERS = ("XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_STATE_HOME")


class DesktopUnavailable(RuntimeError):
    """The harness is missing or would not start; the message says what to do."""


@dataclass
class Desktop:
    display: object  # tests.harness.display.XDisplay
    pulse: object  # tests.harness.pulse.PulseHarness
    qt_app: object  # QApplication
    work_dir: Path


def load_harness():
    """The harness modules (display, pulse), or DesktopUnavailable. The `confide` script does not put the
    checkout on sys.path: the checkout this package was loaded from is added when it has tests/."""
    if (SOURCE_ROOT / "tests" / "harness").is_dir() and str(SOURCE_ROOT) not in sys.path:
        sys.path.insert(0, str(SOURCE_ROOT))
    try:
        from tests.harness import display, pulse
    except ImportError as error:
        raise DesktopUnavailable(f"the test harness cannot be imported ({error}): {SETUP_HINT}") from error
    return display, pulse


def _harness_refusals(pulse_module) -> tuple[type[BaseException], ...]:
    """What the harness raises when a program is missing: its own error, and pytest's skip/fail (which
    derive from BaseException, so they need naming)."""
    import pytest

    return pulse_module.HarnessUnavailable, pytest.skip.Exception, pytest.fail.Exception


def isolate_user_folders(root: Path) -> None:
    for name in _PRIVATE_FOLDERS:
        folder = root / name.lower()
        folder.mkdir(parents=True, exist_ok=True)
        os.environ[name] = str(folder)


@contextlib.contextmanager
def virtual_desktop(work_dir: Path | None = None) -> Iterator[Desktop]:
    """Xvfb + trayer + PulseAudio for the block, with this process's environment pointed at them and a
    QApplication created on the display. One per process: Qt stays on the display it first connected to."""
    display_module, pulse_module = load_harness()
    refusals = _harness_refusals(pulse_module)
    work_dir = Path(work_dir or tempfile.mkdtemp(prefix="confide-bench-"))
    isolate_user_folders(work_dir)
    try:
        with display_module.running_display(work_dir / "display", tray=True, until_exit=True) as xdisplay:
            for name in _UNSET_FOR_X11:
                os.environ.pop(name, None)
            os.environ.update(DISPLAY=xdisplay.name, QT_QPA_PLATFORM="xcb", XDG_SESSION_TYPE="x11")
            pulse = pulse_module.PulseHarness().start()
            try:
                from app.audio import devices

                devices.refresh()  # PortAudio scanned devices at import, before the server was up
                yield Desktop(xdisplay, pulse, _qt_application(), work_dir)
            finally:
                pulse.stop()
    except refusals as error:
        raise DesktopUnavailable(f"the desktop harness could not start ({error}); {SETUP_HINT}") from None


@contextlib.contextmanager
def virtual_audio(work_dir: Path | None = None) -> Iterator[object]:
    """PulseAudio with the virtual microphone and speaker only (no display), for the block."""
    _display_module, pulse_module = load_harness()
    refusals = _harness_refusals(pulse_module)
    isolate_user_folders(Path(work_dir or tempfile.mkdtemp(prefix="confide-bench-")))
    try:
        pulse = pulse_module.PulseHarness().start()
    except refusals as error:
        raise DesktopUnavailable(f"the audio harness could not start ({error}); {SETUP_HINT}") from None
    try:
        from app.audio import devices

        devices.refresh()
        yield pulse
    finally:
        pulse.stop()


def _qt_application():
    from PySide6.QtWidgets import QApplication

    if QApplication.instance() is not None:
        raise DesktopUnavailable("a QApplication exists already, on another display: run the bench in its own process")
    qt_app = QApplication(sys.argv[:1])
    qt_app.setApplicationName("Confide")
    qt_app.setQuitOnLastWindowClosed(False)  # as in the app: a hidden window is not an exit
    return qt_app
