"""Global hotkey → window on screen, with the key pressed from outside the app.

The keys go in through XTEST (python-xlib's `fake_input`) on an X connection of the benchmark's own,
so the X server delivers them to the app's hotkey listener exactly as it would a person's, and no
process start (xdotool's ~20 ms) is counted. The clock starts as the combination's last key is sent;
it stops when the window's X window is mapped and exposed, seen by polling the Qt event loop tightly.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from app.bench.event_loop import run_for, run_until

INPUT_METHOD = "XTEST fake_input on a separate X connection (no process spawned per press)"
# pynput names (the settings' syntax) to X keysyms; either side of a modifier fires the hotkey.
_KEYSYMS = {"ctrl": "Control_L", "alt": "Alt_L", "shift": "Shift_L", "cmd": "Super_L", "space": "space",
            "enter": "Return", "esc": "Escape", "tab": "Tab", "backspace": "BackSpace"}
POLL_SLEEP_S = 0.0002  # lets the app's hotkey thread have the GIL between polls
GIVE_UP_S = 5.0


@dataclass(frozen=True)
class HotkeyTrial:
    to_window_ms: float | None  # None: the window never came up
    to_handler_ms: float | None  # until the app's hotkey handler had run (the window asked to show)


def keysyms_of(hotkey: str) -> list[str]:
    """"<ctrl>+<alt>+<space>" → ["Control_L", "Alt_L", "space"]; one character stands for itself."""
    names = []
    for part in hotkey.split("+"):
        name = part.strip("<>").lower() if len(part) > 1 else part
        if name.startswith("f") and name[1:].isdigit():
            names.append(name.upper())
        else:
            names.append(_KEYSYMS.get(name, name))
    return names


class XTestKeyboard:
    def __init__(self, display_name: str):
        from Xlib import display

        self._x = display.Display(display_name)

    def _keycode(self, keysym_name: str) -> int:
        from Xlib import XK

        code = self._x.keysym_to_keycode(XK.string_to_keysym(keysym_name))
        if not code:
            raise ValueError(f"the X keymap has no key for {keysym_name}")
        return code

    def press(self, keysyms: list[str]) -> float:
        """Hold the combination down; returns the monotonic time its last key was sent."""
        from Xlib import X
        from Xlib.ext import xtest

        codes = [self._keycode(name) for name in keysyms]
        for code in codes[:-1]:
            xtest.fake_input(self._x, X.KeyPress, code)
        self._x.sync()
        pressed = time.monotonic()
        xtest.fake_input(self._x, X.KeyPress, codes[-1])
        self._x.sync()
        return pressed

    def release(self, keysyms: list[str]) -> None:
        from Xlib import X
        from Xlib.ext import xtest

        for name in reversed(keysyms):
            xtest.fake_input(self._x, X.KeyRelease, self._keycode(name))
        self._x.sync()

    def close(self) -> None:
        self._x.close()


def _exposed(window) -> bool:
    handle = window.windowHandle()
    return window.isVisible() and handle is not None and handle.isExposed()


def _hide(window) -> None:
    window.hide()
    run_until(lambda: not _exposed(window), 5, "the window to be unmapped")


def measure(confide, probe, qt_app, display_name: str, trials: int) -> list[HotkeyTrial]:
    """Press the toggle hotkey `trials` times with the window hidden; time each until it is on screen."""
    keys = keysyms_of(confide.settings.hotkeys.toggle_window)
    keyboard = XTestKeyboard(display_name)
    window = confide.window
    results = []
    try:
        run_until(lambda: probe.hotkeys_ready, 10, "the global hotkeys to listen")
        for index in range(trials):
            _hide(window)
            run_for(0.15 + 0.04 * (index % 5))  # presses land at different points of the app's cycle
            probe.hotkey_fired_at = None
            pressed = keyboard.press(keys)
            shown = None
            while time.monotonic() - pressed < GIVE_UP_S:
                qt_app.processEvents()
                if _exposed(window):
                    shown = time.monotonic()
                    break
                time.sleep(POLL_SLEEP_S)
            keyboard.release(keys)
            handled = probe.hotkey_fired_at
            results.append(HotkeyTrial(
                to_window_ms=None if shown is None else round((shown - pressed) * 1000, 2),
                to_handler_ms=None if handled is None else round((handled - pressed) * 1000, 2)))
            run_for(0.05)  # the key releases reach the listener before the window goes again
        _hide(window)
    finally:
        keyboard.close()
    return results
