"""A backend that replies with a fixed script instead of models: for protocol unit tests only.

It sits beside the end-to-end tests that drive the same server with the real models
(test_realtime_end_to_end.py); here it makes protocol cases fast and exact.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import numpy as np

from engine.backends.base import (Backend, BackendSession, Listener, ReplyOutput, ReplyRequest, ReplyStats,
                                  ScreenImage, SpeechChunk, TextDelta, WordTiming)

RATE = 24_000


def tone_chunk(text: str, seconds_per_word: float = 0.3) -> SpeechChunk:
    words = text.split()
    duration = seconds_per_word * len(words)
    t = np.arange(int(duration * RATE)) / RATE
    audio = (0.2 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    timings = tuple(WordTiming(w, i * seconds_per_word * 1000, (i + 1) * seconds_per_word * 1000)
                    for i, w in enumerate(words))
    return SpeechChunk(audio, text, timings)


class ScriptedListener(Listener):
    def __init__(self, transcript: str):
        self.samples = 0
        self._transcript = transcript
        self.closed = False
        self.contexts: list[ReplyRequest] = []  # what context_changed was told

    def feed(self, audio: np.ndarray) -> None:
        self.samples += audio.size

    async def transcript(self) -> str:
        return self._transcript if self.samples else ""

    def close(self) -> None:
        self.closed = True

    def context_changed(self, context: ReplyRequest) -> None:
        self.contexts.append(context)


class ScriptedSession(BackendSession):
    def __init__(self, backend: ScriptedBackend):
        self.backend = backend

    def prepare(self, context: ReplyRequest) -> None:
        self.backend.prepared.append(context)

    def listen(self, context: ReplyRequest, on_partial: Callable[[str], None] | None = None) -> Listener:
        listener = ScriptedListener(self.backend.transcript)
        self.backend.listeners.append(listener)
        return listener

    async def read_screen(self, image: bytes) -> ScreenImage:
        if not image.startswith(b"\x89PNG"):
            raise ValueError("not a PNG image")
        return ScreenImage(image, "SCREEN TEXT")

    async def reply(self, request: ReplyRequest, stats: ReplyStats | None = None) -> AsyncIterator[ReplyOutput]:
        self.backend.requests.append(request)
        for index, phrase in enumerate(self.backend.phrases):
            await asyncio.sleep(self.backend.step_s)  # a model step: where a cancel lands
            if index == self.backend.fail_at_step:
                raise RuntimeError("the model ran out of memory")
            self.backend.steps_run += 1
            yield tone_chunk(phrase) if request.speak else TextDelta(phrase + " ")


class ScriptedBackend(Backend):
    name = "scripted"
    model = "scripted"

    def __init__(self, phrases=("Hello there.", "This is a long scripted reply.", "It goes on and on."),
                 transcript: str = "what is two plus two", step_s: float = 0.05):
        self.phrases = list(phrases)
        self.transcript = transcript
        self.step_s = step_s
        self.requests: list[ReplyRequest] = []
        self.prepared: list[ReplyRequest] = []
        self.listeners: list[ScriptedListener] = []
        self.steps_run = 0
        self.fail_at_step: int | None = None

    def open_session(self) -> BackendSession:
        return ScriptedSession(self)
