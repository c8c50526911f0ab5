"""Builds a running engine from settings: the backend and the turn detectors its sessions use."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from engine.backends.base import Backend
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


def build_engine(backend_name: str = "embedded", llm: str | None = None, warm_up: bool = True,
                 store: ModelStore | None = None, seed: int | None = None) -> Engine:
    started = time.monotonic()
    store = store or ModelStore()
    if backend_name != "embedded":
        raise ValueError(f"unknown backend {backend_name!r}; available: embedded")
    from engine.backends.embedded import EmbeddedBackend, EmbeddedSettings

    settings = EmbeddedSettings(seed=seed) if llm is None else EmbeddedSettings(llm=llm, seed=seed)
    vad = SileroVadModel(store.resolve("silero-vad").file())  # one model, shared by every stream
    backend = EmbeddedBackend(settings, store, vad)
    if warm_up:
        backend.warm_up()
    factory = detector_factory(store, vad)
    return Engine(backend, factory, time.monotonic() - started)
