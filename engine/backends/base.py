"""What a model backend offers the Realtime session.

The contract is speech-first so that an end-to-end omni model (audio in, audio out) fits as naturally
as the embedded cascade (VAD → ASR → LLM → TTS):
- a `Listener` hears one user utterance *while it is spoken* (the cascade transcribes as it goes; an
  omni model can encode audio as it arrives);
- `reply()` streams `TextDelta` and `SpeechChunk` outputs for the conversation so far, and stops at the
  next step when its consumer cancels it;
- every turn carries its text *and* its audio and images, so each backend takes what it understands.
"""

from __future__ import annotations

import asyncio
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class WordTiming:
    text: str
    start_ms: float  # relative to the start of the chunk's audio
    end_ms: float


@dataclass(frozen=True)
class ScreenImage:
    data: bytes  # encoded PNG/JPEG as the client sent it
    text: str | None = None  # text read from it, when the backend reads screens as text


@dataclass(frozen=True)
class Turn:
    """One conversation item as a model sees it: only what was said and heard."""

    role: str  # user | assistant | system
    text: str
    audio: np.ndarray | None = None  # user speech, int16 mono 24 kHz, for backends that hear audio
    images: tuple[ScreenImage, ...] = ()


@dataclass(frozen=True)
class ReplyRequest:
    instructions: str
    turns: tuple[Turn, ...]
    speak: bool = True
    voice: str = "default"
    speed: float = 1.0
    max_output_tokens: int | None = None
    temperature: float | None = None


@dataclass(frozen=True)
class TextDelta:
    text: str


@dataclass(frozen=True)
class SpeechChunk:
    """Reply audio (float32 mono 24 kHz) and the text it speaks, with word timings when known."""

    audio: np.ndarray
    text: str
    words: tuple[WordTiming, ...] = ()


@dataclass
class ReplyStats:
    prompt_tokens: int = 0
    cached_tokens: int = 0
    output_tokens: int = 0
    prefill_tok_s: float = 0.0
    decode_tok_s: float = 0.0
    marks: dict[str, float] = field(default_factory=dict)  # stage -> time.monotonic(), first time reached

    def mark(self, stage: str) -> None:
        """Note when a stage was first reached (any thread): the latency trace of one reply."""
        self.marks.setdefault(stage, time.monotonic())

    def trace(self, since: float) -> str:
        return " ".join(f"{stage}=+{(at - since) * 1000:.0f}ms"
                        for stage, at in sorted(self.marks.items(), key=lambda kv: kv[1]))


ReplyOutput = TextDelta | SpeechChunk


async def drain_outbox(outbox: asyncio.Queue, end: object) -> AsyncIterator[ReplyOutput]:
    """What a reply's worker threads put in `outbox`, in order, until `end`; an exception they put
    there is raised here, on the consumer's side."""
    while True:
        output = await outbox.get()
        if output is end:
            return
        if isinstance(output, BaseException):
            raise output
        yield output


class Listener(ABC):
    """One user utterance, fed as it arrives; `transcript()` may be awaited more than once."""

    @abstractmethod
    def feed(self, audio: np.ndarray) -> None:
        """Audio float32 mono 24 kHz. Must return at once: it runs on the network loop."""

    @abstractmethod
    async def transcript(self) -> str:
        """What was said in all audio fed so far."""

    @abstractmethod
    def close(self) -> None: ...

    def context_changed(self, context: ReplyRequest) -> None:
        """The conversation before this utterance changed while it was spoken (a screenshot it asks about
        was read): a backend that pre-computes the reply's prompt may start again from it. Returns at once."""


class BackendSession(ABC):
    """Per-connection model state (e.g. a KV-cache slot). Methods are called from the asyncio loop."""

    # Whether a reply waits for the user's transcript. A cascade answers the words; a model that hears the
    # audio itself answers at once, and the transcript follows for the client and the history.
    replies_need_transcripts: bool = True

    def prepare(self, context: ReplyRequest) -> None:
        """The conversation so far, whenever it changed outside a reply (session opened, instructions
        updated): a backend may pre-compute it so the next turn starts sooner. Must return at once."""

    @abstractmethod
    def listen(self, context: ReplyRequest, on_partial: Callable[[str], None] | None = None) -> Listener:
        """Start hearing a user utterance; `context` is the conversation before it (for pre-warming)."""

    @abstractmethod
    async def read_screen(self, image: bytes) -> ScreenImage:
        """Prepare a screenshot as soon as it arrives (the cascade reads its text). Raises ValueError
        with a readable message for an image it cannot use."""

    @abstractmethod
    def reply(self, request: ReplyRequest, stats: ReplyStats | None = None) -> AsyncIterator[ReplyOutput]:
        """Stream the reply. Closing the iterator (or cancelling its consumer) stops generation."""

    def close(self) -> None:
        pass


class Backend(ABC):
    name: str = "backend"
    model: str = "unknown"  # what session.created reports

    @abstractmethod
    def open_session(self) -> BackendSession: ...

    def warm_up(self) -> None:
        """Run every model once so the first real turn is not slow."""

    def close(self) -> None:
        pass
