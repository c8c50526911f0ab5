"""CPU time and memory of the app process (this one: the benchmark runs the app in-process) and of the
engine subprocess, from the kernel's own accounting (Linux /proc). CPU percentages are of one core:
100 means one core busy the whole time."""

from __future__ import annotations

import collections
import os
import resource
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

_TICKS_PER_S = os.sysconf("SC_CLK_TCK")


def own_cpu_s() -> float:
    """User + system CPU of every thread of this process (the app's audio, link and hotkey threads too)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _stat_cpu_s(stat: str) -> float:
    fields = stat[stat.rindex(")") + 2:].split()  # the name in parentheses may hold spaces
    return (int(fields[11]) + int(fields[12])) / _TICKS_PER_S  # utime, stime


def process_cpu_s(pid: int) -> float | None:
    """User + system CPU of another process, or None when it is gone."""
    try:
        return _stat_cpu_s(Path(f"/proc/{pid}/stat").read_text())
    except OSError:
        return None


def thread_cpu_s() -> dict[int, tuple[str, float]]:
    """CPU of each thread of this process: thread id -> (name, seconds). Python threads go by their
    Python name; threads started in C (PortAudio's callbacks run in "python" ones, PulseAudio's client
    in "threaded-ml", Qt's in "Q…") by the kernel's name for them, marked native."""
    python_names = {t.native_id: t.name for t in threading.enumerate()}
    threads = {}
    for task in Path("/proc/self/task").iterdir():
        try:
            stat = (task / "stat").read_text()
        except OSError:
            continue  # ended meanwhile
        tid = int(task.name)
        name = python_names.get(tid) or f"{stat[stat.index('(') + 1:stat.rindex(')')]} (native)"
        threads[tid] = (name, _stat_cpu_s(stat))
    return threads


def memory_mb(field: str = "VmRSS", pid: int | str = "self") -> float | None:
    """A /proc/PID/status memory line in MB (VmRSS: resident now; VmHWM: the peak)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


def engine_child_pid() -> int | None:
    """The engine this process started (`python -m engine serve`), found as the OS sees it."""
    me = os.getpid()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            command = (stat.parent / "cmdline").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
        if parent == me and b"engine" in command and b"serve" in command:
            return int(stat.parent.name)
    return None


@dataclass
class CpuWindow:
    """CPU used by the app and the engine between `start()` and `stop()`."""

    engine_pid: int | None
    app_percent: float | None = None
    engine_percent: float | None = None
    app_percent_by_thread: dict[str, float] = field(default_factory=dict)  # where the app's share goes

    def start(self) -> CpuWindow:
        self._wall = time.monotonic()
        self._app = own_cpu_s()
        self._threads = thread_cpu_s()
        self._engine = process_cpu_s(self.engine_pid) if self.engine_pid else None
        return self

    def stop(self) -> CpuWindow:
        wall = time.monotonic() - self._wall
        self.app_percent = round(100 * (own_cpu_s() - self._app) / wall, 2)
        by_name: collections.Counter[str] = collections.Counter()
        for tid, (name, cpu) in thread_cpu_s().items():
            by_name[name] += cpu - self._threads.get(tid, (name, 0.0))[1]
        self.app_percent_by_thread = {name: round(100 * cpu / wall, 2) for name, cpu in by_name.most_common()
                                      if cpu > 0}
        engine = process_cpu_s(self.engine_pid) if self.engine_pid else None
        if engine is not None and self._engine is not None:
            self.engine_percent = round(100 * (engine - self._engine) / wall, 2)
        return self
