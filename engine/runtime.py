"""Process-wide runtime policy shared by the model runners."""

from __future__ import annotations

import os


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
