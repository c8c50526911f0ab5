"""Global hotkeys: X11 needs the RECORD extension; Wayland has only the GlobalShortcuts portal, which Confide
does not use yet; macOS needs Input Monitoring permission. Where hotkeys cannot work, the same actions are
commands to bind in the desktop's own shortcut settings."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
from collections.abc import Mapping

from app.doctor.result import Check, fail, ok, warn

BIND_COMMANDS = ("bind these commands to keys in your desktop's keyboard-shortcut settings instead: "
                 "`confide --toggle` (window), `confide --ask-screen`, `confide --stop`")
BIND_ADVICE = BIND_COMMANDS[0].upper() + BIND_COMMANDS[1:] + "."


def check_hotkeys(environ: Mapping[str, str] | None = None, platform: str | None = None) -> Check:
    environ = os.environ if environ is None else environ
    platform = platform or sys.platform
    if platform == "darwin":
        return _macos(environ)
    if platform.startswith("win"):
        return ok("hotkeys", "Windows: global hotkeys are available")
    if environ.get("WAYLAND_DISPLAY") or environ.get("XDG_SESSION_TYPE", "").lower() == "wayland":
        portal = "offers" if _wayland_portal_has_global_shortcuts() else "does not offer"
        return warn("hotkeys", f"Wayland session: apps cannot see keys pressed in other windows (the desktop portal "
                               f"{portal} GlobalShortcuts, which Confide does not use yet)", BIND_ADVICE)
    from app.hotkeys import hotkey_support

    available, reason = hotkey_support(environ, platform)
    if available:
        return ok("hotkeys", f"X11 display {environ.get('DISPLAY')} has the RECORD extension: global hotkeys work")
    display = environ.get("DISPLAY")
    if not display:
        return fail("hotkeys", "no X display (DISPLAY is not set)",
                    "Run Confide inside your desktop session (not over ssh or from cron), where DISPLAY is set; "
                    f"or {BIND_COMMANDS}.")
    if "RECORD" in reason:
        return fail("hotkeys", f"the X server on {display} lacks the RECORD extension, which global hotkeys need",
                    "Enable it in the X server's configuration (Xorg: Section \"Module\" → Load \"record\"; Xvfb/Xvnc: "
                    f"drop `-extension RECORD`), then log in again; or {BIND_COMMANDS}.")
    return fail("hotkeys", reason.split(". ")[0], f"Check that {display} is reachable (`xdpyinfo`); or {BIND_COMMANDS}.")


def _wayland_portal_has_global_shortcuts() -> bool:
    """Whether xdg-desktop-portal answers for org.freedesktop.portal.GlobalShortcuts (KDE 5.27+, GNOME 48+)."""
    try:
        from PySide6.QtDBus import QDBusConnection, QDBusInterface
    except ImportError:
        return False
    bus = QDBusConnection.sessionBus()
    if not bus.isConnected():
        return False
    interface = QDBusInterface("org.freedesktop.portal.Desktop", "/org/freedesktop/portal/desktop",
                               "org.freedesktop.portal.GlobalShortcuts", bus)
    return interface.isValid()


def _macos(environ: Mapping[str, str]) -> Check:
    """Input Monitoring (IOHIDCheckAccess) decides whether keys pressed in other apps can be seen at all."""
    granted = _macos_input_monitoring_granted()
    how = ("Allow Confide in System Settings → Privacy & Security → Input Monitoring (and Accessibility), "
           "then quit and start Confide again")
    if granted is False:
        return fail("hotkeys", "macOS has not given Confide Input Monitoring permission", f"{how}; or {BIND_COMMANDS}.")
    seen = "granted" if granted else "could not be checked"
    return warn("hotkeys", f"macOS: Input Monitoring permission {seen}, but Confide's global hotkeys are not "
                           "implemented on macOS yet", BIND_ADVICE)


def _macos_input_monitoring_granted() -> bool | None:
    path = ctypes.util.find_library("IOKit")
    if not path:
        return None
    try:
        iokit = ctypes.cdll.LoadLibrary(path)
        iokit.IOHIDCheckAccess.restype = ctypes.c_uint32
        iokit.IOHIDCheckAccess.argtypes = [ctypes.c_uint32]
        kIOHIDRequestTypeListenEvent, kIOHIDAccessTypeGranted = 1, 0
        return iokit.IOHIDCheckAccess(kIOHIDRequestTypeListenEvent) == kIOHIDAccessTypeGranted
    except (OSError, AttributeError):
        return None
