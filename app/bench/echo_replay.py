"""`confide bench --aec-replay DIR`: the barge-in detector's second ear (EchoExcess) judged offline, on
recordings made by `confide bench --aec --aec-record DIR` (echo_recording.py): a change to the excess in
minutes instead of an 11-minute live run, with no audio devices and no display.

For each recording (one echo path):
- echo only: the microphone's frames go through a fresh EchoExcess as the canceller fed it, and Silero
  (the person's threshold, 64 ms of speech or one sure frame, as the detector hears the excess) listens
  to its output where the live detector listened, afresh for each reply: every reply it fires in is a
  false onset;
- a person talking over each reply: one of the bench's user lines mixed into the microphone's frames at
  the recorded echo's level, shifted by each `--aec-replay-db` level, from 0.6-1.2 s into the reply (as
  echo_trials.double_talk does live); detection is timed from the line's first sound to the end of the
  frame that Silero fires in. An onset before that sound is the echo's, and counts as no detection. Each
  interruption runs on a copy of the excess as the echo alone left it at the line's start, as live, where
  the reply stops at the barge-in and the next reply is learnt from echo alone (one pass carrying each
  interruption into the next, as until 2026-12, heard one fewer of 96 on a pair of recordings).

`--aec-replay-set NAME=VALUE` overrides one of echo_excess's or linear_echo's constants for the replay
(OVERESTIMATE=4 to try a smaller margin), so a setting can be swept without editing the code.
"""

from __future__ import annotations

import contextlib
import copy
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from app.audio import echo_excess, linear_echo
from app.audio.barge_in_detector import sure_threshold
from app.audio.capture import PROTOCOL_RATE
from app.audio.echo_canceller import FRAME
from app.audio.voice_activity import DEFAULT_MIN_SPEECH_MS, VoiceActivity
from app.bench.echo_recording import EchoRecording
from app.bench.echo_trials import line_gain, line_onset
from app.bench.figures import p50
from app.session_setup import vad_threshold
from app.settings import ConversationSettings

# The person's own threshold at the default sensitivity (0.5): what the detector hears the excess at.
THRESHOLD = vad_threshold(ConversationSettings().vad_sensitivity)
# The person starts TALK_FROM_FRAMES + TALK_STEP_FRAMES × (k mod 4) frames into reply k; replies too short
# to hold TALK_AT_LEAST_FRAMES from there are not talked over.
TALK_FROM_FRAMES = 60
TALK_STEP_FRAMES = 20
TALK_AT_LEAST_FRAMES = 80
# Fixed by the recording: the canceller already took the reference this much ahead of the echo's delay.
RECORDED_CONSTANTS = ("FRAME", "LEAD")
TUNABLE_MODULES = (echo_excess, linear_echo)  # their constants' names are distinct


@dataclass(frozen=True)
class Interruption:
    reply: int  # which echo-only reply is talked over (and so which user line: users[reply % len(users)])
    start: int  # the frame the person's line is mixed in from
    end: int  # the end of the reply's frames: heard after that is too late


@dataclass
class PathReplay:
    replies: int
    false_onsets: int
    delays_ms: dict[float, list[float | None]]  # per level (dB): each interruption's detection (None: missed)


def load_recordings(folder: Path) -> dict[str, EchoRecording]:
    """Every DIR/<path>.npz, by echo path; a ValueError naming the folder or file where one is unusable."""
    if not folder.is_dir():
        raise ValueError(f"{folder}: no such folder of echo recordings")
    files = sorted(folder.glob("*.npz"))
    if not files:
        raise ValueError(f"{folder}: no echo recordings (*.npz) in it; make them with "
                         f"`confide bench --aec --aec-record {folder}`")
    return {file.stem: EchoRecording.load(file) for file in files}


def tunable_constants() -> dict[str, int | float]:
    """The numeric module constants of TUNABLE_MODULES that a replay can change."""
    return {name: value for module in TUNABLE_MODULES for name, value in vars(module).items()
            if name.lstrip("_").isupper() and isinstance(value, (int, float)) and not isinstance(value, bool)
            and name not in RECORDED_CONSTANTS}


def parse_overrides(settings: list[str]) -> dict[str, int | float]:
    """NAME=VALUE settings, each of a tunable constant and of its type; a ValueError saying which is wrong."""
    tunable, overrides = tunable_constants(), {}
    for setting in settings:
        name, equals, text = (part.strip() for part in setting.partition("="))
        if not equals:
            raise ValueError(f"--aec-replay-set {setting!r}: expected NAME=VALUE")
        if name not in tunable:
            raise ValueError(f"--aec-replay-set {name}: not one of the excess's constants a replay can change "
                             f"({', '.join(sorted(tunable))})")
        kind = type(tunable[name])
        try:
            overrides[name] = kind(text)
        except ValueError:
            raise ValueError(f"--aec-replay-set {name}={text}: not {'an integer' if kind is int else 'a number'}") \
                from None
    return overrides


@contextlib.contextmanager
def overridden(overrides: dict[str, int | float]) -> Iterator[None]:
    """The constants set for the block (EchoExcess and LinearEcho read them as they run), then put back."""
    homes = {name: module for module in TUNABLE_MODULES for name in vars(module) if name in overrides}
    before = {name: getattr(homes[name], name) for name in overrides}
    try:
        for name, value in overrides.items():
            setattr(homes[name], name, value)
        yield
    finally:
        for name, value in before.items():
            setattr(homes[name], name, value)


def excess_heard(recording: EchoRecording, near: np.ndarray, excess: echo_excess.EchoExcess | None = None,
                 first: int = 0) -> list[np.ndarray | None]:
    """Per frame from `first` on, the excess's output where the detector listened to it (else None), `near`
    (the frames from `first`) fed as the canceller fed the recorded microphone; a fresh excess by default."""
    excess = excess or echo_excess.EchoExcess()
    heard: list[np.ndarray | None] = []
    for frame, far, fed, aligned in zip(near, recording.far[first:], recording.has_far[first:],
                                        recording.aligned[first:]):
        if not fed:
            heard.append(None)
            continue
        output = excess.process(frame, far, learn=aligned)
        # Ready too: a WARM_UP_FRAMES set longer than the recording's holds the excess back longer.
        heard.append(output if aligned and excess.ready else None)
    return heard


def first_onset(heard: list[np.ndarray | None], start: int = 0, end: int | None = None) -> int | None:
    """The frame in [start, end) in which a fresh Silero finds the onset of speech in `heard`."""
    vad = VoiceActivity(THRESHOLD, DEFAULT_MIN_SPEECH_MS)
    vad.sure_threshold = sure_threshold(THRESHOLD)  # as BargeInDetector hears the excess
    for i in range(start, len(heard) if end is None else end):
        if heard[i] is not None and vad.feed(heard[i]):
            return i
    return None


def planned_interruptions(recording: EchoRecording) -> list[Interruption]:
    """Every reply long enough is talked over, from 0.6-1.2 s into it."""
    planned = []
    for k, (reply_start, reply_end) in enumerate(recording.replies.tolist()):
        start = reply_start + TALK_FROM_FRAMES + TALK_STEP_FRAMES * (k % 4)
        if start + TALK_AT_LEAST_FRAMES <= reply_end:
            planned.append(Interruption(k, start, reply_end))
    return planned


def talked_over(recording: EchoRecording, interruption: Interruption, line: np.ndarray,
                relative_db: float) -> tuple[np.ndarray, int]:
    """The microphone's frames of the interruption with `line` spoken over them, and the sample (from
    the first of them) where the line begins to sound."""
    frames = recording.near[interruption.start:interruption.end].astype(np.float64)
    samples = frames.reshape(-1)  # a view: the line runs on across frames
    spoken = line_gain(recording.echo_rms, line, relative_db) * line[:len(samples)]
    samples[:len(spoken)] += spoken
    return frames, line_onset(line)


def replay_path(recording: EchoRecording, users: list[np.ndarray], levels_db: list[float]) -> PathReplay:
    """Echo only over the whole recording; then each interruption on its own, from a copy of the excess as
    the echo-only pass left it at the interruption's start: live, the reply stops at the barge-in, so what
    the excess learnt from one interruption never reaches the next."""
    planned = planned_interruptions(recording)
    excess, heard, before, at = echo_excess.EchoExcess(), [], {}, 0
    for interruption in planned:  # in order: the starts rise
        heard += excess_heard(recording, recording.near[at:interruption.start], excess, at)
        before[interruption.start], at = copy.deepcopy(excess), interruption.start
    heard += excess_heard(recording, recording.near[at:], excess, at)
    false_onsets = sum(first_onset(heard, start, end) is not None for start, end in recording.replies.tolist())
    delays = {}
    for relative_db in levels_db:
        delays[relative_db] = []
        for interruption in planned:
            frames, onset = talked_over(recording, interruption, users[interruption.reply % len(users)],
                                        relative_db)
            hit = first_onset(excess_heard(recording, frames, copy.deepcopy(before[interruption.start]),
                                           interruption.start))
            delays[relative_db].append(None if hit is None else ((hit + 1) * FRAME - onset) * 1000 / PROTOCOL_RATE)
    return PathReplay(len(recording.replies), false_onsets, delays)


def figures(replays: list[PathReplay], levels_db: list[float]) -> dict:
    """The figures over `replays` together; at other levels than 0 dB the keys say the level, as in
    echo_trials.path_figures (detect_rate_250ms_minus_6db)."""
    results = {"replies": sum(r.replies for r in replays), "false_onsets": sum(r.false_onsets for r in replays)}
    for relative_db in levels_db:
        suffix = "" if relative_db == 0 else f"_{'minus' if relative_db < 0 else 'plus'}_{abs(relative_db):g}db"
        delays = [d for r in replays for d in r.delays_ms[relative_db]]
        times = [d for d in delays if d is not None and d >= 0]
        results[f"interruptions{suffix}"] = len(delays)
        for within_ms in (250, 300):
            results[f"detect_rate_{within_ms}ms{suffix}"] = round(
                sum(t <= within_ms for t in times) / max(1, len(delays)), 3)
        results[f"detect_ms_p50{suffix}"] = p50(times)
        results[f"missed{suffix}"] = sum(d is None for d in delays)
    return results


def replay(recordings: dict[str, EchoRecording], users: list[np.ndarray], levels_db: list[float],
           progress: Callable[[str], None] = lambda _text: None) -> dict:
    """Every recording replayed: the figures over all of them, and per echo path under "paths"."""
    replays = {}
    for name, recording in recordings.items():
        began = time.monotonic()
        replays[name] = replay_path(recording, users, levels_db)
        progress(f"{name}: {len(recording.near)} frames, {len(recording.replies)} replies replayed "
                 f"in {time.monotonic() - began:.0f} s")
    results = figures(list(replays.values()), levels_db)
    results["paths"] = {name: figures([path], levels_db) for name, path in replays.items()}
    return results


def measure(recordings: dict[str, EchoRecording], levels_db: list[float], overrides: dict[str, int | float],
            progress: Callable[[str], None]) -> dict:
    """The bench's figures: the user lines synthesised once, the overrides in force while replaying."""
    from app.bench.desktop import SOURCE_ROOT
    from app.bench.echo_trials import synthesize_users

    progress("synthesising the person's lines")
    users = synthesize_users(SOURCE_ROOT)
    with overridden(overrides):
        results = replay(recordings, users, levels_db, progress)
    results["levels_db"] = levels_db
    results["overrides"] = overrides
    return results
