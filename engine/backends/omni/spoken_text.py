"""The reply's text, decoded token by token, and shared out over the audio chunks that speak it.

The talker reads the whole text long before it has spoken it, and Qwen2.5-Omni gives no word timings,
so each audio chunk carries the whole words an even speaking rate would have reached by its end (never
more than the thinker has written). The Realtime session truncates by the same even-rate assumption, so
after an interruption the history keeps about the words that were heard.
"""

from __future__ import annotations

import threading

CHARS_PER_SECOND = 15.0  # conversational English, ~160 words a minute


class SpokenText:
    def __init__(self, tokenizer):
        self._tokenizer = tokenizer
        self._lock = threading.Lock()
        self._ids: list[int] = []
        self._text = ""  # decoded so far (complete characters only)
        self._given = 0  # characters handed out
        self._finished = False

    def add(self, token: int) -> str:
        """Add a token; returns newly decoded text (empty while a multi-byte character is incomplete)."""
        with self._lock:
            self._ids.append(token)
            text = self._tokenizer.decode(self._ids, skip_special_tokens=True)
            if text.endswith("\ufffd"):
                return ""
            fresh, self._text = text[len(self._text):], text
            return fresh

    def finish(self) -> None:
        with self._lock:
            self._finished = True

    def spoken_until(self, seconds: float) -> str:
        """Whole words up to what an even speaking rate reaches at `seconds`, not yet handed out."""
        with self._lock:
            limit = min(len(self._text), int(seconds * CHARS_PER_SECOND))
            if limit <= self._given:
                return ""
            if self._finished and limit == len(self._text):
                cut = limit
            else:  # end on a word boundary: the word at the limit may still be growing
                cut = self._text.rfind(" ", self._given, limit + 1)
            if cut <= self._given:
                return ""
            words, self._given = self._text[self._given:cut], cut
            return words

    def has_rest(self) -> bool:
        with self._lock:
            return self._given < len(self._text)

    def take_rest(self) -> str:
        with self._lock:
            rest, self._given = self._text[self._given:], len(self._text)
            return rest
