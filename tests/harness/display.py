"""A real X display for desktop tests: Xvfb, optionally a system-tray host (trayer). A pytest plugin.

Load it as a plugin, from a test module or (better, so that every QApplication in the run gets it) from
the root conftest:

    pytest_plugins = ["tests.harness.display"]
    pytestmark = pytest.mark.usefixtures("x_display")

Not by importing the fixtures: an imported fixture is a new fixture in every module that imports it, and a
second module would start a second X server while the QApplication stays connected to the first. Helpers
for tests live in tests.harness.xdo.

`x_display` (session scope) starts Xvfb and trayer and points this process at them, and pytest-qt's
`qapp` is made to wait for it. `bare_display` (no tray host),
`no_record_display` (Xvfb without the RECORD extension) and `display_factory` (private displays) are for
code run in a subprocess on a display of its own.

In CI (CI=true) a missing binary fails the test: a desktop test that skips proved nothing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import select
import subprocess
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from tests.harness.xdo import DIE_WITH_PARENT, _qt_application, require_binaries, stop_process, wait_until

TRAY_SELECTION = "_NET_SYSTEM_TRAY_S0"

# What a Qt process on the test display must not see: Qt picks a D-Bus tray (StatusNotifierItem) over the
# X11 one when a session bus is set, and a Wayland hint sends hotkeys down their fallback path.
_UNSET_FOR_X11 = ("DBUS_SESSION_BUS_ADDRESS", "WAYLAND_DISPLAY")


@dataclasses.dataclass
class XDisplay:
    """A running X server (and maybe a tray host) that tests can point programs at."""

    name: str  # e.g. ":3"
    log_dir: Path
    has_record: bool
    processes: list[subprocess.Popen] = dataclasses.field(default_factory=list)  # stopped last-first
    until_exit: bool = False  # the processes live as long as this one (see running_display)

    @property
    def env(self) -> dict[str, str]:
        """The environment for a child process that should run on this display with the X11 tray."""
        env = {k: v for k, v in os.environ.items() if k not in _UNSET_FOR_X11}
        env.update(DISPLAY=self.name, QT_QPA_PLATFORM="xcb", XDG_SESSION_TYPE="x11")
        return env

    @property
    def has_tray(self) -> bool:
        return self.selection_owner() != 0

    def start_tray_host(self) -> subprocess.Popen:
        """Start trayer and wait until it owns the system-tray selection (a fixed sleep is not enough)."""
        require_binaries("trayer")
        log_path = self.log_dir / "trayer.log"
        with open(log_path, "ab") as log:
            process = subprocess.Popen(
                [*(DIE_WITH_PARENT if self.until_exit else []), "trayer", "--edge", "top", "--align", "right",
                 "--widthtype", "request", "--height", "24",
                 "--transparent", "false"],
                env=self.env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)
        self.processes.append(process)
        wait_until(lambda: process.poll() is not None or self.selection_owner() != 0, timeout=10,
                   what=f"trayer to own {TRAY_SELECTION}")
        if process.poll() is not None:
            raise RuntimeError(f"trayer exited: {log_path.read_text(errors='replace')[-2000:]}")
        return process

    def stop(self) -> None:
        while self.processes:
            stop_process(self.processes.pop())

    def selection_owner(self, selection: str = TRAY_SELECTION) -> int:
        """The X window owning `selection`, 0 when nobody does."""
        from Xlib import X, display

        connection = display.Display(self.name)
        try:
            owner = connection.get_selection_owner(connection.intern_atom(selection))
            return 0 if owner in (None, X.NONE) else int(owner.id)
        finally:
            connection.close()

    def embedded_geometry(self, window_id: int) -> tuple[int, int, int, int] | None:
        """Where an X window embedded in another (a tray icon docked by the tray host) is on screen, as
        (x, y, width, height); None while it is not mapped, not viewable, or still a child of the root."""
        from Xlib import X, display, error

        connection = display.Display(self.name)
        try:
            window = connection.create_resource_object("window", window_id)
            root = connection.screen().root
            if window.get_attributes().map_state != X.IsViewable or window.query_tree().parent.id == root.id:
                return None
            size = window.get_geometry()
            origin = window.translate_coords(root, 0, 0)  # the root's origin in window coordinates
            return -origin.x, -origin.y, size.width, size.height
        except error.XError:
            return None  # the window is gone
        finally:
            connection.close()

    def input_focus(self) -> int:
        """The X window with the keyboard focus (0: none, 1: whatever is under the pointer)."""
        from Xlib import display

        connection = display.Display(self.name)
        try:
            focus = connection.get_input_focus().focus
            return focus if isinstance(focus, int) else int(focus.id)
        finally:
            connection.close()


def _start_xvfb(log_path: Path, extra_args: tuple[str, ...], prefix: list[str]) -> tuple[subprocess.Popen, str]:
    """Start Xvfb on a display number it picks itself (-displayfd) and wait until it accepts clients."""
    read_end, write_end = os.pipe()
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [*prefix, "Xvfb", "-displayfd", str(write_end), "-screen", "0", "1920x1080x24", "-nolisten", "tcp", *extra_args],
            pass_fds=(write_end,), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True)  # a Ctrl+C on pytest must not reach it before we stop it ourselves
    os.close(write_end)
    number = b""
    try:
        deadline = time.monotonic() + 10.0
        while not number.endswith(b"\n"):
            remaining = deadline - time.monotonic()
            if remaining <= 0 or process.poll() is not None:
                raise RuntimeError(f"Xvfb did not start: {log_path.read_text(errors='replace')[-2000:]}")
            if select.select([read_end], [], [], remaining)[0]:
                number += os.read(read_end, 32)
    except BaseException:
        stop_process(process)
        raise
    finally:
        os.close(read_end)
    return process, f":{int(number.strip())}"


@contextlib.contextmanager
def running_display(log_dir: Path, *, tray: bool, record: bool = True, until_exit: bool = False) -> Iterator[XDisplay]:
    """An Xvfb (with trayer when `tray`; without the RECORD extension when not `record`) for the block.

    `until_exit`: for the display this process's own QApplication is on. Qt stays connected to it until the
    interpreter ends, and Xlib ends a process whose X server went away with exit(1), so the display is left
    running after the block and dies with this process (a parent-death signal), not before it."""
    require_binaries("Xvfb", *(["setpriv"] if until_exit else []))
    log_dir.mkdir(parents=True, exist_ok=True)
    prefix = DIE_WITH_PARENT if until_exit else []
    server, name = _start_xvfb(log_dir / "xvfb.log", () if record else ("-extension", "RECORD"), prefix)
    xdisplay = XDisplay(name=name, log_dir=log_dir, has_record=record, processes=[server], until_exit=until_exit)
    try:
        if tray:
            xdisplay.start_tray_host()
        yield xdisplay
    except BaseException:
        xdisplay.stop()
        raise
    if not until_exit:
        xdisplay.stop()


@contextlib.contextmanager
def _environment(changes: Mapping[str, str | None]) -> Iterator[None]:
    saved = {key: os.environ.get(key) for key in changes}
    try:
        for key, value in changes.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(scope="session")
def x_display(tmp_path_factory) -> Iterator[XDisplay]:
    """Xvfb with a system-tray host, and this process pointed at it (for Qt, pynput and xdotool)."""
    if _qt_application() is not None:
        pytest.fail("a QApplication exists already and cannot move to the test X display: load "
                    "tests.harness.display with pytest_plugins (it starts the display before qapp)",
                    pytrace=False)
    with running_display(tmp_path_factory.mktemp("x-display"), tray=True, until_exit=True) as xdisplay:
        changes: dict[str, str | None] = {key: None for key in _UNSET_FOR_X11}
        changes.update(DISPLAY=xdisplay.name, QT_QPA_PLATFORM="xcb", XDG_SESSION_TYPE="x11")
        with _environment(changes):
            yield xdisplay


@pytest.hookimpl(wrapper=True)
def pytest_fixture_setup(fixturedef, request):
    """pytest-qt's QApplication comes up on the test display, in every module once this plugin is loaded: Qt
    connects to one display for life, so the display has to exist first."""
    if fixturedef.argname == "qapp":
        request.getfixturevalue("x_display")
    return (yield)


@pytest.fixture(scope="session")
def bare_display(tmp_path_factory) -> Iterator[XDisplay]:
    """A second Xvfb with no tray host; run the code under test in a subprocess with `bare_display.env`."""
    with running_display(tmp_path_factory.mktemp("bare-display"), tray=False) as xdisplay:
        yield xdisplay


@pytest.fixture(scope="session")
def no_record_display(tmp_path_factory) -> Iterator[XDisplay]:
    """An Xvfb without the RECORD extension, where global hotkeys cannot work."""
    with running_display(tmp_path_factory.mktemp("no-record-display"), tray=False, record=False) as xdisplay:
        yield xdisplay


@pytest.fixture
def display_factory(tmp_path):
    """Start private displays for one test: `display_factory(tray=False, record=True) -> XDisplay`. Everything
    they run (a tray host started later included) is stopped after the test."""
    with contextlib.ExitStack() as stack:
        count = iter(range(1000))

        def start(tray: bool = False, record: bool = True) -> XDisplay:
            return stack.enter_context(running_display(tmp_path / f"display-{next(count)}", tray=tray, record=record))

        yield start
