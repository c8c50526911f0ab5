"""The input audio buffer: PCM16 samples on the session's timeline (samples since the session began)."""

from __future__ import annotations

from collections import deque

import numpy as np


class InputBuffer:
    def __init__(self) -> None:
        self._chunks: deque[tuple[int, np.ndarray]] = deque()  # (first sample index, int16 samples)
        self.end = 0  # timeline index one past the last sample ever appended

    @property
    def start(self) -> int:
        return self._chunks[0][0] if self._chunks else self.end

    @property
    def samples(self) -> int:
        return self.end - self.start

    def append(self, samples: np.ndarray) -> None:
        if samples.size:
            self._chunks.append((self.end, samples))
            self.end += samples.size

    def slice(self, begin: int, end: int | None = None) -> np.ndarray:
        """Samples in [begin, end) that are still held, as one int16 array."""
        end = self.end if end is None else end
        pieces = []
        for first, chunk in self._chunks:
            last = first + chunk.size
            if last <= begin or first >= end:
                continue
            pieces.append(chunk[max(0, begin - first): min(chunk.size, end - first)])
        return np.concatenate(pieces) if pieces else np.zeros(0, np.int16)

    def drop_before(self, index: int) -> None:
        while self._chunks and self._chunks[0][0] + self._chunks[0][1].size <= index:
            self._chunks.popleft()
        if self._chunks and self._chunks[0][0] < index:
            first, chunk = self._chunks.popleft()
            self._chunks.appendleft((index, chunk[index - first:]))

    def clear(self) -> None:
        self._chunks.clear()
