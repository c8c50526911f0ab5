"""Reply text to speakable phrases, while the language model is still writing it.

`speakable(text)` is what the voice says and what the transcript shows: one function, so the two can
never differ. Markdown, emoji and raw URLs are turned into words a listener can follow.

`PhraseSplitter` cuts the streamed reply into phrases for the voice. The first phrase is short, because
its synthesis time is the time to first sound; later phrases are whole sentences (or clauses of long
ones), because the voice phrases a sentence better than a fragment. The phrases, joined with single
spaces, are exactly `speakable` of the whole reply, however the text was fragmented on the way in.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from enum import IntEnum
from urllib.parse import urlsplit


class _Boundary(IntEnum):
    """How strongly the text may pause after a word."""

    NONE = 0
    CLAUSE = 1  # , ; : and dashes (spoken as commas)
    SENTENCE = 2  # . ! ?


@dataclass(frozen=True)
class _PhraseShape:
    sentence_after: int  # a sentence end closes the phrase once it holds this many words
    clause_after: int  # a clause boundary closes it once it holds this many words
    max_words: int  # with no punctuation in sight, cut at a word boundary here


# First phrase: as short as sounds natural; its decode and synthesis are the time to first sound, and
# at ~25 tokens/s each word cut from it saves ~50 ms. Measured by `confide-engine bench`: cutting it at
# 3 words instead of 6 took 110-150 ms off the median, and its ~0.9 s of audio still covers the second
# phrase's decode and synthesis (no reply stalled). Second: medium, so its synthesis finishes before the short first phrase
# has finished playing. Then sentences, split at clauses only when long.
_SHAPES = (
    _PhraseShape(sentence_after=2, clause_after=2, max_words=3),
    _PhraseShape(sentence_after=1, clause_after=4, max_words=12),
    _PhraseShape(sentence_after=1, clause_after=12, max_words=20),
)

_CLOSERS = "\"')]}’”»"
_PAUSE_MARKS = ".,;:!?"
# Titles and Latin shorthands whose "." is no sentence end (lower case, without the dot).
_ABBREVIATIONS = frozenset(
    "mr mrs ms dr prof sr jr st mt vs cf approx fig gen capt lt col sgt rev hon dept".split()
)
_DOTTED_ABBREVIATION = re.compile(r"(?:[A-Za-z]{1,2}\.){2,}")  # U.S., e.g., a.m., Ph.D.
_INITIAL = re.compile(r"[A-Z]\.")  # J. R. R. Tolkien
_LIST_NUMBER = re.compile(r"\d{1,3}[.)]")
_LINE_MARKER = re.compile(r"#{1,6}|>+|[-*+•]|[-*_=]{3,}")  # heading, quote, bullet, rule
_CODE_FENCE = re.compile(r"```|~~~")
_LINK_TARGET = re.compile(r"\]\([^)\s]*\)?")
_HTML_TAG = re.compile(r"</?[A-Za-z][A-Za-z0-9]*(?:\s[^<>]*)?/?>")  # <br>, <b>, not <https://…>
_URL = re.compile(r"(?:https?://|www\.)[^\s<>()\[\]*`\"']+", re.IGNORECASE)
_URL_SEGMENT = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,24}")
_ELLIPSIS = re.compile(r"\.{3,}|…")
_NUMBER_RANGE = re.compile(r"(?<=\d)[–—](?=\d)")
_DASH = re.compile(r"--+|[–—]")
_TIMES = re.compile(r"(?<=\d)\*(?=\d)")
_EDGE_UNDERSCORES = re.compile(r"(?<![A-Za-z0-9])_+|_+(?![A-Za-z0-9])")
_SPOKEN_SYMBOLS = set("&%$€£@+=°©®™")  # the voice says "and", "percent", ...
_KEPT_SYMBOLS = set("°©®™")


def speakable(text: str) -> str:
    """The words the voice says for `text`, single-spaced; markup and emoji dropped, URLs read out."""
    words = _SpeakableWords()
    return " ".join(word.text for word in [*words.feed(text), *words.finish()])


def is_abbreviation(word: str) -> bool:
    """True for words like "Dr.", "e.g.", "U.S." or an initial, whose final "." ends no sentence."""
    core = word.strip(_CLOSERS + "\"'(“‘[")
    if not core.endswith("."):
        return False
    return (
        core[:-1].lower() in _ABBREVIATIONS
        or _DOTTED_ABBREVIATION.fullmatch(core) is not None
        or _INITIAL.fullmatch(core) is not None
    )


def _ends_with_pause(word: str) -> bool:
    """True when the word already carries punctuation the voice pauses on."""
    core = word.rstrip(_CLOSERS)
    return bool(core) and core[-1] in _PAUSE_MARKS


class PhraseSplitter:
    """Streamed reply text in, phrases to synthesize out. `flush` ends the reply and starts afresh."""

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self._words = _SpeakableWords()
        self._phrase: list[str] = []
        self._phrases_done = 0

    def push(self, delta: str) -> list[str]:
        """Feed a fragment of the reply (any size, even mid-word); returns the phrases it completed."""
        return self._collect(self._words.feed(delta))

    def flush(self) -> list[str]:
        """End of the reply: the remaining phrases. The splitter is then ready for a new reply."""
        phrases = self._collect(self._words.finish())
        if self._phrase:
            phrases.append(" ".join(self._phrase))
        self._reset()
        return phrases

    def _collect(self, words: list[_Word]) -> list[str]:
        phrases = []
        for word in words:
            self._phrase.append(word.text)
            if self._closes_phrase(word):
                phrases.append(" ".join(self._phrase))
                self._phrase = []
                self._phrases_done += 1
        return phrases

    def _closes_phrase(self, word: _Word) -> bool:
        shape = _SHAPES[min(self._phrases_done, len(_SHAPES) - 1)]
        count = len(self._phrase)
        return (
            # never inside a spoken URL or range, nor between a title or initial and its name
            (count >= shape.max_words and word.ends_token and not is_abbreviation(word.text))
            or (word.boundary is _Boundary.SENTENCE and count >= shape.sentence_after)
            or (word.boundary is _Boundary.CLAUSE and count >= shape.clause_after)
        )


@dataclass(frozen=True)
class _Word:
    text: str
    boundary: _Boundary
    ends_token: bool  # False inside what one written token became ("example dot com")


class _SpeakableWords:
    """Streaming normaliser: raw text fragments in, speakable words out, each with its boundary.

    A word is released only once nothing that follows can change it: the next token has begun with
    a letter or digit, or a line break came (an unpunctuated line end gets a comma), or the next
    token turned out to be real words. Lone punctuation in between ("—", "...", "?") is folded into
    the held word. Because release depends only on the text, never on how it was fragmented,
    streaming gives the same words as one pass over the whole text.
    """

    def __init__(self) -> None:
        self._token = ""  # raw token being written
        self._gap = ""  # whitespace after the last raw token
        self._held: list[str] = []  # words of the last real token, not yet released
        self._held_is_list_number = False
        self._line_has_words = False
        self._in_code_block = False
        self._seen_text = False

    def feed(self, text: str) -> list[_Word]:
        released: list[_Word] = []
        for char in text:
            if char.isspace():
                if self._token:
                    self._end_token(released)
                self._gap += char
            else:
                if not self._token:
                    self._start_token(char, released)
                self._token += char
        return released

    def finish(self) -> list[_Word]:
        released: list[_Word] = []
        if self._token:
            self._end_token(released)
        self._release(released, next_char=None)
        return released

    def _start_token(self, first: str, released: list[_Word]) -> None:
        new_line = "\n" in self._gap or not self._seen_text
        self._gap = ""
        self._seen_text = True
        if new_line:
            if self._held and not _ends_with_pause(self._held[-1]):
                self._held[-1] += ","  # a line end is a pause: list items, headings
            self._release(released, next_char="\n")
            self._line_has_words = False
        elif first.isalnum():
            self._release(released, next_char=first)

    def _end_token(self, released: list[_Word]) -> None:
        raw, self._token = self._token, ""
        at_line_start = not self._line_has_words
        if self._in_code_block or (at_line_start and _CODE_FENCE.match(raw)):
            # Code is for reading, not for listening: skip fenced blocks.
            if at_line_start and _CODE_FENCE.match(raw):
                self._in_code_block = not self._in_code_block
            return
        if at_line_start and _LINE_MARKER.fullmatch(raw):
            return
        lead_pause, words = _speakable_token(raw)
        if lead_pause and self._held and not _ends_with_pause(self._held[-1]):
            self._held[-1] += lead_pause
        if not words:
            return
        self._release(released, next_char=words[0][0])
        self._held = words
        self._held_is_list_number = at_line_start and _LIST_NUMBER.fullmatch(raw) is not None
        self._line_has_words = True
        if _ends_with_pause(words[-1]) and not words[-1].rstrip(_CLOSERS).endswith("."):
            # , ; : ! ? end a clause whatever follows; only "." needs the next word to decide.
            self._release(released, next_char=None)

    def _release(self, released: list[_Word], next_char: str | None) -> None:
        words, self._held = self._held, []
        for index, word in enumerate(words):
            following = words[index + 1][0] if index + 1 < len(words) else next_char
            list_number = self._held_is_list_number and index == 0
            boundary = _boundary_after(word, following, list_number)
            released.append(_Word(word, boundary, ends_token=index == len(words) - 1))
        self._held_is_list_number = False


def _boundary_after(word: str, next_char: str | None, list_number: bool) -> _Boundary:
    core = word.rstrip(_CLOSERS)
    if not core:
        return _Boundary.NONE
    last = core[-1]
    if last in "!?":
        return _Boundary.SENTENCE
    if last in ",;:":
        return _Boundary.CLAUSE
    if last == ".":
        if list_number or is_abbreviation(word) or (next_char is not None and next_char.islower()):
            return _Boundary.NONE  # "1. First", "Dr. Smith", "Inc. is": no sentence ends here
        return _Boundary.SENTENCE
    return _Boundary.NONE


def _speakable_token(raw: str) -> tuple[str, list[str]]:
    """One whitespace-delimited token as speakable words, plus the pause it adds to the word before."""
    text = "".join(char for char in raw if not _is_emoji(char))
    text = _LINK_TARGET.sub("", text)  # [text](url): say the text
    text = _HTML_TAG.sub(" ", text)
    text = text.replace("`", "").replace("~~", "").replace("![", "").replace("[", "").replace("]", "")
    text = text.replace("<", " ").replace(">", " ")
    text = _URL.sub(_read_url, text)
    text = _TIMES.sub(" times ", text).replace("*", "")
    text = _EDGE_UNDERSCORES.sub("", text)
    text = _ELLIPSIS.sub(", ", text)
    text = _NUMBER_RANGE.sub(" to ", text)
    text = _DASH.sub(", ", text)
    lead_pause, words = "", []
    for piece in text.split():
        if any(char.isalnum() or char in _SPOKEN_SYMBOLS for char in piece):
            words.append(piece)
            continue
        mark = _pause_mark(piece)
        if not words:
            lead_pause = lead_pause or mark
        elif mark and not _ends_with_pause(words[-1]):
            words[-1] += mark
    return lead_pause, words


def _pause_mark(punctuation: str) -> str:
    """The mark a lone piece of punctuation leaves on the word before it ("" for none)."""
    for mark in "?!.":
        if mark in punctuation:
            return mark
    if any(char in ",;:-" for char in punctuation):
        return ","
    return ""


def _read_url(match: re.Match[str]) -> str:
    """'https://www.example.com/docs/intro?x=1' -> 'example dot com slash docs slash intro'."""
    url = match.group(0).rstrip(_PAUSE_MARKS)
    tail = match.group(0)[len(url) :]
    parts = urlsplit(url if "://" in url else "http://" + url)
    host = (parts.hostname or "").removeprefix("www.")
    spoken = " dot ".join(label for label in host.split(".") if label)
    segments = [segment for segment in parts.path.split("/") if segment]
    if segments and len(segments) <= 2 and all(_URL_SEGMENT.fullmatch(s) for s in segments):
        # Short, wordy paths are worth hearing; long or cryptic ones are noise.
        spoken += "".join(" slash " + s.replace("-", " ").replace("_", " ") for s in segments)
    return spoken + tail


def _is_emoji(char: str) -> bool:
    code = ord(char)
    if char in _KEPT_SYMBOLS:
        return False
    return (
        unicodedata.category(char) == "So"  # pictographs, dingbats, box drawing
        or 0x1F3FB <= code <= 0x1F3FF  # skin tones
        or 0xFE00 <= code <= 0xFE0F  # variation selectors
        or code in (0x200D, 0x20E3)  # zero-width joiner, keycap
        or 0xE0020 <= code <= 0xE007F  # flag tags
        or 0x2190 <= code <= 0x21FF  # arrows
    )
