"""Run an installed (or bundled) Confide as a person would, on the harness's desktop, and watch it from outside.

Shared by tests/installers/test_deb.py and installers/measure: the app is a separate program here (the
PyInstaller bundle), so everything is observed the way a person or the desktop would see it: its tray icon
docked by the tray host (X11 windows with its PID), its log, what comes out of the virtual speaker.
"""

from __future__ import annotations

import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tests.harness.xdo import stop_process

_UNSET = ("DBUS_SESSION_BUS_ADDRESS", "WAYLAND_DISPLAY", "PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV",
          "CONFIDE_MODELS_DIR")


def app_environment(display, pulse, home: Path) -> dict[str, str]:
    """A fresh user for the app: its own config, data, state, cache (so a first start is a first run) and
    runtime folder, on the harness's display and sound server."""
    env = {key: value for key, value in pulse.client_env.items() if key not in _UNSET}
    env.update(DISPLAY=display.name, QT_QPA_PLATFORM="xcb", XDG_SESSION_TYPE="x11", HOME=str(home))
    for name in ("XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_STATE_HOME", "XDG_CACHE_HOME"):
        folder = home / name.lower()
        folder.mkdir(parents=True, exist_ok=True)
        env[name] = str(folder)
    runtime = Path(tempfile.mkdtemp(prefix="confide-run-", dir=home))  # 0700, for the single-instance socket
    env["XDG_RUNTIME_DIR"] = str(runtime)
    return env


def write_settings(env: dict[str, str], text: str) -> None:
    path = Path(env["XDG_CONFIG_HOME"]) / "confide" / "settings.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@dataclass
class RunningApp:
    process: subprocess.Popen
    log_path: Path
    started: float  # time.monotonic() at launch
    env: dict[str, str]
    executable: str
    marks: dict[str, float] = field(default_factory=dict)  # what happened, seconds after launch

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_log(self, text: str, timeout: float, what: str) -> float:
        return self._wait(lambda: text in self.log(), timeout, what)

    def wait_for_tray_icon(self, display, timeout: float = 120.0) -> float:
        return self._wait(lambda: docked_icon(display, self.process.pid) is not None, timeout, "the tray icon to dock")

    def _wait(self, condition, timeout: float, what: str) -> float:
        deadline = time.monotonic() + timeout
        while not condition():
            if self.process.poll() is not None:
                raise AssertionError(f"Confide exited ({self.process.returncode}) while waiting for {what}:\n"
                                     f"{self.log()[-4000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}:\n{self.log()[-4000:]}")
            time.sleep(0.05)
        seconds = time.monotonic() - self.started
        self.marks[what] = round(seconds, 2)
        return seconds

    def quit(self, timeout: float = 30.0) -> int:
        """`confide --quit`, as a person's second command would; killed if it does not go."""
        subprocess.run([self.executable, "--quit"], env=self.env, stdin=subprocess.DEVNULL,
                       capture_output=True, timeout=60)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            stop_process(self.process)
            raise AssertionError(f"Confide did not quit on `confide --quit`:\n{self.log()[-3000:]}") from None


def launch(executable: str, env: dict[str, str], log_path: Path) -> RunningApp:
    with open(log_path, "wb") as log:
        process = subprocess.Popen([executable, "-v"], env=env, stdin=subprocess.DEVNULL, stdout=log,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    return RunningApp(process, log_path, time.monotonic(), env, executable)


def docked_icon(display, pid: int) -> tuple[int, int, int, int] | None:
    """Where the process's tray icon is, once the tray host has embedded it (a viewable X window with its
    _NET_WM_PID whose parent is not the root); None before."""
    from Xlib import X, Xatom, display as xdisplay, error

    connection = xdisplay.Display(display.name)
    try:
        pid_atom = connection.intern_atom("_NET_WM_PID")
        root = connection.screen().root
        pending = [root]
        while pending:
            window = pending.pop()
            try:
                children = window.query_tree().children
            except error.XError:
                continue
            pending.extend(children)
            if window.id == root.id:
                continue
            try:
                owner = window.get_full_property(pid_atom, Xatom.CARDINAL)
            except error.XError:
                continue
            if owner is None or not owner.value or int(owner.value[0]) != pid:
                continue
            if window.get_attributes().map_state != X.IsViewable:
                continue
            geometry = display.embedded_geometry(window.id)
            if geometry is not None and geometry[2] > 0:
                return geometry
        return None
    finally:
        connection.close()


def spoken_question_answer(pulse, question: np.ndarray, rate: int, timeout: float = 120.0) -> np.ndarray:
    """Say `question` into the virtual microphone and record the virtual speaker until the reply has played
    (sound, then 2 s of silence). Returns the speaker's audio (48 kHz float32)."""
    from tests.harness.pulse import RATE, sound_ms

    with pulse.record_speaker() as recording:
        pulse.feed_mic(np.concatenate([np.zeros(rate // 5, np.float32), question]), rate).wait(30)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            audio = recording.audio()
            if sound_ms(audio, RATE) > 300 and sound_ms(audio[-2 * RATE:], RATE) == 0:
                break
            time.sleep(0.2)
        return recording.audio()
