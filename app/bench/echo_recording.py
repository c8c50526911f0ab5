"""What the barge-in detector's second ear (EchoExcess) was fed during `confide bench --aec`, kept for replay.

`confide bench --aec --aec-record DIR` taps each echo path's canceller (EchoCanceller.frame_tap) over its
echo-only replies and saves DIR/<path>.npz: every frame the canceller cancelled, the reference frame it
handed the excess with it, whether that reference lined up with the echo (the excess learnt from it
and, once learnt, was listened to), the frame spans of the replies and
the echo's level at the microphone. `confide bench --aec-replay DIR` (echo_replay.py) then judges a change
to the excess on these in minutes, without audio devices.
"""

from __future__ import annotations

import contextlib
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from app.audio.echo_canceller import FRAME, EchoCanceller

_FIELDS = ("near", "far", "has_far", "aligned", "replies", "echo_rms")


@dataclass
class EchoRecording:
    near: np.ndarray  # float32 [N, FRAME]: the microphone, each frame the canceller cancelled
    far: np.ndarray  # float32 [N, FRAME]: the reference handed to the excess with it (zeros where none)
    has_far: np.ndarray  # bool [N]: whether the excess was fed that frame
    # bool [N]: whether the reference lined up with the echo (the delay trusted): the excess learnt from the
    # frame, and its output was listened to once the path was learnt
    aligned: np.ndarray
    replies: np.ndarray  # int [R, 2]: each echo-only reply's frames, [start, end)
    echo_rms: float  # the echo's level at the microphone (echo_trials._rms, the replies' median)

    def save(self, path: Path) -> None:
        np.savez_compressed(path, near=self.near, far=self.far, has_far=self.has_far, aligned=self.aligned,
                            replies=self.replies, echo_rms=np.float64(self.echo_rms))

    @classmethod
    def load(cls, path: Path) -> EchoRecording:
        """A ValueError naming the file where it is missing or not a recording made by `save`."""
        try:
            stored = np.load(path)
            if not isinstance(stored, np.lib.npyio.NpzFile):
                raise ValueError("one array, not an .npz archive")
            with stored:
                missing = [name for name in _FIELDS if name not in stored.files]
                if missing:
                    raise ValueError(f"no {', '.join(missing)} in it")
                recording = cls(stored["near"], stored["far"], stored["has_far"], stored["aligned"],
                                stored["replies"], float(stored["echo_rms"]))
        except FileNotFoundError:
            raise ValueError(f"{path}: no such echo recording") from None
        except (OSError, ValueError, TypeError, EOFError, zipfile.BadZipFile, zlib.error) as error:
            raise ValueError(f"{path}: not an echo recording made by --aec-record ({error})") from None
        problem = recording._shape_problem()
        if problem:
            raise ValueError(f"{path}: not an echo recording made by --aec-record ({problem})")
        return recording

    def _shape_problem(self) -> str:
        frames = len(self.near)
        if self.near.shape != (frames, FRAME) or self.far.shape != (frames, FRAME):
            return f"near and far must both be [frames, {FRAME}], got {self.near.shape} and {self.far.shape}"
        if self.has_far.shape != (frames,) or self.aligned.shape != (frames,):
            return f"has_far and aligned must be [{frames}], got {self.has_far.shape} and {self.aligned.shape}"
        if self.replies.ndim != 2 or self.replies.shape[1] != 2:
            return f"replies must be [replies, 2], got {self.replies.shape}"
        if len(self.replies) and not (0 <= self.replies.min() and self.replies.max() <= frames
                                      and np.all(self.replies[:, 0] <= self.replies[:, 1])):
            return f"reply spans outside the {frames} frames"
        return ""


class EchoRecorder:
    """Taps a canceller's frames (on its capture worker) while started; marks the echo-only replies.
    Started before the canceller first finds the echo (a fresh rig), so that the replay's fresh excess
    learns from the same frames as the live one did."""

    def __init__(self, canceller: EchoCanceller):
        self._canceller = canceller
        # One tuple per frame, appended in one step: a frame read from another thread is never half there.
        self._frames: list[tuple[np.ndarray, np.ndarray | None, bool]] = []
        self._replies: list[tuple[int, int]] = []

    def start(self) -> EchoRecorder:
        self._canceller.frame_tap = self._tap
        return self

    def stop(self) -> None:
        self._canceller.frame_tap = None

    def _tap(self, near: np.ndarray, delayed_far: np.ndarray | None, aligned: bool) -> None:
        # Copies: `near` is a view into the canceller's pending audio, the reference one into a longer read.
        self._frames.append((near.copy(), None if delayed_far is None else delayed_far.copy(), aligned))

    @contextlib.contextmanager
    def reply(self) -> Iterator[None]:
        """Around one echo-only reply, from its start to the end of waiting for it."""
        start = len(self._frames)
        yield
        self._replies.append((start, len(self._frames)))

    def recording(self, echo_rms: float) -> EchoRecording:
        frames = list(self._frames)
        near = np.zeros((len(frames), FRAME), np.float32)
        far = np.zeros((len(frames), FRAME), np.float32)
        has_far = np.zeros(len(frames), bool)
        for i, (near_frame, far_frame, _aligned) in enumerate(frames):
            near[i] = near_frame
            if far_frame is not None:
                far[i], has_far[i] = far_frame, True
        aligned = np.array([frame[2] for frame in frames], bool)
        replies = np.array(self._replies, np.int64).reshape(-1, 2)
        return EchoRecording(near, far, has_far, aligned, replies, float(echo_rms))
