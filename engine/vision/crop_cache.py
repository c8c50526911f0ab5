"""Recognised text by crop pixels: a follow-up question about the same screen skips recognition.

Between two screenshots of one screen most lines are pixel-identical (only a clock or a cursor moved), and
the detector cuts them the same way, so their crops hash the same.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict

import numpy as np


class CropCache:
    def __init__(self, capacity: int = 4096):
        self.capacity = capacity
        self._entries: OrderedDict[bytes, tuple[str, float]] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def key(crop: np.ndarray) -> bytes:
        digest = hashlib.blake2b(np.ascontiguousarray(crop).data, digest_size=16)
        digest.update(repr(crop.shape).encode())
        return digest.digest()

    def get(self, key: bytes) -> tuple[str, float] | None:
        with self._lock:
            found = self._entries.get(key)
            if found is not None:
                self._entries.move_to_end(key)
            return found

    def put(self, key: bytes, value: tuple[str, float]) -> None:
        if self.capacity <= 0:
            return
        with self._lock:
            self._entries[key] = value
            self._entries.move_to_end(key)
            while len(self._entries) > self.capacity:
                self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)
