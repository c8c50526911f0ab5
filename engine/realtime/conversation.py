"""The conversation a session holds: ordered items, and what the user actually heard of each reply.

An assistant reply is stored as the segments that were spoken, each with word timings, so that
`truncate(audio_end_ms)` can keep exactly the words that left the user's speaker and the next turn's
context holds only those.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from engine.backends.base import ScreenImage
from engine.realtime import errors
from engine.realtime.errors import ProtocolError


@dataclass(frozen=True)
class Word:
    text: str
    start_ms: float  # within the whole reply's audio
    end_ms: float


@dataclass
class SpokenSegment:
    """A stretch of reply audio with the text it says."""

    text: str
    start_ms: float
    end_ms: float
    words: tuple[Word, ...] = ()


@dataclass
class ContentPart:
    type: str  # input_text | input_audio | input_image | output_audio | output_text
    text: str | None = None
    transcript: str | None = None
    audio: np.ndarray | None = None  # int16 at 24 kHz (input_audio), kept for backends that hear audio
    image: ScreenImage | None = None  # replaced by the read version once the backend has read it

    def to_protocol(self) -> dict[str, Any]:
        if self.type in ("input_text", "output_text"):
            return {"type": self.type, "text": self.text or ""}
        if self.type in ("input_audio", "output_audio"):
            return {"type": self.type, "transcript": self.transcript}
        return {"type": self.type, "detail": "auto"}  # input_image: the picture itself is not echoed


@dataclass
class Item:
    id: str
    role: str  # user | assistant | system
    content: list[ContentPart]
    status: str = "completed"  # completed | in_progress | incomplete
    segments: list[SpokenSegment] = field(default_factory=list)  # assistant audio, in order
    truncated_at_ms: float | None = None

    @property
    def audio_ms(self) -> float:
        return self.segments[-1].end_ms if self.segments else 0.0

    def text(self) -> str:
        """Everything this item says, as text: what the model reads as context."""
        pieces = []
        for part in self.content:
            if part.type in ("input_text", "output_text") and part.text:
                pieces.append(part.text)
            elif part.type in ("input_audio", "output_audio") and part.transcript:
                pieces.append(part.transcript)
        return " ".join(p.strip() for p in pieces if p.strip())

    def images(self) -> list[ScreenImage]:
        return [p.image for p in self.content if p.type == "input_image" and p.image is not None]

    def to_protocol(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "realtime.item",
            "type": "message",
            "role": self.role,
            "status": self.status,
            "content": [part.to_protocol() for part in self.content],
        }


def heard_text(segments: Iterable[SpokenSegment], audio_end_ms: float) -> str:
    """The words of `segments` the listener heard when playback stopped at `audio_end_ms`.

    A word counts as heard once its first half has played: a word cut there was recognisable.
    """
    heard: list[str] = []
    for segment in segments:
        if segment.end_ms <= audio_end_ms:
            heard.append(segment.text)
            continue
        if segment.start_ms >= audio_end_ms:
            break
        if segment.words:
            words = [w.text for w in segment.words if (w.start_ms + w.end_ms) / 2 <= audio_end_ms]
        else:  # no timings from this backend: assume an even speaking rate across the segment
            share = (audio_end_ms - segment.start_ms) / max(1e-6, segment.end_ms - segment.start_ms)
            tokens = segment.text.split()
            words = tokens[: int(len(tokens) * share + 0.5)]
        if words:
            heard.append(" ".join(words))
        break
    return " ".join(t.strip() for t in heard if t.strip())


# A day-long session must not grow without bound: past these, the oldest items (and the oldest screenshots'
# bytes) are forgotten, and the client is told with `conversation.item.deleted`. The model's context window
# holds far fewer turns than this anyway.
MAX_ITEMS = 512
MAX_IMAGES = 8  # screenshots held (up to MAX_IMAGE_BYTES each); older ones leave their items


class Conversation:
    def __init__(self, on_forget: Callable[[str], None] = lambda item_id: None) -> None:
        self._items: list[Item] = []
        self._on_forget = on_forget

    def __iter__(self):
        return iter(list(self._items))

    def __len__(self) -> int:
        return len(self._items)

    def get(self, item_id: str) -> Item:
        for item in self._items:
            if item.id == item_id:
                return item
        raise ProtocolError(errors.ITEM_NOT_FOUND, f"no item with id {item_id!r}", param="item_id")

    def has(self, item_id: str) -> bool:
        return any(item.id == item_id for item in self._items)

    def last_id(self) -> str | None:
        return self._items[-1].id if self._items else None

    def add(self, item: Item, previous_item_id: str | None = None) -> str | None:
        """Insert after `previous_item_id` ("root" = at the start, None = at the end); returns the previous id."""
        if self.has(item.id):
            raise ProtocolError(errors.DUPLICATE_ITEM_ID, f"an item with id {item.id!r} already exists",
                                param="item.id")
        if previous_item_id is None:
            previous = self.last_id()
            self._items.append(item)
        elif previous_item_id == "root":
            self._items.insert(0, item)
            previous = None
        else:
            self._items.insert(self._items.index(self.get(previous_item_id)) + 1, item)
            previous = previous_item_id
        self._keep_within_limits(item)
        return previous

    def _keep_within_limits(self, newest: Item) -> None:
        images = [(item, part) for item in self._items for part in item.content if part.type == "input_image"]
        for item, part in images[:-MAX_IMAGES]:
            if item is not newest:
                item.content = [p for p in item.content if p is not part]
        while len(self._items) > MAX_ITEMS:
            oldest = next(item for item in self._items if item is not newest)
            self._items.remove(oldest)
            self._on_forget(oldest.id)

    def delete(self, item_id: str) -> None:
        self._items.remove(self.get(item_id))

    def truncate(self, item_id: str, content_index: int, audio_end_ms: int) -> Item:
        item = self.get(item_id)
        if item.role != "assistant":
            raise ProtocolError(errors.INVALID_VALUE, "only assistant audio can be truncated", param="item_id")
        if content_index != 0 or not item.content or item.content[0].type != "output_audio":
            raise ProtocolError(errors.INVALID_VALUE, "content_index must point at the item's audio (0)",
                                param="content_index")
        if audio_end_ms < 0 or audio_end_ms > item.audio_ms + 1:
            raise ProtocolError(
                errors.AUDIO_END_TOO_LARGE,
                f"audio_end_ms {audio_end_ms} is past the end of the item's audio ({int(item.audio_ms)} ms)",
                param="audio_end_ms",
            )
        item.content[0].transcript = heard_text(item.segments, audio_end_ms)
        item.segments = [s for s in item.segments if s.start_ms < audio_end_ms]
        if item.segments and item.segments[-1].end_ms > audio_end_ms:
            last = item.segments[-1]
            item.segments[-1] = SpokenSegment(last.text, last.start_ms, float(audio_end_ms),
                                              tuple(w for w in last.words if w.start_ms < audio_end_ms))
        item.truncated_at_ms = float(audio_end_ms)
        item.status = "incomplete" if item.status == "in_progress" else item.status
        return item

    def forget_old_audio(self, keep_last: int = 8) -> None:
        """User audio is kept only for the most recent turns; older turns live on as transcripts."""
        with_audio = [p for item in self._items for p in item.content if p.audio is not None]
        for part in with_audio[:-keep_last] if keep_last else with_audio:
            part.audio = None
