"""Did the engine transcribe the assistant's own reply? On open speakers an echo that fools the barge-in
detector reaches the engine too: the router sends it the held-back second before the barge-in, which is
the last second of the reply heard. The engine transcribes that as a "user" turn and the assistant would
answer itself.

Such a turn is a rough copy of the last few words heard (whisper on a second of echo, cut mid-word):
"They are combining" for "...baked by combining", "And it Mars is a good." for "The planet Mars is a"
(measured on the harness's echo path). So: most of its letters are words from the end of what was heard,
in that order, or three of them in a row. A person barging in seldom speaks mostly in the words the
reply just said.
"""

from __future__ import annotations

import difflib
import re

TAIL_WORDS = 6  # the held-back second and the echo's tail hold three or four of them
MIN_LETTERS = 6  # matched; below it ("stop", "thank you", "a lot"), always the person's
# Letters, not words: the echo's words come back split and joined anew ("House keeper a skill" for
# "...lighthouse keeper, a skilled"). Pieces shorter than MIN_BLOCK letters are chance.
MIN_SHARE = 0.5  # of the turn's letters, found in the tail in its order
MIN_BLOCK = 3
MIN_RUN = 3  # or this many of the tail's words in a row ("And it Mars is a good.")

_WORD = re.compile(r"[\w']+")


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def is_own_words(transcript: str, heard_text: str) -> bool:
    """`heard_text`: what the person heard of the reply (up to its cut, or all of it)."""
    spoken, tail = words(transcript), words(heard_text)[-TAIL_WORDS:]
    if not spoken or not tail:
        return False
    letters, tail_letters = "".join(spoken), "".join(tail)
    pieces = difflib.SequenceMatcher(None, letters, tail_letters, autojunk=False).get_matching_blocks()
    matched = sum(piece.size for piece in pieces if piece.size >= MIN_BLOCK)
    run = max(block.size for block in difflib.SequenceMatcher(None, spoken, tail, autojunk=False).get_matching_blocks())
    return matched >= MIN_LETTERS and (matched >= MIN_SHARE * len(letters) or run >= MIN_RUN)
