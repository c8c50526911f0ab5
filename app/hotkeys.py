"""Global hotkeys: Confide's keys work whichever window has the focus.

pynput does the listening on X11 (through the RECORD extension) and Windows. Where it cannot work it is
never started (on Wayland it sees nothing; without RECORD its thread dies and it waits forever; on macOS it
crashes a Qt process): `hotkey_support()` says so, with the desktop commands to bind instead.

pynput is imported only once support is confirmed: importing it without an X display raises.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Mapping

from PySide6.QtCore import QObject, Qt, Signal

log = logging.getLogger(__name__)

HOTKEY_ACTIONS = ("toggle_window", "push_to_talk", "ask_screen", "stop_speaking")

# What to bind in the desktop's own shortcut settings where global hotkeys cannot work.
DESKTOP_COMMANDS = (
    ("confide --toggle", "show or hide the window"),
    ("confide --ask-screen", "ask about your screen"),
    ("confide --stop", "stop Confide speaking"),
)

# pynput's key names common to its X11, Windows and macOS backends.
MODIFIER_NAMES = frozenset({"alt", "alt_gr", "cmd", "ctrl", "shift"})
SIDED_MODIFIER_NAMES = frozenset({"alt_l", "alt_r", "cmd_l", "cmd_r", "ctrl_l", "ctrl_r", "shift_l", "shift_r"})
KEY_NAMES = MODIFIER_NAMES | SIDED_MODIFIER_NAMES | frozenset(
    {"backspace", "caps_lock", "delete", "down", "end", "enter", "esc", "home", "left", "page_down", "page_up",
     "right", "space", "tab", "up", "insert", "menu", "num_lock", "pause", "print_screen", "scroll_lock",
     "media_play_pause", "media_volume_mute", "media_volume_down", "media_volume_up", "media_previous",
     "media_next"}
    | {f"f{n}" for n in range(1, 21)}
)
# Keys that make a sensible hotkey on their own: nobody types them in the middle of a sentence.
LONE_KEY_NAMES = frozenset({"pause", "scroll_lock", "print_screen", "menu"}) | {f"f{n}" for n in range(1, 21)} | {
    name for name in KEY_NAMES if name.startswith("media_")}


# --- what a hotkey string may be -------------------------------------------------------------------------------


def _split_hotkey(text: str) -> list[str]:
    """Split like pynput's HotKey.parse: '+' separates keys, and a '+' key itself is allowed ("<ctrl>++")."""
    parts, start = [], 0
    for index, char in enumerate(text):
        if char == "+" and index != start:
            parts.append(text[start:index])
            start = index + 1
    if start == len(text):
        raise ValueError("it ends with '+'")
    parts.append(text[start:])
    return parts


def _hotkey_identity(text: str) -> frozenset[str]:
    """The keys of a valid hotkey as comparable names ("ctrl", "char:a", "vk:65")."""
    keys = set()
    for part in _split_hotkey(text):
        if len(part) == 1:
            keys.add(f"char:{part.lower()}")
        elif part[1:-1].lower() in KEY_NAMES:
            keys.add(part[1:-1].lower())
        else:
            keys.add(f"vk:{int(part[1:-1])}")
    return frozenset(keys)


def hotkey_problem(text: str) -> str | None:
    """Why `text` is not a usable hotkey in pynput's syntax ("<ctrl>+<alt>+<space>"), or None if it is.
    Stricter than pynput where pynput would accept a hotkey that can never fire or fires while typing."""
    text = text.strip()
    if not text:
        return "it is empty"
    try:
        parts = _split_hotkey(text)
    except ValueError as error:
        return str(error)
    names, chars = [], []
    for part in parts:
        if len(part) == 1:
            if part.isspace():
                return "write the space bar as <space>"
            chars.append(part.lower())
        elif len(part) > 2 and part[0] == "<" and part[-1] == ">":
            name = part[1:-1].lower()
            if name in SIDED_MODIFIER_NAMES:
                base = name.rsplit("_", 1)[0]
                return f"<{name}> never matches: write <{base}> (either side)"
            if name not in KEY_NAMES and not name.isdigit():
                return f"{part} is not a key name (try <ctrl>, <alt>, <shift>, <cmd>, <space>, <f1>…)"
            names.append(name)
        else:
            return f"{part!r} is not a key: use one character, or a name in angle brackets like <ctrl>"
    if len(names) + len(chars) != len(set(names) | set(chars)):
        return "a key appears twice"
    modifiers = [name for name in names if name in MODIFIER_NAMES]
    others = [name for name in names if name not in MODIFIER_NAMES] + chars
    if not modifiers and not all(name in LONE_KEY_NAMES for name in others):
        return "add a modifier such as <ctrl> or <alt>: on its own that key would fire while you type"
    if "shift" in modifiers and any(not char.isalpha() for char in chars):
        return "with <shift> held, a digit or symbol turns into another character: use a letter or a named key"
    return None


def bindings_problems(bindings: Mapping[str, str | None]) -> dict[str, str]:
    """Problems per action name: unknown actions, bad hotkeys, and hotkeys that share or contain the same
    keys (one would fire the other). Empty strings leave an action unbound."""
    problems: dict[str, str] = {}
    identities: dict[str, frozenset[str]] = {}
    for name, text in bindings.items():
        if name not in HOTKEY_ACTIONS:
            problems[name] = f"unknown action (known: {', '.join(HOTKEY_ACTIONS)})"
        elif text and text.strip():
            problem = hotkey_problem(text)
            if problem:
                problems[name] = problem
            else:
                identities[name] = _hotkey_identity(text.strip())
    for name, keys in identities.items():
        for other, other_keys in identities.items():
            if other == name or name in problems:
                continue
            if keys == other_keys:
                problems[name] = f"the same keys as {other.replace('_', ' ')}"
            elif keys > other_keys:
                problems[name] = f"holds all the keys of {other.replace('_', ' ')}, which would fire too"
    return problems


# --- where global hotkeys can work -----------------------------------------------------------------------------


def _fallback_advice() -> str:
    commands = "; ".join(f"{command} ({what})" for command, what in DESKTOP_COMMANDS)
    return (f"Bind these in your desktop's keyboard shortcut settings instead: {commands}. "
            "Push-to-talk works with the window's Hold to talk button, or turn on hands-free.")


def hotkey_support(environ: Mapping[str, str] | None = None, platform: str | None = None) -> tuple[bool, str]:
    """(available, reason): whether global hotkeys can work here, and if not, why and what to do instead."""
    environ = os.environ if environ is None else environ
    platform = sys.platform if platform is None else platform
    if platform == "darwin":
        return False, f"Global hotkeys are not supported on macOS yet. {_fallback_advice()}"
    if platform.startswith("win"):
        return True, ""
    if environ.get("WAYLAND_DISPLAY") or environ.get("XDG_SESSION_TYPE", "").lower() == "wayland":
        return False, ("Global hotkeys are not available on Wayland: apps cannot see keys pressed in other "
                       f"windows. {_fallback_advice()}")
    display_name = environ.get("DISPLAY")
    if not display_name:
        return False, f"Global hotkeys need an X11 display and none is set (DISPLAY is empty). {_fallback_advice()}"
    try:
        from Xlib import display as xdisplay
        from Xlib.error import DisplayError

        connection = xdisplay.Display(display_name)
    except (ImportError, DisplayError, OSError) as error:
        return False, f"Global hotkeys could not reach the X display {display_name} ({error}). {_fallback_advice()}"
    try:
        has_record = connection.has_extension("RECORD")
    finally:
        connection.close()
    if not has_record:
        return False, (f"Global hotkeys need the X server's RECORD extension, which {display_name} lacks. "
                       f"{_fallback_advice()}")
    return True, ""


# --- listening -------------------------------------------------------------------------------------------------


class _Combination:
    """Press/release state of one hotkey's keys; lives on pynput's thread."""

    def __init__(self, name: str, keys) -> None:
        self.name = name
        self.keys = frozenset(keys)
        self.down: set = set()
        self.active = False

    def press(self, key) -> bool:
        """True when this press completes the combination."""
        if key in self.keys:
            self.down.add(key)
            if not self.active and self.down == self.keys:
                self.active = True
                return True
        return False

    def release(self, key) -> bool:
        """True when this release ends an active combination."""
        if key in self.keys:
            self.down.discard(key)
            if self.active:
                self.active = False
                return True
        return False


STOP_WAIT_S = 0.5
_START_OF_DATA = 4  # Xlib.ext.record.StartOfData


def _make_listener(on_press, on_release, on_ready):
    """A pynput keyboard listener that calls `on_ready` once keys are really being seen."""
    from pynput import keyboard

    base = keyboard.Listener
    if not base.__module__.endswith("_xorg"):
        listener = base(on_press=on_press, on_release=on_release)
        threading.Thread(target=lambda: (listener.wait(), on_ready()), daemon=True, name="hotkeys-ready").start()
        return listener

    class RecordingListener(base):
        # pynput's wait() returns before the X server records anything: a key pressed in that gap is lost.
        # The server's StartOfData reply is the moment recording begins.
        def _handler(self, events):
            if getattr(events, "category", None) == _START_OF_DATA:
                on_ready()
            return super()._handler(events)

        def _stop_platform(self):
            super()._stop_platform()
            # pynput asks to stop on the connection its own thread is blocked reading, so the request sits
            # unsent until the next key arrives. Asking on its other connection ends the recording now.
            try:
                self._display_stop.record_disable_context(self._context)
                self._display_stop.flush()
            except Exception:  # the X server is gone: the thread ends on its own
                log.debug("could not end hotkey recording early", exc_info=True)

    return RecordingListener(on_press=on_press, on_release=on_release)


class GlobalHotkeys(QObject):
    """System-wide hotkeys for the actions in HOTKEY_ACTIONS. Signals are emitted in the GUI thread.

    `triggered(name)` fires on press for toggle_window, ask_screen and stop_speaking; push_to_talk reports
    both edges (`push_to_talk_pressed` when the whole combination is down, `push_to_talk_released` when any
    of its keys comes up). `ready` fires when the listener is seeing keys.
    """

    triggered = Signal(str)
    push_to_talk_pressed = Signal()
    push_to_talk_released = Signal()
    ready = Signal()

    # From pynput's thread into the GUI thread (queued). Ints rather than bools: pyproject excludes PySide6
    # 6.12.0 for miscounting references to bools passed through signals, and key events are many.
    _key_event = Signal(int, str, int)  # generation, action name, 1 = pressed / 0 = released
    _listener_ready = Signal(int)  # generation

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._listener = None
        self._generation = 0  # bumped on every start/stop: events of an old listener are dropped
        self._push_to_talk_down = False
        self._bindings: dict[str, str] = {}
        self._key_event.connect(self._on_key_event, Qt.ConnectionType.QueuedConnection)
        self._listener_ready.connect(self._on_listener_ready, Qt.ConnectionType.QueuedConnection)

    @staticmethod
    def support() -> tuple[bool, str]:
        return hotkey_support()

    @property
    def running(self) -> bool:
        return self._listener is not None

    @property
    def bindings(self) -> dict[str, str]:
        return dict(self._bindings)

    def start(self, bindings: Mapping[str, str | None]) -> bool:
        """Listen for `bindings` (action name → pynput hotkey string; empty = unbound). Returns False, without
        starting anything, where global hotkeys cannot work (see `support()` for why). Raises ValueError for
        bindings that cannot work, before touching a running listener."""
        problems = bindings_problems(bindings)
        if problems:
            raise ValueError("; ".join(f"{name.replace('_', ' ')}: {problem}" for name, problem in problems.items()))
        available, reason = self.support()
        if not available:
            log.info("global hotkeys off: %s", reason)
            self.stop()
            return False

        from pynput.keyboard import HotKey

        wanted = {name: text.strip() for name, text in bindings.items() if text and text.strip()}
        combinations = [_Combination(name, HotKey.parse(text)) for name, text in wanted.items()]
        self.stop()
        self._generation += 1
        generation = self._generation
        emit_key, emit_ready = self._key_event.emit, self._listener_ready.emit
        listener = None

        def on_press(key, injected=False):
            try:
                key = listener.canonical(key)
                for combination in combinations:
                    if combination.press(key):
                        emit_key(generation, combination.name, 1)
            except Exception:  # an exception would end pynput's thread and every hotkey with it
                log.exception("hotkey press handling failed")

        def on_release(key, injected=False):
            try:
                key = listener.canonical(key)
                for combination in combinations:
                    if combination.release(key):
                        emit_key(generation, combination.name, 0)
            except Exception:
                log.exception("hotkey release handling failed")

        listener = _make_listener(on_press, on_release, lambda: emit_ready(generation))
        listener.start()
        self._listener = listener
        self._bindings = wanted
        log.info("global hotkeys: %s", ", ".join(f"{n}={t}" for n, t in wanted.items()) or "none bound")
        return True

    def rebind(self, bindings: Mapping[str, str | None]) -> bool:
        """Swap in new bindings; on ValueError the old ones keep working."""
        return self.start(bindings)

    def stop(self) -> None:
        listener, self._listener = self._listener, None
        self._generation += 1
        if listener is not None:
            listener.stop()  # its events still queued for the GUI thread are stale now (generation)
            # The thread ends within milliseconds; waiting a little keeps it from outliving the X connection
            # at quit. A hung X server costs this wait, never a freeze.
            listener.join(STOP_WAIT_S)
        if self._push_to_talk_down:  # nobody will see the key come up: never leave the microphone held open
            self._push_to_talk_down = False
            self.push_to_talk_released.emit()

    def _on_key_event(self, generation: int, name: str, pressed: int) -> None:
        if generation != self._generation:
            return
        if name == "push_to_talk":
            if pressed and not self._push_to_talk_down:
                self._push_to_talk_down = True
                self.push_to_talk_pressed.emit()
            elif not pressed and self._push_to_talk_down:
                self._push_to_talk_down = False
                self.push_to_talk_released.emit()
        elif pressed:
            self.triggered.emit(name)

    def _on_listener_ready(self, generation: int) -> None:
        if generation == self._generation:
            self.ready.emit()
