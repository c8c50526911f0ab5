"""What one check found: a status, a line saying what was seen, and (when not ok) exactly what to do."""

from __future__ import annotations

import sys
from dataclasses import dataclass

OK, WARN, FAIL = "ok", "warn", "fail"  # warn: Confide works, with a limit the person should know about


@dataclass(frozen=True)
class Check:
    name: str
    status: str
    summary: str
    fix: str = ""


def ok(name: str, summary: str) -> Check:
    return Check(name, OK, summary)


def warn(name: str, summary: str, fix: str) -> Check:
    return Check(name, WARN, summary, fix)


def fail(name: str, summary: str, fix: str) -> Check:
    return Check(name, FAIL, summary, fix)


def platform_text(linux: str, windows: str, macos: str, platform: str | None = None) -> str:
    platform = platform or sys.platform
    if platform == "darwin":
        return macos
    return windows if platform.startswith("win") else linux


def frozen() -> bool:
    """Running from the installed bundle (PyInstaller), not from a source checkout."""
    return bool(getattr(sys, "frozen", False))


def reinstall_advice() -> str:
    return platform_text(
        "reinstall Confide: sudo apt install --reinstall confide (or the .deb again)",
        "run the Confide installer again (it repairs the installation)",
        "drag a fresh Confide.app from the disk image into Applications",
    )
