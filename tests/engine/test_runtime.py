"""The engine's process-wide policy: glibc's heap arenas capped (engine/runtime.py says why)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from engine.runtime import MALLOC_ARENAS

ROOT = Path(__file__).resolve().parents[2]

# Eight threads allocate at once, each many blocks too large for Python's own small-object allocator, so
# that glibc hands contending threads arenas of their own; malloc_stats() then lists every arena on stderr.
_CONTENDING_THREADS = """
import ctypes, threading
start = threading.Barrier(8)
def allocate():
    start.wait()
    kept = [bytearray(4096) for _ in range(20000)]
threads = [threading.Thread(target=allocate) for _ in range(8)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
ctypes.CDLL(None).malloc_stats()
"""
_BEFORE = {
    "unlimited": "",
    "limited": "from engine.runtime import limit_malloc_arenas\nassert limit_malloc_arenas()\n",
    # The engine's own entry point, as `python -m engine` runs it (here for its --help only).
    "engine": "import contextlib\nfrom engine.cli import main\nwith contextlib.suppress(SystemExit):\n"
              "    main(['--help'])\n",
}


def _arenas(before: str) -> int:
    result = subprocess.run([sys.executable, "-c", _BEFORE[before] + _CONTENDING_THREADS], cwd=ROOT,
                            capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr[-2000:]
    return sum(line.startswith("Arena ") for line in result.stderr.splitlines())


def test_threads_allocating_at_once_share_the_capped_arenas():
    unlimited, limited = _arenas("unlimited"), _arenas("limited")
    assert 1 <= limited <= MALLOC_ARENAS < unlimited, (limited, unlimited)


def test_the_engine_caps_its_arenas_before_it_does_anything_else(monkeypatch):
    assert 1 <= _arenas("engine") <= MALLOC_ARENAS
    monkeypatch.setenv("CONFIDE_MALLOC_ARENAS", "0")  # glibc's own default, for comparison
    assert _arenas("engine") > MALLOC_ARENAS
