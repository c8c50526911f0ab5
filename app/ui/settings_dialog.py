"""The settings a person may want to change, on one page. Nothing is applied until OK, and OK stays
disabled while something cannot work (a hotkey that would never fire, an engine address that is not one)."""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

from PySide6.QtCore import Qt, QUrl
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QDoubleSpinBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QSlider,
    QVBoxLayout,
    QWidget,
)

from app.hotkeys import HOTKEY_ACTIONS, bindings_problems
from app.ui.icons import app_icon

HOTKEY_LABELS = {
    "toggle_window": "Show or hide the window",
    "push_to_talk": "Push to talk (hold)",
    "ask_screen": "Ask about my screen",
    "stop_speaking": "Stop speaking",
}
HOTKEY_HELP = ("Keys joined by +, names in angle brackets: <ctrl>+<alt>+<space>, <ctrl>+<shift>+k, <f9>. "
               "Leave empty for no hotkey.")
ENGINE_SCHEMES = ("ws", "wss", "http", "https")
SYSTEM_DEFAULT = "System default"
ERROR_STYLE = "color: #c92a2a; font-size: 11px;"


def _replaced(obj: Any, **changes: Any) -> Any:
    """A copy of `obj` with `changes`: dataclasses (frozen or not) via replace(), anything else via setattr."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.replace(obj, **changes)
    result = copy.copy(obj)
    for name, value in changes.items():
        setattr(result, name, value)
    return result


def engine_url_problem(url: str) -> str | None:
    """Why `url` is not a usable engine address, or None (empty means Confide's own engine)."""
    url = url.strip()
    if not url:
        return None
    parsed = QUrl(url, QUrl.ParsingMode.StrictMode)
    if not parsed.isValid() or parsed.scheme().lower() not in ENGINE_SCHEMES or not parsed.host():
        return "give a full address such as ws://192.168.1.20:8765/v1/realtime (or leave it empty)"
    return None


class DeviceChoice(QComboBox):
    """The system default, then the devices present; a saved device that is unplugged stays selectable so
    that saving other settings does not silently forget it."""

    def __init__(self, devices: list[str], current: str | None, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.addItem(SYSTEM_DEFAULT, None)
        for name in devices:
            self.addItem(name, name)
        if current is not None and current not in devices:
            self.addItem(f"{current} (not connected)", current)
        self.setCurrentIndex(max(0, self.findData(current)) if current is not None else 0)

    def device(self) -> str | None:
        return self.currentData()


class SettingsDialog(QDialog):
    """Edits audio devices, hotkeys, voice speed, hands-free and its sensitivity, and the engine address.

    `result_settings()` returns a new settings object (the one passed in is not changed); fields this dialog
    does not show are carried over unchanged.
    """

    def __init__(self, settings: Any, input_devices: list[str], output_devices: list[str],
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Confide settings")
        self.setWindowIcon(app_icon())
        self._settings = settings

        # Audio
        self.input_choice = DeviceChoice(list(input_devices), settings.audio.input_device)
        self.output_choice = DeviceChoice(list(output_devices), settings.audio.output_device)
        audio = QFormLayout()
        audio.addRow("Microphone", self.input_choice)
        audio.addRow("Speaker", self.output_choice)
        self.echo_box = QCheckBox("Cancel the assistant's own voice (for speakers, not needed with headphones)")
        self.echo_box.setChecked(bool(getattr(settings.audio, "echo_cancellation", True)))
        self.noise_box = QCheckBox("Suppress background noise")
        self.noise_box.setChecked(bool(getattr(settings.audio, "noise_suppression", False)))
        audio.addRow(self.echo_box)
        audio.addRow(self.noise_box)

        # Hotkeys, each with its own error line
        self.hotkey_edits: dict[str, QLineEdit] = {}
        self.hotkey_errors: dict[str, QLabel] = {}
        hotkeys = QFormLayout()
        for name in HOTKEY_ACTIONS:
            edit = QLineEdit(getattr(settings.hotkeys, name) or "")
            edit.setPlaceholderText("no hotkey")
            edit.setToolTip(HOTKEY_HELP)
            edit.textChanged.connect(self._validate)
            error = QLabel()
            error.setStyleSheet(ERROR_STYLE)
            error.setWordWrap(True)
            error.hide()
            column = QVBoxLayout()
            column.setSpacing(2)
            column.addWidget(edit)
            column.addWidget(error)
            hotkeys.addRow(HOTKEY_LABELS[name], column)
            self.hotkey_edits[name], self.hotkey_errors[name] = edit, error
        hint = QLabel(HOTKEY_HELP)
        hint.setWordWrap(True)
        hint.setStyleSheet("color: #868e96; font-size: 11px;")
        hotkeys.addRow(hint)

        # Voice and conversation
        self.speed_box = QDoubleSpinBox()
        self.speed_box.setRange(0.5, 2.0)
        self.speed_box.setSingleStep(0.1)
        self.speed_box.setDecimals(2)
        self.speed_box.setSuffix(" ×")
        self.speed_box.setValue(float(settings.voice.speed))
        self.hands_free_box = QCheckBox("Listen all the time (hands-free)")
        self.hands_free_box.setChecked(bool(settings.conversation.hands_free))
        self.sensitivity_slider = QSlider(Qt.Orientation.Horizontal)
        self.sensitivity_slider.setRange(0, 100)
        self.sensitivity_slider.setValue(round(float(settings.conversation.vad_sensitivity) * 100))
        self.sensitivity_slider.setToolTip("Higher hears quieter speech, and more background noise")
        sensitivity = QHBoxLayout()
        sensitivity.addWidget(QLabel("Less"))
        sensitivity.addWidget(self.sensitivity_slider, 1)
        sensitivity.addWidget(QLabel("More"))
        self.instructions_edit = QLineEdit(getattr(settings.conversation, "instructions", "") or "")
        self.instructions_edit.setPlaceholderText("Empty: short, friendly spoken answers")
        self.instructions_edit.setToolTip("How the assistant should answer, e.g. \"Answer in French.\"")
        talk = QFormLayout()
        talk.addRow("Voice speed", self.speed_box)
        talk.addRow("Instructions", self.instructions_edit)
        talk.addRow(self.hands_free_box)
        talk.addRow("Speech sensitivity", sensitivity)

        # Engine
        self.engine_url_edit = QLineEdit(settings.engine.url or "")
        self.engine_url_edit.setPlaceholderText("Empty: Confide's own engine on this computer")
        self.engine_url_edit.textChanged.connect(self._validate)
        self.engine_url_error = QLabel()
        self.engine_url_error.setStyleSheet(ERROR_STYLE)
        self.engine_url_error.setWordWrap(True)
        self.engine_url_error.hide()
        self.engine_token_edit = QLineEdit(settings.engine.token or "")
        self.engine_token_edit.setEchoMode(QLineEdit.EchoMode.Password)
        self.engine_token_edit.setPlaceholderText("The server's access token, if it needs one")
        url_column = QVBoxLayout()
        url_column.setSpacing(2)
        url_column.addWidget(self.engine_url_edit)
        url_column.addWidget(self.engine_url_error)
        engine = QFormLayout()
        engine.addRow("Engine address", url_column)
        engine.addRow("Access token", self.engine_token_edit)

        self.buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel)
        self.buttons.accepted.connect(self.accept)
        self.buttons.rejected.connect(self.reject)

        layout = QVBoxLayout(self)
        for title, form in (("Audio", audio), ("Hotkeys", hotkeys), ("Conversation", talk), ("Engine", engine)):
            group = QGroupBox(title)
            group.setLayout(form)
            layout.addWidget(group)
        layout.addWidget(self.buttons)
        self._validate()

    def problems(self) -> dict[str, str]:
        """What stops OK, by field ("hotkeys.push_to_talk", "engine.url")."""
        problems = {f"hotkeys.{name}": problem
                    for name, problem in bindings_problems(self._hotkey_texts()).items()}
        url_problem = engine_url_problem(self.engine_url_edit.text())
        if url_problem:
            problems["engine.url"] = url_problem
        return problems

    def _hotkey_texts(self) -> dict[str, str]:
        return {name: edit.text().strip() for name, edit in self.hotkey_edits.items()}

    def _validate(self) -> None:
        problems = self.problems()
        for name, label in self.hotkey_errors.items():
            problem = problems.get(f"hotkeys.{name}")
            label.setText(f"This hotkey will not work: {problem}." if problem else "")
            label.setVisible(bool(problem))
        url_problem = problems.get("engine.url")
        self.engine_url_error.setText(f"Not an address: {url_problem}." if url_problem else "")
        self.engine_url_error.setVisible(bool(url_problem))
        self.engine_token_edit.setEnabled(bool(self.engine_url_edit.text().strip()))
        self.buttons.button(QDialogButtonBox.StandardButton.Ok).setEnabled(not problems)

    def accept(self) -> None:
        if self.problems():
            return  # Enter in a field presses OK even while it is disabled
        super().accept()

    def result_settings(self) -> Any:
        s = self._settings
        return _replaced(
            s,
            audio=_replaced(s.audio, input_device=self.input_choice.device(),
                            output_device=self.output_choice.device(), echo_cancellation=self.echo_box.isChecked(),
                            noise_suppression=self.noise_box.isChecked()),
            hotkeys=_replaced(s.hotkeys, **self._hotkey_texts()),
            voice=_replaced(s.voice, speed=round(self.speed_box.value(), 2)),
            conversation=_replaced(s.conversation, hands_free=self.hands_free_box.isChecked(),
                                   vad_sensitivity=self.sensitivity_slider.value() / 100,
                                   instructions=self.instructions_edit.text().strip()),
            engine=_replaced(s.engine, url=self.engine_url_edit.text().strip(), token=self.engine_token_edit.text()),
        )
