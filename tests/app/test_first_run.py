"""First run: models are assembled or downloaded before the engine starts, with progress, a cancel that keeps
what was done, and a next run that continues from there.

Real files and a real HTTP server on 127.0.0.1 (the model store tests' server) for the store's hooks; the
real preparation child process over the real default language model's package parts (~0.5 GB) for the
terminal bar and the app's dialog.
"""

from __future__ import annotations

import fcntl
import os
import pty
import random
import select
import signal
import struct
import subprocess
import sys
import termios
import threading
import time
from pathlib import Path

import pytest
from PySide6.QtCore import Qt

from engine.models.catalog import ModelFile
from engine.models.first_run import needed_models, plan, prepare
from engine.models.store import Cancelled, ModelStore, PendingWork
from tests.engine.test_model_store import PAYLOAD, fake_package, sha256, spec  # helpers, not tests
from tests.engine.test_model_store import server  # noqa: F401 (a fixture)

REPO = Path(__file__).resolve().parents[2]
LLM = "qwen2.5-coder-0.5b-instruct"
LLM_FILE = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
DATA = random.Random(1).randbytes(2_000_000)


def test_a_download_reports_progress_stops_on_cancel_and_resumes_where_it_stopped(server, tmp_path):
    server.files["/weights.bin"] = DATA
    model = spec("served", ModelFile("weights.bin", sha256(DATA), len(DATA), url=server.url("/weights.bin")))
    store = ModelStore(cache_dir=tmp_path, catalog=[model])
    assert plan(store, ["served"], download=True) == [PendingWork("served", "weights.bin", "downloading", len(DATA))]
    assert plan(store, ["served"], download=False) == []  # without leave to download, nothing to do here

    cancel, seen = threading.Event(), []

    def cancel_after_half_a_megabyte(progress) -> None:
        seen.append(progress)
        if progress.done >= 500_000:
            cancel.set()

    with pytest.raises(Cancelled, match="kept and will resume"):
        prepare(store, ["served"], download=True, on_progress=cancel_after_half_a_megabyte, cancel=cancel)
    kept = (tmp_path / "served" / "weights.bin.part").stat().st_size
    assert 500_000 <= kept < len(DATA)
    assert {(p.model_id, p.file, p.stage, p.total) for p in seen} == {("served", "weights.bin", "downloading", len(DATA))}
    assert [p.done for p in seen] == sorted(p.done for p in seen) and seen[0].done == 0

    resumed = []
    prepare(store, ["served"], download=True, on_progress=resumed.append)
    assert server.requests[-1] == ("/weights.bin", f"bytes={kept}-")  # only the rest was asked for
    assert resumed[0].done == kept and resumed[-1].done == len(DATA)
    assert store.resolve("served").file().read_bytes() == DATA
    assert plan(store, ["served"], download=True) == []


def test_assembly_reports_progress_stops_on_cancel_and_resumes(tmp_path, monkeypatch):
    root = tmp_path / "site"
    halves = (DATA[:1_300_000], DATA[1_300_000:])  # the store copies 1 MB at a time: three blocks
    fake_package(root, "confide_test_first_run_a", {"data/part1.bin": halves[0]})
    fake_package(root, "confide_test_first_run_b", {"data/part2.bin": halves[1]})
    monkeypatch.syspath_prepend(str(root))
    from engine.models.catalog import PackagePart

    parts = (PackagePart("confide_test_first_run_a", "data/part1.bin"),
             PackagePart("confide_test_first_run_b", "data/part2.bin"))
    store = ModelStore(cache_dir=tmp_path / "cache", catalog=[spec("split", ModelFile(
        "joined.bin", sha256(DATA), len(DATA), parts=parts))])
    assert plan(store, ["split"], download=False) == [PendingWork("split", "joined.bin", "assembling", len(DATA))]

    cancel, seen = threading.Event(), []

    def cancel_after_the_first_block(progress) -> None:
        seen.append(progress)
        if progress.done:
            cancel.set()

    with pytest.raises(Cancelled, match="continues it"):
        prepare(store, ["split"], download=False, on_progress=cancel_after_the_first_block, cancel=cancel)
    partial = tmp_path / "cache" / "split" / "joined.bin.assembling"
    assert partial.stat().st_size == 1 << 20 and not (tmp_path / "cache" / "split" / "joined.bin").exists()
    assert all(p.stage == "assembling" and p.total == len(DATA) for p in seen)

    resumed = []
    assert store.resolve("split", on_progress=resumed.append).file().read_bytes() == DATA
    assert resumed[0].done == 1 << 20 and resumed[-1].done == len(DATA)
    assert not partial.exists() and plan(store, ["split"], download=False) == []


def test_the_default_set_is_what_the_engine_resolves(tmp_path):
    store = ModelStore(cache_dir=tmp_path)
    assert needed_models(store) == ["silero-vad", "whisper-tiny.en", "piper-joe-medium", "ppocr-v6-small", LLM]
    assert needed_models(store, "smollm2-135m-instruct")[-1] == "smollm2-135m-instruct"
    # In a fresh cache the only first-run work is the split language model (everything else is used in place).
    assert plan(store, needed_models(store), download=True) == [
        PendingWork(LLM, LLM_FILE, "assembling", store.spec(LLM).size)]


def freeze_once_it_has_written(partial: Path, stop, timeout: float = 60.0) -> int:
    """Stop the preparing process (SIGSTOP, through `stop`) as soon as its `.assembling` file holds data.

    Joining 0.5 GB takes well under a second from a warm file cache, faster than a person, or a test, can
    react to a progress line: frozen, the cancel lands mid-file every time. Returns the size at the freeze."""
    deadline = time.monotonic() + timeout
    while not (partial.is_file() and partial.stat().st_size > 0):
        assert time.monotonic() < deadline, f"{partial} was never written"
        time.sleep(0.0005)
    stop(signal.SIGSTOP)
    return partial.stat().st_size


def _read_until(fd: int, pattern: bytes, timeout: float) -> bytes:
    seen = b""
    deadline = time.monotonic() + timeout
    while pattern not in seen and time.monotonic() < deadline:
        if select.select([fd], [], [], 0.1)[0]:
            try:
                seen += os.read(fd, 4096)
            except OSError:
                break
    return seen


@pytest.mark.slow
def test_confide_setup_draws_a_bar_in_the_terminal_ctrl_c_cancels_and_the_next_run_finishes(tmp_path):
    env = {**os.environ, "CONFIDE_MODELS_DIR": str(tmp_path)}
    controller, terminal = pty.openpty()  # a real terminal, so the bar is drawn as a person would see it
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # of a size: tqdm fits its bar
    process = subprocess.Popen([sys.executable, "-m", "app.main", "setup"], cwd=REPO, env=env, stdin=terminal,
                               stdout=terminal, stderr=terminal, start_new_session=True)
    os.close(terminal)
    partial = tmp_path / LLM / f"{LLM_FILE}.assembling"
    try:
        frozen_at = freeze_once_it_has_written(partial, lambda signum: os.killpg(process.pid, signum))
        os.killpg(process.pid, signal.SIGINT)  # Ctrl+C reaches the terminal's whole process group
        os.killpg(process.pid, signal.SIGCONT)
        assert process.wait(30) == 3
        shown = _read_until(controller, b"next start continues", 5)
    finally:
        if process.poll() is None:
            process.kill()
        os.close(controller)
    assert b"assembling " + LLM_FILE.encode() in shown and b"B/s" in shown, shown[-2000:]  # the bar
    assert b"cancelled" in shown, shown[-2000:]
    kept = partial.stat().st_size
    assert frozen_at <= kept < ModelStore().spec(LLM).size

    finished = subprocess.run([sys.executable, "-m", "app.main", "setup"], cwd=REPO, env=env, capture_output=True,
                              text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert finished.returncode == 0, finished.stderr[-2000:]
    assert "ready:" in finished.stderr and not partial.exists()
    assert (tmp_path / LLM / LLM_FILE).stat().st_size == ModelStore().spec(LLM).size  # and its SHA-256 was checked


@pytest.mark.slow
def test_first_start_shows_progress_cancel_keeps_the_work_and_the_next_start_finishes_then_starts(
        qapp, qtbot, tmp_path, monkeypatch):
    from app.main import _prepare_models_then

    monkeypatch.setenv("CONFIDE_MODELS_DIR", str(tmp_path))  # an empty cache: a first run
    started, quits = [], []
    _prepare_models_then(lambda: started.append(True), "", qapp, quit=quits.append)
    dialog, preparation = qapp.property("model_progress_dialog"), qapp.property("model_preparation")
    partial = tmp_path / LLM / f"{LLM_FILE}.assembling"
    qtbot.waitUntil(lambda: preparation.pid is not None, timeout=10_000)
    pid = preparation.pid
    frozen_at = freeze_once_it_has_written(partial, lambda signum: os.kill(pid, signum))
    qtbot.waitUntil(lambda: dialog.isVisible() and "Unpacking qwen2.5-coder-0.5b-instruct" in dialog.detail.text(),
                    timeout=10_000)
    with qtbot.waitSignal(preparation.cancelled, timeout=30_000):
        qtbot.mouseClick(dialog.cancel_button, Qt.MouseButton.LeftButton)
        os.kill(pid, signal.SIGCONT)
    assert quits == [3] and started == [] and not dialog.isVisible()
    kept = partial.stat().st_size
    assert frozen_at <= kept < ModelStore().spec(LLM).size

    _prepare_models_then(lambda: started.append(True), "", qapp, quit=quits.append)
    dialog, preparation = qapp.property("model_progress_dialog"), qapp.property("model_preparation")
    fractions = []
    preparation.progress.connect(lambda done, total, text: fractions.append(done / total))
    with qtbot.waitSignal(preparation.ready, timeout=300_000):
        pass
    assert started == [True] and quits == [3] and not dialog.isVisible()
    assert fractions[0] >= kept / ModelStore().spec(LLM).size - 1e-9  # continued, not started over
    assert not partial.exists() and (tmp_path / LLM / LLM_FILE).is_file()


def test_with_nothing_to_do_no_dialog_shows_and_the_app_starts(qapp, qtbot, tmp_path, monkeypatch):
    from app.main import _prepare_models_then

    monkeypatch.setenv("CONFIDE_MODELS_DIR", str(tmp_path))
    started = []
    # smollm2 ships whole in its package: nothing to assemble or download.
    _prepare_models_then(lambda: started.append(True), "smollm2-135m-instruct", qapp, quit=lambda code: None)
    preparation, dialog = qapp.property("model_preparation"), qapp.property("model_progress_dialog")
    shown = []
    preparation.work_found.connect(lambda total: shown.append(total))
    with qtbot.waitSignal(preparation.ready, timeout=60_000):
        pass
    assert started == [True] and not dialog.isVisible()
