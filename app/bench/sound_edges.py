"""Where sound starts and ends in a harness recording, as the moment it reached the device.

A harness `Recording` stamps every sample with its arrival time on the monotonic clock (delivery jitter
removed), so an edge found in the audio is an instant comparable across recordings and with the app's
own timestamps.

Two notions of "not silent": the speaker's silence is exact zeros (the app plays zeros between replies
and the harness keeps the sink fed with zeros), so any non-zero sample there is sound. Synthetic speech
fades out in low-level noise; its end is where it last passes 1% of full scale, the same rule
`confide-engine bench` uses for the true end of speech, so the two figures compare.
"""

from __future__ import annotations

import numpy as np

SPEECH_LEVEL = 0.01


def _loud(audio: np.ndarray, level: float) -> np.ndarray:
    return np.flatnonzero(np.abs(audio) > level)


def first_sound(recording, after: float | None = None, level: float = 0.0) -> float | None:
    """The arrival time of the first sample above `level` (at or after the moment `after`), or None."""
    audio = recording.audio()
    start = 0 if after is None else max(0, recording.index_at(after))
    loud = _loud(audio[start:], level)
    return recording.time_of(start + int(loud[0])) if loud.size else None


def last_sound(recording, after: float | None = None, level: float = 0.0) -> float | None:
    """The arrival time of the last sample above `level` (at or after the moment `after`), or None."""
    audio = recording.audio()
    start = 0 if after is None else max(0, recording.index_at(after))
    loud = _loud(audio[start:], level)
    return recording.time_of(start + int(loud[-1])) if loud.size else None


def speech_start(recording) -> float | None:
    return first_sound(recording, level=SPEECH_LEVEL)


def speech_end(recording) -> float | None:
    return last_sound(recording, level=SPEECH_LEVEL)
