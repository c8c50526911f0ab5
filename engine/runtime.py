"""Process-wide runtime policy shared by the model runners."""

from __future__ import annotations

import ctypes
import os
import sys

# glibc gives threads that allocate at once heap arenas of their own, up to 8 per core, and hands little
# of them back. Over an hour of conversation (`confide bench --soak`) the engine with two arenas started
# at 1147 MB resident instead of 1338 and peaked at 1571 MB instead of 1807, answering as fast (first
# audio p50 1444 ms against 1470): the model runners allocate their big buffers once, so their threads
# rarely wait for an arena.
MALLOC_ARENAS = 2
_M_ARENA_MAX = -8  # mallopt's parameter number, from glibc's malloc.h


def inference_threads() -> int:
    """Threads one model may use: cores - 1, at least 1.

    Two models run at once (LLM decode beside TTS, ASR beside prefill), and on a loaded 2-core
    machine a model given both cores collapsed by 50x; one core per model keeps every stage moving.
    """
    override = os.environ.get("CONFIDE_THREADS")
    if override:
        return max(1, int(override))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 2)
    return max(1, cores - 1)


def limit_malloc_arenas(arenas: int | None = None) -> bool:
    """Cap glibc's heap arenas for this process (before its threads start): MALLOC_ARENAS, or
    CONFIDE_MALLOC_ARENAS (0: glibc's own default). False where nothing was capped."""
    if arenas is None:
        setting = os.environ.get("CONFIDE_MALLOC_ARENAS", "")
        arenas = int(setting) if setting.strip().isdigit() else MALLOC_ARENAS
    if arenas <= 0 or not sys.platform.startswith("linux"):
        return False
    try:
        # The process's own symbols, where the C library already is: find_library would run ldconfig.
        return bool(ctypes.CDLL(None).mallopt(_M_ARENA_MAX, arenas))
    except (OSError, AttributeError):  # another C library (musl has no mallopt)
        return False
