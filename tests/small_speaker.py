"""A small speaker's echo, synthetic (late, saturating, band-limited), a clean speaker's beside it, and the
canceller fed as the app feeds it: shared by the excess's tests (tests/app/test_echo_excess.py) and the
replay's (tests/app/test_echo_replay.py)."""

from __future__ import annotations

import numpy as np
import soxr

from app.audio.echo_canceller import FRAME, EchoCanceller
from app.audio.echo_excess import LEAD
from app.audio.echo_reference import PlayedAudio

RATE = 24_000
DELAY = round(0.05 * RATE)
REPLY = ("Sure. The train to the airport leaves every twenty minutes from platform three. "
         "Most people take about four hours to reach the top, depending on the weather.")


def small_speaker(audio: np.ndarray) -> np.ndarray:
    """Overdriven (tanh at drive 4) and band-limited (about 300-4000 Hz), 50 ms late, quieter."""
    driven = np.tanh(4.0 * audio)
    narrow = soxr.resample(soxr.resample(driven, RATE, 8_000), 8_000, RATE)[:len(driven)]  # below 4 kHz
    narrow = narrow - np.convolve(narrow, np.ones(40) / 40, mode="same")  # a crude high-pass
    return np.concatenate([np.zeros(DELAY, np.float32), 0.3 * narrow])[:len(audio)].astype(np.float32)


def clean_speaker(audio: np.ndarray) -> np.ndarray:
    """A good speaker close to the microphone: linear, 50 ms late, quieter (the harness's loopback path)."""
    return np.concatenate([np.zeros(DELAY, np.float32), 0.3 * audio])[:len(audio)].astype(np.float32)


def delayed_reference(far: np.ndarray) -> np.ndarray:
    """What played, as the canceller hands it to the excess: LEAD ahead of the echo's delay."""
    return np.concatenate([np.zeros(DELAY - LEAD, np.float32), far])


def feed_canceller(canceller: EchoCanceller, played: PlayedAudio, reply: np.ndarray, echo: np.ndarray,
                   ran_dry_at_s: float | None = None, placement_error_s: float = 0.0) -> None:
    """`reply` played and `echo` heard, frame by frame. The speaker's blocks are reported as they leave the
    device, just ahead of the microphone; the one after it ran dry is reported `placement_error_s` late."""
    audio_48k = soxr.resample(reply, RATE, 48_000).astype(np.float32)
    blocks = range(0, len(audio_48k) - 240 + 1, 240)
    dry_block = None if ran_dry_at_s is None else round(ran_dry_at_s * 48_000 / 240) * 240
    reported = iter(blocks)
    for position in range(0, len(echo) - FRAME + 1, FRAME):
        for i in reported:
            dry = i == dry_block
            played.played(audio_48k[i:i + 240].copy(), 100.0 + i / 48_000 + dry * placement_error_s, 48_000,
                          960 + i, dry)
            if i / 48_000 > position / RATE + 0.02:
                break
        canceller.process(echo[position:position + FRAME], 100.0 + position / RATE)
