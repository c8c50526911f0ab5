"""Pinning a hub model at fetch time: one commit, and each file's checksum as the hub lists it.

The catalog cannot hold checksums for files it could not see (the omni checkpoints), so `models fetch` asks
the hub: `GET <hub>/api/models/<repo>/revision/<revision>?blobs=true` answers with `sha` (the commit the
revision points at now) and `siblings`, one `{"rfilename", "size", "blobId", "lfs": {"sha256", "size",
"pointerSize"}}` per file (`lfs` only for files kept in LFS; `blobId` is then the pointer's blob, and the
file's own SHA-1 is never listed). Every file is then downloaded from `<hub>/<repo>/resolve/<commit>/<name>`,
so all come from one snapshot even if the branch moves meanwhile, and checked: an LFS file by SHA-256 and
size, any other by size and git blob SHA-1. What the fetch checked against is recorded in the cache
(MANIFEST_NAME beside the model's files), and from then on the store checks the files against that record at
every load, as it checks catalog pins. A served cache (CONFIDE_MODELS_MIRROR) carries the record at
`<mirror>/<model id>/MANIFEST_NAME`; a fetch through that mirror uses it the same way.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from urllib.parse import quote

from engine.models.download import HttpStatusError, ModelFileError, fetch_bytes, publish

log = logging.getLogger(__name__)

MANIFEST_NAME = "hub-manifest.json"
MANIFEST_LIMIT = 16 << 20  # bytes: a repository listing, far below this even for thousands of files

_COMMIT = re.compile(r"[0-9a-f]{40}")
_SHA256 = re.compile(r"[0-9a-f]{64}")


class ManifestError(ModelFileError):
    """The hub's (or the mirror's) listing cannot pin the model: unreadable, or a catalog file is not in it."""


@dataclass(frozen=True)
class Pin:
    """What one file must be: its size, and its SHA-256 (LFS files) or else its git blob SHA-1."""

    size: int
    sha256: str = ""
    blob_id: str = ""


@dataclass(frozen=True)
class Snapshot:
    """The catalog's files as one commit of a repository holds them."""

    repo: str
    revision: str  # what was asked for ("main")
    commit: str  # what it pointed at when the fetch began
    files: dict[str, Pin]

    def to_json(self) -> str:
        return json.dumps({"repo": self.repo, "revision": self.revision, "commit": self.commit,
                           "files": {name: _drop_empty(asdict(pin)) for name, pin in self.files.items()}}, indent=1)


def manifest_url(hub: str, repo: str, revision: str) -> str:
    return f"{hub}/api/models/{quote(repo, safe='/')}/revision/{quote(revision, safe='')}?blobs=true"


def resolve_url(hub: str, repo: str, commit: str, name: str) -> str:
    return f"{hub}/{quote(repo, safe='/')}/resolve/{quote(commit, safe='')}/{quote(name)}"


def fetch_snapshot(hub: str, repo: str, revision: str, names: list[str]) -> Snapshot:
    """Ask the hub which commit `revision` is and how each of `names` is pinned there."""
    url = manifest_url(hub, repo, revision)
    try:
        listing = _json(fetch_bytes(url, MANIFEST_LIMIT), url)
    except HttpStatusError as error:
        if error.status >= 500:
            raise
        raise ManifestError(f"{url}: HTTP {error.status}: the hub does not list {repo} at {revision!r} (renamed, "
                            "private or gated?); nothing was downloaded") from error
    commit = listing.get("sha") if isinstance(listing, dict) else None
    siblings = listing.get("siblings") if isinstance(listing, dict) else None
    if not isinstance(commit, str) or not _COMMIT.fullmatch(commit) or not isinstance(siblings, list):
        raise ManifestError(f"{url}: not a hub model listing (no commit `sha` and `siblings`); "
                            "is CONFIDE_HUB_URL a Hugging Face hub or a mirror of its API?")
    listed = {entry.get("rfilename"): entry for entry in siblings if isinstance(entry, dict)}
    where = f"{repo} at commit {commit}"
    _require(names, listed, where)
    return Snapshot(repo, revision, commit, {name: _pin(listed[name], name, where) for name in names})


def parse_recorded(data: bytes, where: str, names: list[str] | None = None) -> Snapshot:
    """A record written by Snapshot.to_json (the cache's, or a mirror's); with `names`, all must be in it."""
    record = _json(data, where)
    try:
        files = {name: Pin(int(pin["size"]), str(pin.get("sha256", "")), str(pin.get("blob_id", "")))
                 for name, pin in record["files"].items()}
        snapshot = Snapshot(str(record["repo"]), str(record["revision"]), str(record["commit"]), files)
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise ManifestError(f"{where}: not a model manifest ({error!r}); "
                            "delete it and fetch the model again") from error
    if any(not (pin.sha256 or pin.blob_id) for pin in files.values()):
        raise ManifestError(f"{where}: a file without a checksum; delete it and fetch the model again")
    if names is None:
        return snapshot
    _require(names, files, f"{where} (commit {snapshot.commit})")
    return replace(snapshot, files={name: files[name] for name in names})


def read_recorded(path: Path) -> Snapshot | None:
    """The cache's record, or None when there is none (or it is unreadable: the files are then unpinned)."""
    try:
        return parse_recorded(path.read_bytes(), str(path))
    except FileNotFoundError:
        return None
    except (OSError, ManifestError) as error:
        log.warning("the files of this model are unpinned: %s", error)
        return None


def record(snapshot: Snapshot, path: Path) -> None:
    """Write the record atomically: a reader sees the old one or the new one, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    with open(temp, "w") as out:
        out.write(snapshot.to_json())
        out.flush()
        os.fsync(out.fileno())
    publish(temp, path)


def _pin(entry: dict, name: str, where: str) -> Pin:
    lfs = entry.get("lfs")
    if isinstance(lfs, dict):
        sha256, size = lfs.get("sha256"), lfs.get("size")
        if isinstance(sha256, str) and _SHA256.fullmatch(sha256) and isinstance(size, int):
            return Pin(size, sha256=sha256)
    else:
        blob_id, size = entry.get("blobId"), entry.get("size")
        if isinstance(blob_id, str) and _COMMIT.fullmatch(blob_id) and isinstance(size, int):
            return Pin(size, blob_id=blob_id)
    raise ManifestError(f"{where}: the listing gives no checksum and size for {name}; cannot verify it")


def _require(names: list[str], listed: dict, where: str) -> None:
    absent = [name for name in names if name not in listed]
    if absent:
        raise ManifestError(f"{where} has no {', '.join(absent)}, which the catalog lists; nothing was downloaded "
                            "(the repository changed: a newer Confide may list its files, or pin a commit in the "
                            "catalog)")


def _json(data: bytes, where: str):
    try:
        return json.loads(data)
    except ValueError as error:
        raise ManifestError(f"{where}: not JSON ({error}); try again, or check CONFIDE_HUB_URL") from error


def _drop_empty(fields: dict) -> dict:
    return {key: value for key, value in fields.items() if value != ""}
