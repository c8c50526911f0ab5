"""What the test HTTP servers (hub_emulator.py, model_mirror.py) share: a real ThreadingHTTPServer on
127.0.0.1 run on a thread for the length of a `with`, and a GET handler base that records each request and
answers `Range: bytes=N-` as a CDN does (206 with Content-Range, 416 past the end).

    class Server(LoopbackServer):
        def __init__(self):
            self.requests = []                   # FileHandler.record() appends (path, Range header or None)
            super().__init__(Handler, "server")  # Handler(FileHandler) reaches the server as self.owner
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Self


class LoopbackServer:
    """Binds a free loopback port at construction (so `url` is known before the `with`); serves inside it."""

    requests: list[tuple[str, str | None]]

    def __init__(self, handler: type[FileHandler], name: str):
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._httpd.daemon_threads = True
        self._httpd.owner = self
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=name, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join()


class FileHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    @property
    def owner(self):
        return self.server.owner

    def record(self) -> str | None:
        """Note this request in the server's `requests`; returns its Range header."""
        range_header = self.headers.get("Range")
        self.owner.requests.append((self.path, range_header))
        return range_header

    def start_range_answer(self, size: int, range_header: str | None, headers: dict[str, str] | None = None) -> int | None:
        """Send the status and headers for a file of `size` bytes asked for with `range_header`; returns the
        offset its body starts at, or None when the range starts past the end (416 sent, no body)."""
        start = int(range_header.removeprefix("bytes=").split("-")[0]) if range_header else 0
        if start and start >= size:
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{size}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return None
        self.send_response(206 if start else 200)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{size - 1}/{size}")
        self.send_header("Content-Length", str(size - start))
        self.send_header("Accept-Ranges", "bytes")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        return start

    def log_message(self, *args) -> None:
        pass
