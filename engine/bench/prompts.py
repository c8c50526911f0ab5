"""The benchmark's spoken prompts: one short conversation, in several synthetic voices."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.audio.pcm import PROTOCOL_RATE, read_wav, resample

QUESTIONS = (
    "What is two plus two?",
    "What is the capital of France?",
    "How many legs does a spider have?",
    "Can you suggest a name for a black cat?",
    "What is a good way to fall asleep faster?",
    "Is a tomato a fruit or a vegetable?",
    "At what temperature does water boil in Celsius?",
    "Tell me a fun fact about octopuses.",
    "Which day comes after Monday?",
    "How do I say thank you in Spanish?",
    "What color do you get when you mix blue and yellow?",
    "Thanks, that is all for now.",
)

# Long answers to interrupt, for the cancel measurement.
LONG_REQUESTS = (
    "Tell me a long story about a dragon who learns to bake bread.",
    "Explain in detail how a bicycle works, part by part.",
    "Describe your ideal weekend in the mountains, step by step.",
)


@dataclass(frozen=True)
class SpokenPrompt:
    text: str
    voice: str
    audio: np.ndarray  # float32 mono 24 kHz, trimmed: speech ends at the last sample


def available_voices() -> list[str]:
    voices = ["piper"]
    if shutil.which("flite"):
        voices += ["flite:slt", "flite:awb"]
    if shutil.which("espeak-ng"):
        voices += ["espeak:en-us"]
    return voices


def speak_prompts(tts, count: int) -> list[SpokenPrompt]:
    voices = available_voices()
    prompts = []
    for index in range(count):
        text = QUESTIONS[index % len(QUESTIONS)]
        voice = voices[index % len(voices)]
        audio = _piper(tts, text) if voice == "piper" else _external(voice, text)
        prompts.append(SpokenPrompt(text, voice, _trim(audio)))
    return prompts


def _piper(tts, text: str) -> np.ndarray:
    return tts.synthesize(text).audio


def _external(voice: str, text: str) -> np.ndarray:
    engine, _, name = voice.partition(":")
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "prompt.wav"
        if engine == "flite":
            command = ["flite", "-voice", name, "-t", text, "-o", str(path)]
        else:
            command = ["espeak-ng", "-v", name, "-w", str(path), text]
        subprocess.run(command, check=True, capture_output=True)
        audio, rate = read_wav(path)
    return resample(audio, rate, PROTOCOL_RATE)


def _trim(audio: np.ndarray, threshold: float = 0.01) -> np.ndarray:
    loud = np.flatnonzero(np.abs(audio) > threshold)
    return audio[loud[0]: loud[-1] + 1] if loud.size else audio
