"""Screen capture: a display is there and mss grabs a non-empty image of it (macOS: with permission)."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping

from app.doctor.result import Check, fail, ok, warn

NO_DISPLAY_FIX = ("Run Confide inside your desktop session (not over ssh, from cron or a system service), where "
                  "DISPLAY or WAYLAND_DISPLAY is set; on a headless machine start a virtual display first "
                  "(`Xvfb :1 & export DISPLAY=:1`).")


def check_screen(environ: Mapping[str, str] | None = None, platform: str | None = None) -> Check:
    environ = os.environ if environ is None else environ
    platform = platform or sys.platform
    if platform.startswith("linux") and not environ.get("DISPLAY"):
        if environ.get("WAYLAND_DISPLAY"):
            return warn("screen", "Wayland without XWayland (DISPLAY is not set): screenshots need XWayland",
                        "Enable XWayland in your desktop (it is on by default in GNOME and KDE) and log in again.")
        return fail("screen", "no display to capture (DISPLAY is not set)", NO_DISPLAY_FIX)
    if platform == "darwin" and _macos_screen_capture_allowed() is False:
        return fail("screen", "macOS has not given Confide Screen Recording permission (screenshots would show "
                              "only the desktop background)",
                    "Allow Confide in System Settings → Privacy & Security → Screen Recording, then quit and start "
                    "Confide again.")
    import mss

    try:
        with mss.MSS() as grabber:
            monitors = grabber.monitors[1:] or grabber.monitors[:1]
            shot = grabber.grab(monitors[0])
    except Exception as error:  # mss raises ScreenShotError, Xlib errors surface as others
        return fail("screen", f"the screen could not be captured: {str(error).splitlines()[0]}", NO_DISPLAY_FIX)
    if shot.width * shot.height == 0 or not shot.rgb:
        return fail("screen", "the screenshot came back empty", NO_DISPLAY_FIX)
    note = ""
    if platform.startswith("linux") and environ.get("WAYLAND_DISPLAY"):
        note = " (through XWayland: other apps' windows may show black)"
    return ok("screen", f"captured {shot.width}×{shot.height} of {len(monitors)} monitor(s){note}")


def _macos_screen_capture_allowed() -> bool | None:
    import ctypes
    import ctypes.util

    path = ctypes.util.find_library("CoreGraphics") or ctypes.util.find_library("ApplicationServices")
    if not path:
        return None
    try:
        graphics = ctypes.cdll.LoadLibrary(path)
        graphics.CGPreflightScreenCaptureAccess.restype = ctypes.c_bool
        return bool(graphics.CGPreflightScreenCaptureAccess())
    except (OSError, AttributeError):
        return None
