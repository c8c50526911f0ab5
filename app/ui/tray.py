"""The tray icon: what Confide is doing at a glance, and a menu for the few things a person asks of it."""

from __future__ import annotations

import logging
from typing import Protocol

from PySide6.QtCore import QObject, QRect, Signal
from PySide6.QtGui import QAction
from PySide6.QtWidgets import QMenu, QSystemTrayIcon

from app.state import AppState
from app.ui.icons import state_icon

log = logging.getLogger(__name__)

NOTIFICATION_MS = 8000


class MessageWindow(Protocol):
    """What the tray needs from the window to reach the person when there is no tray."""

    def show_message(self, text: str, error: bool = False) -> None: ...

    def present(self, focus: bool = True) -> None: ...


class TrayIcon(QObject):
    """Confide's icon in the system tray.

    The signals fire on the person's actions only; `set_hands_free`/`set_muted` never echo back as
    `hands_free_toggled`/`mute_toggled`, so the controller can mirror its state without loops.
    """

    open_window_requested = Signal()
    talk_requested = Signal()
    ask_screen_requested = Signal()
    hands_free_toggled = Signal(bool)
    mute_toggled = Signal(bool)
    settings_requested = Signal()
    new_conversation_requested = Signal()
    quit_requested = Signal()

    def __init__(self, fallback: MessageWindow | None = None, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._fallback = fallback
        self._state = AppState.CONNECTING

        self._menu = QMenu()  # a widget: it cannot be a QObject child; kept alive by this reference
        self._status_action = self._menu.addAction("")
        self._status_action.setEnabled(False)  # a heading that repeats the state in words
        self._menu.addSeparator()
        self.open_action = self._add_action("Open Confide", self.open_window_requested)
        self._menu.setDefaultAction(self.open_action)
        self.talk_action = self._add_action("Talk", self.talk_requested)
        self.ask_screen_action = self._add_action("Ask about my screen", self.ask_screen_requested)
        self._menu.addSeparator()
        self.hands_free_action = self._add_toggle("Hands-free", self.hands_free_toggled)
        self.mute_action = self._add_toggle("Mute microphone", self.mute_toggled)
        self._menu.addSeparator()
        self.new_conversation_action = self._add_action("New conversation", self.new_conversation_requested)
        self.settings_action = self._add_action("Settings…", self.settings_requested)
        self.quit_action = self._add_action("Quit", self.quit_requested)

        self._tray = QSystemTrayIcon(self)
        self._tray.setContextMenu(self._menu)
        self._tray.activated.connect(self._on_activated)
        self._tray.messageClicked.connect(self.open_window_requested)
        self.set_state(AppState.CONNECTING)

    def _add_action(self, text: str, signal) -> QAction:
        action = self._menu.addAction(text)
        action.triggered.connect(lambda _checked=False: signal.emit())
        return action

    def _add_toggle(self, text: str, signal) -> QAction:
        action = self._menu.addAction(text)
        action.setCheckable(True)
        # `triggered`, not `toggled`: the person's clicks only, never set_hands_free()/set_muted().
        action.triggered.connect(lambda: signal.emit(action.isChecked()))
        return action

    # --- what the person sees -------------------------------------------------------------------------------

    @property
    def available(self) -> bool:
        """Whether the desktop has a system tray to dock into."""
        return QSystemTrayIcon.isSystemTrayAvailable()

    @property
    def state(self) -> AppState:
        return self._state

    @property
    def menu(self) -> QMenu:
        return self._menu

    def geometry(self) -> QRect:
        """Where the icon sits on screen; empty until the tray has docked it."""
        return self._tray.geometry()

    def tool_tip(self) -> str:
        return self._tray.toolTip()

    def show(self) -> None:
        # Shown even without a tray: Qt docks the icon by itself if a tray appears later (a panel that
        # starts after Confide at login).
        self._tray.show()

    def hide(self) -> None:
        self._tray.hide()

    def is_visible(self) -> bool:
        return self._tray.isVisible()

    def set_state(self, state: AppState, detail: str = "") -> None:
        self._state = state
        self._tray.setIcon(state_icon(state))
        summary = f"Confide: {state.label}"
        self._tray.setToolTip(f"{summary}\n{detail}" if detail else summary)
        self._status_action.setText(f"{summary} — {detail}" if detail else summary)

    def set_hands_free(self, on: bool) -> None:
        self.hands_free_action.setChecked(on)

    def set_echo_mode(self, mode: str, explanation: str = "") -> None:
        self.hands_free_action.setText(f"Hands-free ({mode})" if mode else "Hands-free")

    def set_muted(self, on: bool) -> None:
        self.mute_action.setChecked(on)

    def notify(self, title: str, message: str, error: bool = False) -> None:
        """A balloon from the tray; without a tray, the message goes to the window, which comes up for errors
        (the person has to act on those) and keeps other messages for the next time it is opened."""
        if self.available and self._tray.isVisible() and QSystemTrayIcon.supportsMessages():
            icon = QSystemTrayIcon.MessageIcon.Critical if error else QSystemTrayIcon.MessageIcon.Information
            self._tray.showMessage(title, message, icon, NOTIFICATION_MS)
            return
        if self._fallback is None:
            log.warning("no tray and no window for the notification %r: %s", title, message)
            return
        self._fallback.show_message(f"{title}: {message}" if title else message, error=error)
        if error:
            self._fallback.present(focus=False)  # in view, without taking the keyboard from what they do

    def dispose(self) -> None:
        """Take the icon off the tray now (at quit; otherwise some trays keep a ghost icon a moment)."""
        self._tray.hide()
        self._menu.deleteLater()

    # --- clicks on the icon itself --------------------------------------------------------------------------

    def _on_activated(self, reason: QSystemTrayIcon.ActivationReason) -> None:
        if reason == QSystemTrayIcon.ActivationReason.Trigger:
            self.open_window_requested.emit()
        elif reason == QSystemTrayIcon.ActivationReason.MiddleClick:
            self.talk_requested.emit()
