"""The engine as a separate process, as the app runs it: cold start and memory are measured on it."""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import time
from pathlib import Path


def serve_arguments(token: str, extra_args: list[str]) -> list[str]:
    """`confide-engine` arguments for a server on a free port. "--token=": a URL-safe token starts with "-"
    one time in 64, and argparse would take it for an option (the server then exited with a usage error)."""
    return ["serve", "--port", "0", f"--token={token}", *extra_args]


class EngineProcess:
    def __init__(self, extra_args: list[str], ready_timeout_s: float = 180.0, log_path: Path | None = None):
        self.token = secrets.token_urlsafe(16)
        self._log = open(log_path, "w") if log_path else subprocess.DEVNULL  # noqa: SIM115 (closed in stop)
        started = time.monotonic()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "engine", *serve_arguments(self.token, extra_args)],
            stdout=subprocess.PIPE, stderr=self._log, stdin=subprocess.DEVNULL, text=True,
            cwd=Path(__file__).resolve().parents[2],
        )
        ready = self._wait_ready(ready_timeout_s)
        self.cold_start_s = time.monotonic() - started
        self.url: str = ready["url"]
        self.model: str = ready["model"]

    def _wait_ready(self, timeout_s: float) -> dict:
        deadline = time.monotonic() + timeout_s
        assert self.process.stdout is not None
        while time.monotonic() < deadline:
            line = self.process.stdout.readline()
            if not line:
                raise RuntimeError(f"the engine exited before it was ready (code {self.process.wait()})")
            try:
                message = json.loads(line)
            except ValueError:
                continue
            if message.get("event") == "ready":
                return message
        raise TimeoutError("the engine did not become ready in time")

    def peak_rss_mb(self) -> float | None:
        """High-water mark of resident memory (Linux /proc); None where that is not available."""
        try:
            for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 1)
        except OSError:
            return None
        return None

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stdout:
            self.process.stdout.close()
        if self._log is not subprocess.DEVNULL:
            self._log.close()
