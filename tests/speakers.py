"""Real synthetic test speakers: espeak-ng and flite (Debian) and Piper (the engine's own voice).

Several voices on purpose, so no test is tuned to one voice.
"""

from __future__ import annotations

import functools
import hashlib
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from engine.audio.pcm import read_wav, resample

VOICES = ("espeak:en-us", "espeak:en+f3", "flite:slt", "flite:awb", "flite:rms", "piper:joe")
_CACHE = Path(tempfile.gettempdir()) / "confide-test-speech"


def say(text: str, voice: str = "flite:slt", rate: int = 24_000) -> np.ndarray:
    """Speech for `text` as float32 mono at `rate`, leading/trailing silence trimmed."""
    audio, native = _synthesize(text, voice)
    return trim_silence(resample(audio, native, rate), rate)


def trim_silence(audio: np.ndarray, rate: int, threshold: float = 0.01) -> np.ndarray:
    loud = np.flatnonzero(np.abs(audio) > threshold)
    if loud.size == 0:
        return audio[:0]
    pad = int(0.01 * rate)
    return audio[max(0, loud[0] - pad) : loud[-1] + pad]


@functools.lru_cache(maxsize=256)
def _synthesize(text: str, voice: str) -> tuple[np.ndarray, int]:
    engine, _, name = voice.partition(":")
    _CACHE.mkdir(exist_ok=True)
    key = hashlib.sha1(f"{voice}|{text}".encode()).hexdigest()[:16]
    path = _CACHE / f"{key}.wav"
    if not path.exists():
        tmp = path.with_suffix(".tmp.wav")
        if engine == "espeak":
            _run(["espeak-ng", "-v", name, "-s", "165", "-w", str(tmp), text])
        elif engine == "flite":
            _run(["flite", "-voice", name, "-t", text, "-o", str(tmp)])
        elif engine == "piper":
            _piper_to_file(text, tmp)
        else:
            raise ValueError(f"unknown test voice {voice!r}")
        tmp.replace(path)
    audio, native = read_wav(path)
    return audio, native


def _run(command: list[str]) -> None:
    if shutil.which(command[0]) is None:
        raise RuntimeError(f"{command[0]} is not installed; ./dev test installs it")
    subprocess.run(command, check=True, capture_output=True)


def _piper_to_file(text: str, path: Path) -> None:
    import wave

    from piper import PiperVoice

    from engine.models.store import ModelStore

    model = ModelStore().resolve("piper-joe-medium")
    voice = PiperVoice.load(model.file("en_US-joe-medium.onnx"))
    with wave.open(str(path), "wb") as wav:
        voice.synthesize_wav(text, wav)
