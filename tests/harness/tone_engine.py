"""An engine process for fault tests: the real Realtime server, scripted replies whose audio says which
reply it is.

    python -m tests.harness.tone_engine serve --port 0 --token-file F [--parent-pid P] [--phrases N] ...

Speaks the same command line and ready line as `python -m engine serve` (so EngineSupervisor runs it; see
`tone_engine_command`), but its replies come from `ToneBackend` instead of models, so a start takes about a
second and replies cost nothing. A reply to a question that contains a number n ("question 17") is
"Answer to question 17." spoken as a pure tone of `tone_hz(n)`: a recording of the speaker tells which
reply was playing at each moment (`tone_hz`'s frequencies are whole multiples of 100 Hz, so each fills one
bin of a 10 ms DFT at 48 kHz, see `tones_per_frame`).

SIGUSR1 makes the process print one JSON line on stdout with its asyncio task and thread counts (the
supervisor copies stdout into the engine log), for leak checks.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import sys
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import numpy as np

from engine.backends.base import (Backend, BackendSession, Listener, ReplyOutput, ReplyRequest, ReplyStats,
                                  ScreenImage, SpeechChunk, TextDelta)

RATE = 24_000
TONES = 16  # distinct frequencies, reused every 16 questions
BASE_HZ, STEP_HZ = 400, 200


def tone_hz(n: int) -> int:
    return BASE_HZ + STEP_HZ * (n % TONES)


def question_number(text: str) -> int:
    found = re.findall(r"\d+", text)
    return int(found[-1]) if found else 0


def tone_engine_command(token_file: Path, extra_args: list[str]) -> list[str]:
    """The command line EngineSupervisor.command gives, for this engine."""
    return [sys.executable, "-m", "tests.harness.tone_engine", "serve", "--port", "0", "--token-file",
            str(token_file), "--parent-pid", str(os.getpid()), *extra_args]


class _Listener(Listener):
    def __init__(self):
        self.samples = 0

    def feed(self, audio: np.ndarray) -> None:
        self.samples += audio.size

    async def transcript(self) -> str:
        return "question 0" if self.samples else ""

    def close(self) -> None:
        pass


class _Session(BackendSession):
    def __init__(self, backend: ToneBackend):
        self.backend = backend

    def listen(self, context: ReplyRequest, on_partial: Callable[[str], None] | None = None) -> Listener:
        return _Listener()

    async def read_screen(self, image: bytes) -> ScreenImage:
        return ScreenImage(image, "")

    async def reply(self, request: ReplyRequest, stats: ReplyStats | None = None) -> AsyncIterator[ReplyOutput]:
        asked = next((t.text for t in reversed(request.turns) if t.role == "user"), "")
        n = question_number(asked)
        b = self.backend
        samples = RATE * b.phrase_ms // 1000
        t = np.arange(samples) / RATE
        tone = (0.25 * np.sin(2 * np.pi * tone_hz(n) * t)).astype(np.float32)
        words = f"Answer to question {n}.".split()
        for index in range(b.phrases):
            await asyncio.sleep((b.first_step_ms if index == 0 else b.step_ms) / 1000)  # where a cancel lands
            text = " ".join(words) if index == 0 else "and more."
            yield SpeechChunk(tone, text) if request.speak else TextDelta(text + " ")


class ToneBackend(Backend):
    name = "tone"
    model = "tone"

    def __init__(self, phrases: int = 4, phrase_ms: int = 250, step_ms: int = 20, first_step_ms: int | None = None):
        self.phrases, self.phrase_ms, self.step_ms = phrases, phrase_ms, step_ms
        self.first_step_ms = step_ms if first_step_ms is None else first_step_ms  # the time to first audio

    def open_session(self) -> BackendSession:
        return _Session(self)


def tones_per_frame(audio48k: np.ndarray, frame_ms: int = 10) -> np.ndarray:
    """For each 10 ms frame of a 48 kHz recording, the amplitude at each of the TONES frequencies
    (shape frames × TONES). A frame of tone n reads ~0.25 at column n % TONES and ~0 elsewhere, except at a
    reply's edges."""
    size = 48 * frame_ms
    frames = audio48k[: len(audio48k) - len(audio48k) % size].reshape(-1, size).astype(np.float64)
    spectrum = np.abs(np.fft.rfft(frames, axis=1)) * 2 / size
    bins = [tone_hz(n) * size // 48_000 for n in range(TONES)]
    return spectrum[:, bins]


def tone_frames(tones: np.ndarray, n: int, present: float = 0.05) -> np.ndarray:
    """Which frames of `tones_per_frame` hold the reply to question n: its tone is there (0.05: in at least
    a fifth of the frame) and the strongest. A frame where one reply ends and another begins spills up to
    ~0.04 of each into the columns between them, never more than the stronger of the two."""
    column = tones[:, n % TONES]
    return (column > present) & (column >= tones.max(axis=1))


# --- the process ------------------------------------------------------------------------------------


async def _serve(args: argparse.Namespace) -> int:
    from engine.assembly import detector_factory
    from engine.models.store import ModelStore
    from engine.realtime.auth import load_or_create_token
    from engine.realtime.server import REALTIME_PATH, RealtimeServer

    token = load_or_create_token(args.token_file)
    backend = ToneBackend(args.phrases, args.phrase_ms, args.step_ms, args.first_step_ms)
    server = RealtimeServer(backend, detector_factory(ModelStore()), token)
    port = await server.start("127.0.0.1", args.port)
    print(json.dumps({"event": "ready", "url": f"ws://127.0.0.1:{port}{REALTIME_PATH}", "model": "tone"}), flush=True)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    loop.add_signal_handler(signal.SIGUSR1, lambda: print(json.dumps(
        {"event": "counts", "tasks": len(asyncio.all_tasks(loop)), "threads": threading.active_count(),
         "sessions": len(server.sessions)}), flush=True))
    if args.parent_pid:
        loop.create_task(_stop_when_gone(args.parent_pid, stop))
    await stop.wait()
    await server.stop()
    return 0


async def _stop_when_gone(pid: int, stop: asyncio.Event) -> None:
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            stop.set()
            return
        await asyncio.sleep(0.5)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tone_engine")
    parser.add_argument("command", choices=("serve",))
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--token-file", type=Path, required=True)
    parser.add_argument("--parent-pid", type=int)
    parser.add_argument("--phrases", type=int, default=4)
    parser.add_argument("--phrase-ms", type=int, default=250)
    parser.add_argument("--step-ms", type=int, default=20)
    parser.add_argument("--first-step-ms", type=int)
    return asyncio.run(_serve(parser.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
