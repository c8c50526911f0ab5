"""One conversation's KV caches, kept between replies so a turn prefills only what is new.

The thinker's cache holds the last prompt and the reply tokens fed back into it; the talker's holds the
last prompt. The next prompt shares a prefix with them (instructions, earlier turns) and diverges where the
conversation changed: a new user turn, or an assistant turn cut to what was heard. Both caches are cropped
to the shared prefix and only the rest is run. A speculative reply and the adopted one share everything
but the last token. Positions are recomputed over the whole new prompt (multimodal RoPE depends only on
the tokens before a position, so the prefix's positions are unchanged).
"""

from __future__ import annotations

import torch


class ConversationCache:
    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Forget everything (after a failed step, when ids and cached states might disagree)."""
        self.ids: list[int] = []  # tokens whose keys/values the thinker cache holds, in order
        self.thinker = None
        self._states: list[torch.Tensor] = []  # (1, n, D) talker inputs (embedding + last hidden) for `ids`
        self.talker = None
        self.talker_ids: list[int] = []  # prompt tokens the talker cache holds (its tail is per reply)

    # --- thinker ----------------------------------------------------------------------------------

    def reuse_thinker(self, ids: list[int], media_ids: set[int]) -> int:
        """Crop the thinker cache to the longest prefix it shares with `ids` (at least one token left to
        run, never ending inside an audio or image block) and return that prefix length."""
        keep = min(_shared(self.ids, ids), len(ids) - 1)
        while 0 < keep < len(ids) and ids[keep] in media_ids and ids[keep - 1] == ids[keep]:
            keep -= 1  # a media block's features are encoded whole
        _crop(self.thinker, len(self.ids), keep)
        if keep == 0:
            self.thinker = None
        self.ids = self.ids[:keep]
        self._states = [self.states()[:, :keep]] if keep else []
        return keep

    def extend(self, ids: list[int], states: torch.Tensor | None) -> None:
        self.ids.extend(ids)
        if states is not None:
            self._states.append(states)

    def states(self) -> torch.Tensor:
        if len(self._states) > 1:
            self._states = [torch.cat(self._states, dim=1)]
        return self._states[0]

    # --- talker -----------------------------------------------------------------------------------

    def reuse_talker(self, prompt_ids: list[int]) -> int:
        keep = min(_shared(self.talker_ids, prompt_ids), len(prompt_ids))
        if self.talker is not None:
            _crop(self.talker, self.talker.get_seq_length(), keep)
        if keep == 0:
            self.talker = None
        self.talker_ids = list(prompt_ids)
        return keep


def _shared(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def _crop(cache, length: int, keep: int) -> None:
    if cache is not None and length > keep:
        cache.crop(-(length - keep))
