"""What the omni backend is asked for, and how it fails; importable without torch (the CLI reads these)."""

from __future__ import annotations

from dataclasses import dataclass

QUANTIZATIONS = ("none", "int8", "int4")
DEVICES = ("auto", "cpu", "cuda")
TINY = "tiny"  # a random-weight model of the real architecture, for tests and benchmarks without weights


class OmniLoadError(RuntimeError):
    """The omni model cannot be loaded; the message says why and what to do."""


class NotEnoughMemory(OmniLoadError):
    pass


@dataclass(frozen=True)
class OmniSettings:
    model: str = "qwen2.5-omni-3b"  # catalog id, a folder with the checkpoint, or "tiny"
    device: str = "auto"  # auto | cpu | cuda
    quantization: str = "none"  # none | int8 | int4 (CUDA only)
    speaker: str = "Chelsie"
    max_prompt_tokens: int = 8192
    max_reply_tokens: int = 256
    max_speech_s: float = 60.0  # a spoken answer is cut here rather than monologued
    codes_per_text_token: int = 30  # speech cap once the text is done (~0.6 s a token): a talker that never ends
    max_pixels: int = 640 * 28 * 28  # screenshots: at most 640 vision tokens (~0.5 MP)
    temperature: float = 0.7  # thinker (top-p 0.9); the talker keeps Qwen's own sampling
    seed: int | None = None
    threads: int = 0  # 0 = cores - 1
    # The user's words as text too (Whisper from the embedded backend, on its own thread beside the thinker):
    # for the client's transcript and for old turns whose audio is forgotten. Used only when on disk.
    transcribe: bool = True
    asr: str = "whisper-tiny.en"
