"""The engine's own end-of-speech → first-audio figure, freshly measured by `confide-engine bench` (its
spoken prompts streamed straight into the engine's socket, no app, no devices), to compare with what
the person hears through the app. Run after the app has stopped, so the two never share the CPU."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def engine_bench(source_root: Path, prompts: int, llm: str | None, timeout_s: float = 1800) -> dict:
    command = [sys.executable, "-m", "engine", "bench", "--json", "--no-baseline", "--prompts", str(prompts),
               "--cancels", "0", *(["--llm", llm] if llm else [])]
    result = subprocess.run(command, cwd=source_root, capture_output=True, text=True, timeout=timeout_s,
                            stdin=subprocess.DEVNULL)
    if result.returncode != 0:
        raise RuntimeError(f"confide-engine bench failed: {result.stderr.strip()[-2000:]}")
    figures = json.loads(result.stdout)
    return {key: figures.get(key) for key in ("eos_to_first_audio_ms_p50", "eos_to_first_audio_ms_p95", "model")}
