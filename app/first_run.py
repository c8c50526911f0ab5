"""Before the local engine starts: have its models made ready in a child process, with progress and cancel.

On a first start the default language model is assembled from the parts its packages ship (~0.5 GB), or
a missing model is downloaded; the engine would otherwise do that silently while the tray says
"starting". The work runs in `python -m engine.models.first_run --json` (the app never imports the
engine), whose JSON lines drive a progress dialog. Cancelling leaves the part written in the cache, and
the next start continues from there. When nothing needs doing, the child answers in well under a second
and no dialog is shown.
"""

from __future__ import annotations

import json
import logging
import sys

from PySide6.QtCore import QObject, QProcess, Signal

log = logging.getLogger(__name__)

EXIT_CANCELLED = 3  # engine.models.first_run's code for a cancelled run


def preparation_command(llm: str = "") -> list[str]:
    """The child's command line (in the bundle, sys.executable answers `-m engine.models.first_run` too)."""
    return [sys.executable, "-m", "engine.models.first_run", "--json", "--download", *(["--llm", llm] if llm else [])]


class ModelPreparation(QObject):
    """Runs the preparation child and reports it as signals on the GUI thread.

    `work_found(total_bytes)` once, when something has to be written (0: nothing to do); `progress(done,
    total, text)` as it goes; then exactly one of `ready()`, `cancelled(message)` or `failed(message)`."""

    work_found = Signal(int)
    progress = Signal(int, int, str)
    ready = Signal()
    cancelled = Signal(str)
    failed = Signal(str)

    def __init__(self, llm: str = "", parent: QObject | None = None):
        super().__init__(parent)
        self.command = preparation_command(llm)
        self._process = QProcess(self)
        self._process.setProcessChannelMode(QProcess.ProcessChannelMode.SeparateChannels)
        self._process.readyReadStandardOutput.connect(self._read_lines)
        self._process.finished.connect(self._finished)
        self._process.errorOccurred.connect(self._process_error)
        self._outcome: dict | None = None
        self._reported = False
        self._cancel_requested = False

    def start(self) -> None:
        log.info("preparing models: %s", " ".join(self.command))
        self._process.start(self.command[0], self.command[1:])

    def cancel(self) -> None:
        """Ask the child to stop (it keeps what it wrote); `cancelled` follows once it has."""
        if self._process.state() == QProcess.ProcessState.NotRunning:
            return
        self._cancel_requested = True
        self._process.write(b"cancel\n")  # read between blocks: stops within a megabyte
        self._process.closeWriteChannel()

    @property
    def pid(self) -> int | None:
        pid = self._process.processId()
        return pid or None

    def wait(self, msecs: int = 30_000) -> bool:
        return self._process.waitForFinished(msecs)

    def _read_lines(self) -> None:
        while self._process.canReadLine():
            line = bytes(self._process.readLine()).decode("utf-8", "replace").strip()
            try:
                message = json.loads(line)
            except ValueError:
                continue
            event = message.get("event")
            if event == "plan":
                self.work_found.emit(int(message.get("total_bytes", 0)))
            elif event == "progress":
                self.progress.emit(int(message["overall_done"]), int(message["overall_total"]),
                                   _describe(message))
            elif event in ("done", "cancelled", "error"):
                self._outcome = message

    def _finished(self, exit_code: int, _status) -> None:
        self._read_lines()
        stderr = bytes(self._process.readAllStandardError()).decode("utf-8", "replace").strip()
        outcome = self._outcome or {}
        if outcome.get("event") == "done" and exit_code == 0:
            self._report(self.ready)
        elif outcome.get("event") == "cancelled" or exit_code == EXIT_CANCELLED or self._cancel_requested:
            self._report(self.cancelled, outcome.get("message") or "cancelled")
        else:
            reason = outcome.get("message") or (stderr.splitlines() or [f"exit code {exit_code}"])[-1]
            self._report(self.failed, reason)

    def _process_error(self, error: QProcess.ProcessError) -> None:
        if error == QProcess.ProcessError.FailedToStart:
            self._report(self.failed, f"could not run {self.command[0]}: {self._process.errorString()}")

    def _report(self, signal, *args) -> None:
        if not self._reported:
            self._reported = True
            signal.emit(*args)


def _describe(message: dict) -> str:
    verb = "Downloading" if message.get("stage") == "downloading" else "Unpacking"
    done, total = message.get("done", 0), message.get("total", 0)
    size = f"{done / 1e6:.0f} of {total / 1e6:.0f} MB" if total else f"{done / 1e6:.0f} MB"
    return f"{verb} {message.get('model')}: {size}"
