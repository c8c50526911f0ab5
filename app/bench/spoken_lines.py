"""The benchmark's spoken lines, synthesised in a child process by the test speakers (espeak-ng, flite,
Piper) in several voices.

A child process because Piper is a model: loaded here it would sit in the app process whose memory the
benchmark reports, and the app never imports the engine's code. The spoken prompts are the engine
benchmark's own questions (engine/bench/prompts.py), so the two benchmarks' figures compare.

    python -m app.bench.spoken_lines OUT_DIR < {"prompt_count": N, "lines": [[text, voice], ...]}
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

RATE = 24_000
# Every test voice, so no figure is tuned to one (tests/speakers.py).
VOICES = ("flite:slt", "espeak:en-us", "piper:joe", "flite:awb", "espeak:en+f3", "flite:rms")


@dataclass(frozen=True)
class SpokenLine:
    text: str
    voice: str
    audio: np.ndarray  # float32 mono 24 kHz, silence trimmed: the speech ends at the last sample


@dataclass
class Script:
    prompts: list[SpokenLine]  # the engine benchmark's questions
    long_requests: list[str]  # typed requests for long replies, to interrupt
    lines: list[SpokenLine]  # whatever else was asked for, in order


def voice_for(index: int) -> str:
    return VOICES[index % len(VOICES)]


def synthesize(prompt_count: int, lines: list[tuple[str, str]], source_root: Path, timeout_s: float = 300) -> Script:
    """Speak `prompt_count` benchmark questions and `lines` ((text, voice) pairs) in a child process."""
    with tempfile.TemporaryDirectory(prefix="confide-bench-speech-") as folder:
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(source_root), os.environ.get("PYTHONPATH")])))
        result = subprocess.run([sys.executable, "-m", "app.bench.spoken_lines", folder], cwd=source_root, env=env,
                                input=json.dumps({"prompt_count": prompt_count, "lines": lines}),
                                capture_output=True, text=True, timeout=timeout_s)
        if result.returncode != 0:
            raise RuntimeError(f"the test speakers failed: {result.stderr.strip()[-2000:]}")
        manifest = json.loads((Path(folder) / "lines.json").read_text())
        with np.load(Path(folder) / "lines.npz") as audio:
            prompts = [SpokenLine(text, voice, audio[f"prompt_{i}"]) for i, (text, voice) in enumerate(manifest["prompts"])]
            spoken = [SpokenLine(text, voice, audio[f"line_{i}"]) for i, (text, voice) in enumerate(lines)]
    return Script(prompts, manifest["long_requests"], spoken)


def _speak_into(folder: Path, request: dict) -> None:
    from engine.bench.prompts import LONG_REQUESTS, QUESTIONS
    from tests.speakers import say

    prompts = [(QUESTIONS[i % len(QUESTIONS)], voice_for(i)) for i in range(request["prompt_count"])]
    arrays = {f"prompt_{i}": say(text, voice, RATE) for i, (text, voice) in enumerate(prompts)}
    arrays.update({f"line_{i}": say(text, voice, RATE) for i, (text, voice) in enumerate(request["lines"])})
    np.savez(folder / "lines.npz", **arrays)
    (folder / "lines.json").write_text(json.dumps({"prompts": prompts, "long_requests": list(LONG_REQUESTS)}))


if __name__ == "__main__":
    _speak_into(Path(sys.argv[1]), json.load(sys.stdin))
