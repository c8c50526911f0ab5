"""The text read off a screen, in reading order, and its bounded rendering for a language-model prompt."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

# ~2,000 characters is ~500-700 prompt tokens: about 4 s of prefill for Qwen2.5-0.5B on one thread.
# More would delay the spoken answer more than the extra lines are likely to help it.
DEFAULT_MAX_CHARS = 2000
NO_TEXT = "(no text found on the screen)"


@dataclass(frozen=True)
class ScreenLine:
    """One visual line: the texts of one row, left to right; ' | ' marks a wide gap such as a column break."""

    text: str
    left: int
    top: int
    right: int
    bottom: int


@dataclass(frozen=True)
class ScreenText:
    """Everything read off one screenshot; `text` is what goes into the prompt."""

    lines: tuple[ScreenLine, ...]
    width: int  # of the image that was read, in pixels
    height: int
    elapsed_ms: float
    stage_ms: Mapping[str, float] = field(default_factory=dict)  # decode, detect, recognize, layout
    unread_regions: int = 0  # text regions left unread when the time budget ran out

    @property
    def text(self) -> str:
        return self.render()

    def render(self, max_chars: int = DEFAULT_MAX_CHARS) -> str:
        """Lines top to bottom in at most `max_chars` characters, ending with a note on anything cut.

        Lines with nothing to read (stray symbols) are dropped first: they cost prompt tokens and say
        nothing. Then whole lines are kept in reading order while they fit beside the note.
        """
        readable = [line.text for line in self.lines if _is_readable(line.text)]
        tail = []
        if self.unread_regions:
            tail.append(f"[{self.unread_regions} more text regions were not read: out of time]")
        if not readable:
            return "\n".join([NO_TEXT, *tail])
        whole = "\n".join(readable + tail)
        if len(whole) <= max_chars:
            return whole
        used = 0
        for count, line in enumerate(readable):
            ending = "\n".join([_cut_note(readable[count + 1 :]), *tail])
            if used + len(line) + 1 + len(ending) > max_chars:
                break
            used += len(line) + 1
        if count == 0:  # not even the first line fits: keep its start
            ending = "\n".join([_cut_note(readable[1:]) if len(readable) > 1 else "[… line cut]", *tail])
            return "\n".join([_shorten(readable[0], max_chars - len(ending) - 1), ending])
        return "\n".join([*readable[:count], _cut_note(readable[count:]), *tail])


def _is_readable(text: str) -> bool:
    return sum(c.isalnum() for c in text) >= 2 or (len(text) == 1 and text.isalnum())


def _cut_note(rest: list[str]) -> str:
    chars = sum(len(line) + 1 for line in rest)
    lines = "line" if len(rest) == 1 else "lines"
    return f"[… {len(rest)} more {lines} ({chars:,} characters) not shown]"


def _shorten(line: str, limit: int) -> str:
    if limit <= 1:
        return "…"
    head = line[: limit - 1]
    space = head.rfind(" ")
    return (head[:space] if space > limit // 2 else head) + "…"
