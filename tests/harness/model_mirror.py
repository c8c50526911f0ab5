"""A real HTTP server for model downloads: files from a folder, byte ranges for resuming, and a slow mode.

Python's http.server serves folders but ignores `Range` (every answer is the whole file), and the model store
resumes a `.part` with `Range: bytes=N-`; this handler answers that with 206 and `Content-Range`, as a CDN
does. It serves a folder laid out as the model cache is (<model id>/<file name>), which is what
CONFIDE_MODELS_MIRROR points at. `trickle_after` holds a download at a known point: past that many bytes of
an answer it sends a small block every few milliseconds, so a test can see progress and cancel mid-file
(the client reads between blocks, so its cancel lands) without a race against a fast local transfer.
`stall_after` is a server (or proxy) that hangs: past that many bytes it sends nothing more, the connection
held open, until the mirror stops.

    with ModelMirror(folder) as mirror:
        mirror.url                  # the base URL
        mirror.requests             # [(path, Range header or None), ...] as they arrived
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from urllib.parse import unquote

from tests.harness.http_files import FileHandler, LoopbackServer

BLOCK = 1 << 16
TRICKLE_BLOCK = 1 << 12
TRICKLE_PAUSE_S = 0.005


class ModelMirror(LoopbackServer):
    def __init__(self, root: Path, trickle_after: int | None = None, stall_after: int | None = None):
        self.root = Path(root)
        self.trickle_after = trickle_after  # bytes of one answer sent at full speed; None: all of it
        self.stall_after = stall_after  # bytes of one answer sent before hanging; None: never hangs
        self.stopping = threading.Event()
        self.requests: list[tuple[str, str | None]] = []
        super().__init__(_Handler, "model-mirror")

    def __exit__(self, *exc) -> None:
        self.stopping.set()  # a stalled answer ends
        super().__exit__(*exc)


class _Handler(FileHandler):
    def do_GET(self) -> None:
        mirror: ModelMirror = self.owner
        range_header = self.record()
        path = (mirror.root / unquote(self.path).lstrip("/")).resolve()
        if not path.is_relative_to(mirror.root.resolve()) or not path.is_file():
            self.send_error(404)
            return
        start = self.start_range_answer(path.stat().st_size, range_header)
        if start is None:
            return
        with open(path, "rb") as handle:
            handle.seek(start)
            self._send(handle, mirror)

    def _send(self, handle, mirror: ModelMirror) -> None:
        sent = 0
        try:
            while True:
                size = BLOCK
                if mirror.stall_after is not None:
                    if sent >= mirror.stall_after:
                        mirror.stopping.wait()
                        return
                    size = min(size, mirror.stall_after - sent)
                slow = mirror.trickle_after is not None and sent >= mirror.trickle_after
                block = handle.read(TRICKLE_BLOCK if slow else size)
                if not block:
                    return
                self.wfile.write(block)
                sent += len(block)
                if slow:
                    time.sleep(TRICKLE_PAUSE_S)
        except (BrokenPipeError, ConnectionResetError):
            return  # the client stopped reading (a cancelled download): nothing more to send


def flip_a_byte(path: Path, offset: int) -> None:
    """Corrupt one byte of a served file in place, as a bad mirror or a broken disk would."""
    with open(path, "r+b") as handle:
        handle.seek(offset)
        byte = handle.read(1)
        handle.seek(offset)
        handle.write(bytes([byte[0] ^ 0xFF]))
        handle.flush()
        os.fsync(handle.fileno())
