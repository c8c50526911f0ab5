"""Acting on the test X display from outside the code under test, and waiting for what follows.

Keyboard and mouse input comes from xdotool, another process, over XTEST: the code under test receives it
from the X server exactly as it would a person's, not from a Qt test helper posting events into a widget.

Test modules import these helpers from here, never from tests.harness.display: that module is a pytest
plugin (see its docstring) and must be imported first by pytest itself.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Protocol

import pytest

REPOSITORY = Path(__file__).resolve().parents[2]
APT_PACKAGES = (
    "xvfb xauth x11-utils xdotool trayer libxcb-cursor0 libxcb-icccm4 libxcb-keysyms1 "
    "libxkbcommon-x11-0 libegl1 libgl1 fonts-dejavu-core"
)


class HasEnvironment(Protocol):
    @property
    def env(self) -> dict[str, str]: ...


def require_binaries(*names: str) -> None:
    """Fail (in CI) or skip (elsewhere) when a program the harness needs is not installed."""
    missing = [name for name in names if shutil.which(name) is None]
    if not missing:
        return
    message = f"missing {', '.join(missing)}; install: apt-get install -y --no-install-recommends {APT_PACKAGES}"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def wait_until(
    predicate: Callable[[], object],
    timeout: float = 5.0,
    interval: float = 0.01,
    what: str = "condition",
) -> float:
    """Poll `predicate` until it is truthy; return the seconds it took. Spins the Qt event loop while waiting
    when there is one, so widgets keep reacting to the X server."""
    app = _qt_application()
    start = time.perf_counter()
    deadline = start + timeout
    while True:
        if app is not None:
            app.processEvents()
        if predicate():
            return time.perf_counter() - start
        if time.perf_counter() > deadline:
            raise AssertionError(f"timed out after {timeout:.1f} s waiting for {what}")
        time.sleep(interval)


def _qt_application():
    try:
        from PySide6.QtCore import QCoreApplication
    except ImportError:
        return None
    return QCoreApplication.instance()


# Children get SIGTERM when the test process dies, even by SIGKILL (setpriv sets PR_SET_PDEATHSIG and
# execs; no Python runs between fork and exec, which a preexec_fn would do with audio threads about).
DIE_WITH_PARENT = ["setpriv", "--pdeathsig", "TERM", "--"] if shutil.which("setpriv") else []


def stop_process(process: subprocess.Popen, grace: float = 3.0) -> None:
    """Stop one process we started, by its PID: terminate, then kill if it ignores us; close our pipes."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=grace)
    for stream in (process.stdin, process.stdout):
        if stream is not None and not stream.closed:
            with contextlib.suppress(OSError, ValueError):
                stream.close()


def run_python(code: str, env: Mapping[str, str], timeout: float = 60.0) -> subprocess.CompletedProcess:
    """Run a Python snippet in a fresh interpreter of this virtualenv, from the repository root (a process of
    its own: the way to use a second display, since one QApplication stays on one display)."""
    env = dict(env)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPOSITORY), env.get("PYTHONPATH")]))
    return subprocess.run([sys.executable, "-c", code], env=env, cwd=REPOSITORY, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=timeout)


# --- xdotool ---------------------------------------------------------------------------------------------------


def xdotool(display: HasEnvironment, *args: str, timeout: float = 10.0) -> None:
    """Run one xdotool command on `display` to the end; raise with its output when it fails."""
    require_binaries("xdotool")
    result = subprocess.run(["xdotool", *args], env=display.env, stdin=subprocess.DEVNULL,
                            capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise AssertionError(f"xdotool {' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}")


def xdotool_async(display: HasEnvironment, *args: str) -> subprocess.Popen:
    """Start xdotool without waiting, so the Qt event loop keeps running while it types."""
    require_binaries("xdotool")
    return subprocess.Popen(["xdotool", *args], env=display.env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def click(display: HasEnvironment, x: int, y: int, button: int = 1) -> subprocess.Popen:
    """Move the pointer to (x, y) in screen coordinates and click; returns the running xdotool."""
    # No --sync: it waits forever when the pointer is already there. XTEST keeps the move before the click.
    return xdotool_async(display, "mousemove", str(x), str(y), "click", str(button))


def mousemove(display: HasEnvironment, x: int, y: int) -> None:
    xdotool(display, "mousemove", str(x), str(y))


def key(display: HasEnvironment, combination: str) -> subprocess.Popen:
    """Press and release a combination such as "ctrl+alt+space", ignoring modifiers already held. Wait for
    one to finish before the next: overlapping runs restore each other's modifiers."""
    return xdotool_async(display, "key", "--clearmodifiers", combination)


def keydown(display: HasEnvironment, combination: str) -> subprocess.Popen:
    return xdotool_async(display, "keydown", combination)


def keyup(display: HasEnvironment, combination: str) -> subprocess.Popen:
    return xdotool_async(display, "keyup", combination)
