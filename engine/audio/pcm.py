"""PCM conversions, resampling and WAV files.

Inside the engine audio is float32 mono in [-1, 1] with an explicit rate; on the wire it is PCM16 mono
24 kHz little-endian (the Realtime protocol's `audio/pcm`).
"""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
import soxr

PROTOCOL_RATE = 24_000


class AudioFormatError(ValueError):
    """Audio bytes or a file that cannot be read as the expected PCM."""


def pcm16_to_float(data: bytes) -> np.ndarray:
    if len(data) % 2:
        raise AudioFormatError(f"PCM16 needs an even number of bytes, got {len(data)}")
    return np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0


def float_to_pcm16(audio: np.ndarray) -> bytes:
    return (np.clip(audio, -1.0, 32767 / 32768) * 32768.0).astype("<i2").tobytes()


def resample(audio: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """One-shot resampling of a whole buffer (soxr HQ)."""
    if from_rate == to_rate:
        return audio.astype(np.float32, copy=False)
    return soxr.resample(audio.astype(np.float32, copy=False), from_rate, to_rate, quality="HQ")


class StreamResampler:
    """Chunk-by-chunk resampling without clicks at chunk edges; `flush` returns the tail."""

    def __init__(self, from_rate: int, to_rate: int):
        self.from_rate, self.to_rate = from_rate, to_rate
        self._stream = None if from_rate == to_rate else soxr.ResampleStream(
            from_rate, to_rate, 1, dtype="float32", quality="HQ"
        )

    def process(self, chunk: np.ndarray) -> np.ndarray:
        if self._stream is None:
            return chunk.astype(np.float32, copy=False)
        return self._stream.resample_chunk(chunk.astype(np.float32, copy=False), last=False)

    def flush(self) -> np.ndarray:
        if self._stream is None:
            return np.zeros(0, np.float32)
        return self._stream.resample_chunk(np.zeros(0, np.float32), last=True)


def read_wav(path: str | Path) -> tuple[np.ndarray, int]:
    """Read a PCM WAV file as float32 mono (first channel), with its sample rate."""
    try:
        with wave.open(str(path), "rb") as wav:
            rate, width, channels = wav.getframerate(), wav.getsampwidth(), wav.getnchannels()
            frames = wav.readframes(wav.getnframes())
    except (wave.Error, EOFError) as error:
        raise AudioFormatError(f"{path}: not a readable PCM WAV file ({error})") from error
    if width == 2:
        audio = np.frombuffer(frames, dtype="<i2").astype(np.float32) / 32768.0
    elif width == 4:
        audio = np.frombuffer(frames, dtype="<i4").astype(np.float32) / 2147483648.0
    elif width == 1:
        audio = (np.frombuffer(frames, dtype=np.uint8).astype(np.float32) - 128.0) / 128.0
    else:
        raise AudioFormatError(f"{path}: unsupported sample width {width * 8} bits")
    if channels > 1:
        audio = audio[: len(audio) - len(audio) % channels].reshape(-1, channels)[:, 0]
    return np.ascontiguousarray(audio), rate


def write_wav(path: str | Path, audio: np.ndarray, rate: int) -> None:
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(float_to_pcm16(audio))
