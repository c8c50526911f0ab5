"""The soak's microphone and speaker: the app's device ports, on a clock that runs faster than real time.

The soak (app/bench/soak.py) drives the app's real controller, engine link and microphone router; only
the sound devices are simulated, because a PortAudio device plays and records in real time and an hour
of conversation must fit in minutes.

- `SimulatedMicrophone` hands 20 ms chunks to the app's MicRouter on its own thread, as the capture
  worker does: silence at the real-time pace when nobody speaks, and a spoken line `speech_speedup`
  times faster than real time, or in real time when asked (the engine's turn detector counts samples,
  not seconds, so a pause is still the same number of samples of silence).
- `SimulatedSpeaker` takes reply audio from the link thread as the real Speaker does, and plays it on a
  clock `playback_speedup` times faster than real time: what was "heard" of a reply is the audio
  received, capped at the time since its first delta times the speed-up. Cuts, refusals of cancelled
  replies and the start and drain notices behave as the real one's.
"""

from __future__ import annotations

import collections
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

RATE = 24_000
CHUNK_S = 0.02
# The local barge-in detector decides after ~60-80 ms of speech on the test voices (README); the
# simulated one fires on the fifth chunk of a line spoken over a reply.
ONSET_CHUNKS = 5
_REMEMBERED = 64  # replies remembered after they end, for heard_ms and refusals


@dataclass
class SpokenLine:
    """One line being said; `done` is set once its last chunk has left the microphone."""

    audio: np.ndarray
    over_reply: bool  # said over a reply: the barge-in detector hears it
    speedup: float  # how much faster than real time it is said
    done: threading.Event = field(default_factory=threading.Event)
    end_of_speech: float | None = None  # monotonic time the last speech chunk left


class SimulatedMicrophone:
    def __init__(self, on_audio: Callable[[np.ndarray, float], None], speech_speedup: float):
        self._on_audio = on_audio
        self._speech_speedup = speech_speedup
        self._lines: queue.Queue[SpokenLine] = queue.Queue()
        self._current: SpokenLine | None = None
        self._chunks_said = 0
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="soak-microphone", daemon=True)
        self._silence = np.zeros(int(RATE * CHUNK_S), np.float32)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join(5)

    def say(self, audio: np.ndarray, over_reply: bool = False, real_time: bool = False) -> SpokenLine:
        line = SpokenLine(audio, over_reply, 1.0 if real_time else self._speech_speedup)
        self._lines.put(line)
        return line

    def speech_onset(self, _chunk: np.ndarray) -> bool:
        """The MicRouter's local speech detector (called on this microphone's thread)."""
        line = self._current
        return line is not None and line.over_reply and self._chunks_said >= ONSET_CHUNKS

    def _run(self) -> None:
        step = int(RATE * CHUNK_S)
        due = time.monotonic()
        while not self._stopped.is_set():
            if self._current is None:
                try:
                    self._current, self._chunks_said = self._lines.get_nowait(), 0
                except queue.Empty:
                    pass
            line = self._current
            if line is None:
                self._on_audio(self._silence, time.monotonic())
                due += CHUNK_S  # silence at the real-time pace
            else:
                start = self._chunks_said * step
                self._chunks_said += 1
                self._on_audio(line.audio[start:start + step], time.monotonic())
                due = max(due, time.monotonic() - CHUNK_S) + CHUNK_S / line.speedup
                if start + step >= line.audio.size:
                    line.end_of_speech = time.monotonic()
                    self._current = None
                    line.done.set()
            delay = due - time.monotonic()
            if delay > 0:
                self._stopped.wait(delay)


@dataclass
class _Reply:
    started_at: float
    received_s: float = 0.0
    finished: bool = False
    cut_s: float | None = None


class SimulatedSpeaker:
    """The controller's SpeakerPort (cancel, flush, heard_ms) and the link's push/finish."""

    def __init__(self, playback_speedup: float, on_started: Callable[[str], None],
                 on_drained: Callable[[str], None]):
        self._speedup = playback_speedup
        self._on_started, self._on_drained = on_started, on_drained
        self._lock = threading.Lock()
        self._replies: collections.OrderedDict[str, _Reply] = collections.OrderedDict()
        self._refused: collections.OrderedDict[str, None] = collections.OrderedDict()
        self.playing: str | None = None

    # --- the link's thread ----------------------------------------------------------------------------

    def push(self, response_id: str, pcm: np.ndarray) -> bool:
        with self._lock:
            if response_id in self._refused:
                return False
            reply = self._replies.get(response_id)
            started = reply is None
            if started:
                if self.playing is not None:  # a newer reply replaces the one playing
                    self._refuse(self.playing)
                reply = self._replies[response_id] = _Reply(time.monotonic())
                self.playing = response_id
                while len(self._replies) > _REMEMBERED:
                    self._replies.popitem(last=False)
            reply.received_s += pcm.size / RATE
        if started:
            self._on_started(response_id)
        return True

    def finish(self, response_id: str) -> None:
        with self._lock:
            reply = self._replies.get(response_id)
            if reply is not None:
                reply.finished = True

    # --- the controller's port ------------------------------------------------------------------------

    def cancel(self, response_id: str) -> float:
        with self._lock:
            reply = self._replies.get(response_id)
            heard = self._heard_s(reply) if reply else 0.0
            if reply is not None and reply.cut_s is None:
                reply.cut_s = heard
            self._refuse(response_id)
            return heard * 1000

    def flush(self) -> tuple[str, float] | None:
        playing = self.playing
        return (playing, self.cancel(playing)) if playing else None

    def heard_ms(self, response_id: str) -> float:
        with self._lock:
            reply = self._replies.get(response_id)
            return self._heard_s(reply) * 1000 if reply else 0.0

    def audio_ms(self, response_id: str) -> float:
        """All the audio received for the reply so far."""
        with self._lock:
            reply = self._replies.get(response_id)
            return reply.received_s * 1000 if reply else 0.0

    # --- the GUI thread, on a timer -------------------------------------------------------------------

    def poll(self) -> None:
        """Tell the controller when the reply playing has played to its end."""
        with self._lock:
            response_id = self.playing
            reply = self._replies.get(response_id) if response_id else None
            if reply is None or not reply.finished or self._heard_s(reply) < reply.received_s:
                return
            self.playing = None
        self._on_drained(response_id)

    # --- under the lock -------------------------------------------------------------------------------

    def _heard_s(self, reply: _Reply) -> float:
        if reply.cut_s is not None:
            return reply.cut_s
        return min(reply.received_s, (time.monotonic() - reply.started_at) * self._speedup)

    def _refuse(self, response_id: str) -> None:
        self._refused[response_id] = None
        while len(self._refused) > _REMEMBERED:
            self._refused.popitem(last=False)
        if self.playing == response_id:
            self.playing = None
