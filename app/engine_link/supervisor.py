"""Starts the local engine as a child process, watches it, and brings it back when it crashes.

The engine announces itself with one JSON line on stdout (`{"event": "ready", "url": ...}`); its stderr
goes to a rotating log file (and its last lines to the crash message). A crash after the engine was ready
is restarted. An engine that cannot start at all (a missing model, a bad argument), or a crash loop, stops
the attempts with a message that says why: restarting would fail the same way. A crash loop is `max_crashes`
rapid crashes within `crash_window_s`, rapid meaning before the engine had served `stable_after_s` since it
got ready; they are restarted with growing delays. A crash of an engine that had been serving for longer
(killed mid-reply now and then over a long conversation) is no loop: it is restarted after the shortest
delay and the count starts afresh.

Threads: `start`, `stop` and `restart` may be called from any thread. `on_ready(url, token)`,
`on_crash(exit_code, stderr_tail)` and `on_status(text)` run on the supervisor's own threads (`on_status`
also on the thread calling `start`/`stop`), never with a lock held, so they may call back into the
supervisor; they should return quickly and hand GUI work to the GUI thread.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import logging.handlers
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import platformdirs

log = logging.getLogger(__name__)

STDERR_TAIL_LINES = 40
LOG_FILE_BYTES = 2_000_000
LOG_FILE_BACKUPS = 3


def default_token_file() -> Path:
    return Path(platformdirs.user_config_dir("confide")) / "engine-token"


def default_log_dir() -> Path:
    return Path(platformdirs.user_log_dir("confide"))


class EngineSupervisor:
    def __init__(self, extra_args: Sequence[str] = (), token_file: Path | None = None,
                 on_ready: Callable[[str, str], None] | None = None,
                 on_crash: Callable[[int, str], None] | None = None,
                 on_status: Callable[[str], None] | None = None,
                 *, log_dir: Path | None = None, env: Mapping[str, str] | None = None,
                 start_timeout_s: float = 300.0, stop_timeout_s: float = 10.0,
                 max_crashes: int = 4, crash_window_s: float = 120.0, stable_after_s: float = 30.0,
                 restart_delay_s: float = 0.5, max_restart_delay_s: float = 10.0):
        self.extra_args = list(extra_args)
        self.token_file = Path(token_file) if token_file else default_token_file()
        self._on_ready = on_ready or (lambda url, token: None)
        self._on_crash = on_crash or (lambda code, tail: None)
        self._on_status = on_status or (lambda text: None)
        self.log_path = (Path(log_dir) if log_dir else default_log_dir()) / "engine.log"
        self._env = dict(env) if env is not None else None
        self.start_timeout_s, self.stop_timeout_s = start_timeout_s, stop_timeout_s
        self.max_crashes, self.crash_window_s, self.stable_after_s = max_crashes, crash_window_s, stable_after_s
        self.restart_delay_s, self.max_restart_delay_s = restart_delay_s, max_restart_delay_s

        self._lock = threading.Lock()  # guards the process state below; never held while calling back
        self._log_lock = threading.Lock()
        self._process: subprocess.Popen | None = None
        self._generation = 0  # bumped by every launch and stop: threads of an older engine stand down
        self._wanted = False  # whether the engine should be running
        self.gave_up = False  # it could not start, or crashed too often: restarting stopped
        self._crash_times: collections.deque[float] = collections.deque()  # rapid crashes only
        self._ready_at: float | None = None  # when the running engine announced itself
        self._restart_timer: threading.Timer | None = None
        self._threads: list[threading.Thread] = []
        self._log_file: logging.Handler | None = None
        self.url: str | None = None
        self.token: str | None = None

    @property
    def pid(self) -> int | None:
        process = self._process
        return process.pid if process else None

    @property
    def command(self) -> list[str]:
        return [sys.executable, "-m", "engine", "serve", "--port", "0", "--token-file", str(self.token_file),
                "--parent-pid", str(os.getpid()), *self.extra_args]  # a killed app takes its engine with it

    def start(self) -> None:
        """Launch the engine unless it is already running; `on_ready` follows once it serves."""
        with self._lock:
            if self._process is not None:
                return
            self._wanted = True
            self.gave_up = False
            self._crash_times.clear()
            outcome = self._launch()
        self._status(outcome)

    def stop(self) -> None:
        """Stop the engine for good: SIGTERM (it shuts down in order), then SIGKILL if it hangs."""
        with self._lock:
            self._wanted = False
            self._generation += 1
            if self._restart_timer:
                self._restart_timer.cancel()
            process, self._process = self._process, None
            threads, self._threads = self._threads, []
            self.url = self.token = None
        if process is None:
            return
        _terminate(process, self.stop_timeout_s)
        for thread in threads:
            if thread is not threading.current_thread():
                thread.join(5)
        self._status("engine stopped")

    def restart(self) -> None:
        self.stop()
        self.start()

    # --- launching -----------------------------------------------------------------------------------

    def _launch(self) -> str:
        """Start one engine process and its two reader threads; returns the status to report.
        Called with the lock held."""
        self._generation += 1
        generation = self._generation
        self.url = self.token = None
        self._ready_at = None
        try:
            process = subprocess.Popen(
                self.command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                env=self._env, text=True, encoding="utf-8", errors="replace", bufsize=1,
                start_new_session=True,  # its own process group: a Ctrl+C meant for the app does not kill it
            )
        except OSError as error:
            self._wanted = False
            return f"the engine could not be launched: {error}"
        self._process = process
        tail: collections.deque[str] = collections.deque(maxlen=STDERR_TAIL_LINES)  # for the crash message
        self._write_log(f"--- engine started (pid {process.pid}): {' '.join(self.command)}")
        stderr_reader = threading.Thread(target=self._read_stderr, args=(process, tail),
                                         name=f"engine-stderr-{process.pid}", daemon=True)
        watcher = threading.Thread(target=self._watch, args=(process, generation, tail, stderr_reader),
                                   name=f"engine-watch-{process.pid}", daemon=True)
        self._threads = [stderr_reader, watcher]
        stderr_reader.start()
        watcher.start()
        return "starting the engine"

    def _read_stderr(self, process: subprocess.Popen, tail: collections.deque) -> None:
        for line in process.stderr:
            line = line.rstrip("\n")
            tail.append(line)
            self._write_log(line)

    def _watch(self, process: subprocess.Popen, generation: int, tail: collections.deque,
               stderr_reader: threading.Thread) -> None:
        timed_out = threading.Event()

        def give_up_waiting() -> None:
            timed_out.set()
            _kill(process)

        deadline = threading.Timer(self.start_timeout_s, give_up_waiting)
        deadline.daemon = True
        deadline.start()
        ready = None
        for line in process.stdout:  # the ready line, then whatever else the engine prints, into the log
            if ready is None:
                ready = _ready_url(line)
                if ready is not None:
                    deadline.cancel()
                    self._announce(ready, generation)
                    continue
            self._write_log(line.rstrip("\n"))
        deadline.cancel()
        exit_code = process.wait()
        stderr_reader.join(5)  # the whole stderr, for the message
        self._after_exit(exit_code, generation, ready is not None, timed_out.is_set(), list(tail))

    def _announce(self, url: str, generation: int) -> None:
        try:  # written by the engine (mode 0600) before it announced itself
            token = self.token_file.read_text(encoding="utf-8").strip()
        except OSError as error:
            self._status(f"the engine is running but its token file {self.token_file} cannot be read: "
                         f"{error.strerror}")
            return
        with self._lock:
            if generation != self._generation:
                return
            self.url, self.token = url, token
            self._ready_at = time.monotonic()
        self._status(f"engine ready at {url}")
        _call(self._on_ready, url, token)

    def _after_exit(self, exit_code: int, generation: int, was_ready: bool, timed_out: bool,
                    tail: list[str]) -> None:
        how = _describe_exit(exit_code)
        with self._lock:
            if generation != self._generation or not self._wanted:
                return  # stopped or replaced on purpose
            self._process = None
            self.url = self.token = None
            self._write_log(f"--- engine exited ({how})")
            if timed_out or (not was_ready and exit_code > 0):
                self._wanted = False  # it cannot start: a retry would fail the same way
                self.gave_up = True
            else:
                now = time.monotonic()
                if self._ready_at is not None and now - self._ready_at >= self.stable_after_s:
                    self._crash_times.clear()  # it had been serving: no loop, and no back-off
                else:
                    self._crash_times.append(now)
                    while self._crash_times[0] < now - self.crash_window_s:
                        self._crash_times.popleft()
        if timed_out:
            return self._status(f"the engine did not get ready within {self.start_timeout_s:.0f} s and was "
                                f"stopped; see {self.log_path}")
        if not was_ready and exit_code > 0:
            return self._status(f"the engine could not start: {_failure_reason(tail, exit_code)}")
        _call(self._on_crash, exit_code, "\n".join(tail))
        with self._lock:
            if generation != self._generation or not self._wanted:
                return  # the crash callback stopped or restarted it
            crashes = len(self._crash_times)
            if crashes >= self.max_crashes:
                self._wanted = False
                self.gave_up = True
            else:
                delay = min(self.max_restart_delay_s, self.restart_delay_s * 2 ** max(0, crashes - 1))
                self._restart_timer = threading.Timer(delay, self._restart_after_crash, args=(generation,))
                self._restart_timer.daemon = True
                self._restart_timer.start()
        if crashes >= self.max_crashes:
            self._status(f"the engine crashed {crashes} times in {self.crash_window_s:.0f} s; not restarting it "
                         f"again ({how}; see {self.log_path})")
        else:
            self._status(f"the engine stopped unexpectedly ({how}); restarting it in {delay:.1f} s")

    def _restart_after_crash(self, generation: int) -> None:
        with self._lock:
            if generation != self._generation or not self._wanted or self._process is not None:
                return
            outcome = self._launch()
        self._status(outcome)

    # --- output ----------------------------------------------------------------------------------------

    def _status(self, text: str) -> None:
        log.info("%s", text)
        _call(self._on_status, text)

    def _write_log(self, line: str) -> None:
        with self._log_lock:
            if self._log_file is None:
                try:
                    self.log_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)  # it holds transcripts
                    self._log_file = logging.handlers.RotatingFileHandler(
                        self.log_path, maxBytes=LOG_FILE_BYTES, backupCount=LOG_FILE_BACKUPS, encoding="utf-8")
                except OSError as error:
                    log.warning("cannot write the engine log %s: %s", self.log_path, error)
                    self._log_file = logging.NullHandler()
        self._log_file.handle(logging.makeLogRecord({"msg": line, "levelno": logging.INFO, "levelname": "INFO"}))


def _ready_url(line: str) -> str | None:
    try:
        message = json.loads(line)
    except ValueError:
        return None
    if isinstance(message, dict) and message.get("event") == "ready" and isinstance(message.get("url"), str):
        return message["url"]
    return None


def _failure_reason(tail: list[str], exit_code: int) -> str:
    """The line of the engine's stderr that says what went wrong."""
    lines = [line.strip() for line in tail if line.strip()]
    for line in reversed(lines):
        if line.startswith("confide-engine:"):  # the engine's own message for a problem it understood
            return line.removeprefix("confide-engine:").strip()
    return lines[-1] if lines else _describe_exit(exit_code)


def _describe_exit(exit_code: int) -> str:
    if exit_code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-exit_code).name}"
    return f"exit code {exit_code}"


def _terminate(process: subprocess.Popen, timeout_s: float) -> None:
    with contextlib.suppress(ProcessLookupError):
        process.terminate()
    try:
        process.wait(timeout_s)
    except subprocess.TimeoutExpired:
        _kill(process)
        process.wait()


def _kill(process: subprocess.Popen) -> None:
    """SIGKILL the engine and anything it started (its process group) while the engine is not yet reaped,
    so its pid, and so the group id, cannot have been reused."""
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if hasattr(os, "killpg"):
            os.killpg(process.pid, signal.SIGKILL)
        else:
            process.kill()


def _call(callback: Callable, *args) -> None:
    try:
        callback(*args)
    except Exception:
        log.exception("an EngineSupervisor callback failed")
