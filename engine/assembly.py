"""Builds a running engine from settings: the backend and the turn detectors its sessions use."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace

from engine.backends.base import Backend
from engine.backends.omni.settings import OmniLoadError, OmniSettings
from engine.models.store import ModelStore
from engine.realtime.session import DetectorFactory
from engine.realtime.session_config import TurnDetection
from engine.turns.detector import ServerVadSettings, TurnDetector
from engine.turns.vad import SileroVadModel

log = logging.getLogger(__name__)


@dataclass
class Engine:
    backend: Backend
    detector_factory: DetectorFactory
    load_seconds: float


def detector_factory(store: ModelStore, vad: SileroVadModel | None = None) -> DetectorFactory:
    vad = vad or SileroVadModel(store.resolve("silero-vad").file())

    def make(settings: TurnDetection) -> TurnDetector:
        return TurnDetector(vad, ServerVadSettings(
            threshold=settings.threshold,
            prefix_padding_ms=settings.prefix_padding_ms,
            silence_duration_ms=settings.silence_duration_ms,
        ))

    return make


BACKENDS = ("embedded", "omni")


def build_engine(backend_name: str = "embedded", llm: str | None = None, warm_up: bool = True,
                 store: ModelStore | None = None, seed: int | None = None,
                 omni: OmniSettings | None = None) -> Engine:
    started = time.monotonic()
    store = store or ModelStore()
    if backend_name not in BACKENDS:
        raise ValueError(f"unknown backend {backend_name!r}; available: {', '.join(BACKENDS)}")
    if backend_name == "omni":
        return _build_omni(omni or OmniSettings(), store, warm_up, seed, started)
    from engine.backends.embedded import EmbeddedBackend, EmbeddedSettings

    settings = EmbeddedSettings(seed=seed) if llm is None else EmbeddedSettings(llm=llm, seed=seed)
    vad = SileroVadModel(store.resolve("silero-vad").file())  # one model, shared by every stream
    backend = EmbeddedBackend(settings, store, vad)
    if warm_up:
        backend.warm_up()
    factory = detector_factory(store, vad)
    return Engine(backend, factory, time.monotonic() - started)


def _build_omni(settings: OmniSettings, store: ModelStore, warm_up: bool, seed: int | None,
                started: float) -> Engine:
    """torch and transformers are imported only here, so the embedded default never loads them."""
    try:
        from engine.backends.omni.backend import OmniBackend
    except ImportError as error:
        raise OmniLoadError(f"the omni backend needs torch and transformers ({error.name} is missing): "
                            "pip install 'confide[omni]'") from error
    if seed is not None and settings.seed is None:
        settings = replace(settings, seed=seed)
    vad = SileroVadModel(store.resolve("silero-vad").file())  # turn detection is the same for every backend
    backend = OmniBackend(settings, store)
    if warm_up:
        backend.warm_up()
    return Engine(backend, detector_factory(store, vad), time.monotonic() - started)
