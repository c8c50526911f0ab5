"""Files that are never half-written: what a crash, a kill or a full disk leaves is the old file or the new.

Shared by the settings and the conversation history.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def write_file_atomically(path: Path, data: bytes) -> None:
    """Replace `path` with `data` so that it holds either its old bytes or all of the new ones, even across a
    crash or power loss: a temp file in the same folder, fsync, rename over, fsync the folder.

    The file is created readable by the user alone (mkstemp's 0600): settings hold the engine token and the
    history holds what was said. On any failure (a full disk, say) the temp file is removed, the old file is
    untouched and the OSError propagates.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(descriptor, "wb") as temp:
            temp.write(data)
            temp.flush()
            os.fsync(temp.fileno())  # the bytes are on disk before the name points at them
        os.replace(temp_name, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp_name)
        raise
    _fsync_folder(path.parent)  # makes the rename itself durable


def _fsync_folder(folder: Path) -> None:
    if not hasattr(os, "O_DIRECTORY"):  # Windows: folders cannot be opened; NTFS journals the rename
        return
    descriptor = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def keep_broken_file(path: Path) -> str:
    """Move a broken file out of the way (for the person to look at); the next save writes a good one."""
    broken = path.with_name(path.name + ".broken")
    try:
        os.replace(path, broken)
    except OSError as error:
        return f" (could not move it aside: {error.strerror})"
    return f" (the file was kept as {broken.name})"


def remove_stale_temp_files(path: Path) -> None:
    """Temp files a crash left beside `path` mid-save (the good file was never touched)."""
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        with contextlib.suppress(OSError):
            stale.unlink()
