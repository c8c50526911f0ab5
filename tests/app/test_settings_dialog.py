"""The settings dialog: every field round-trips, and what cannot work is explained and blocks OK."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import pytest

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QDialog, QDialogButtonBox

from app.settings import Settings
from app.ui.settings_dialog import SYSTEM_DEFAULT, SettingsDialog, engine_url_problem
from tests.harness import xdo
from tests.harness.xdo import wait_until

# The display fixtures come as a plugin, so every module shares one X server (and Qt stays on it).
pytestmark = pytest.mark.usefixtures("x_display")

INPUTS = ["Built-in Microphone", "USB Headset Mic"]
OUTPUTS = ["Built-in Speakers", "USB Headset"]


@pytest.fixture
def dialog(qtbot):
    def make(settings, inputs=INPUTS, outputs=OUTPUTS) -> SettingsDialog:
        dialog = SettingsDialog(settings, inputs, outputs)
        qtbot.addWidget(dialog)
        return dialog
    return make


def ok_button(dialog: SettingsDialog):
    return dialog.buttons.button(QDialogButtonBox.StandardButton.Ok)


def test_shows_the_current_settings(dialog):
    settings = Settings()
    settings.audio.input_device = "USB Headset Mic"
    settings.conversation.vad_sensitivity = 0.7
    settings.voice.speed = 1.25
    d = dialog(settings)
    assert d.input_choice.currentText() == "USB Headset Mic"
    assert d.output_choice.currentText() == SYSTEM_DEFAULT  # None: the system's default
    assert d.hotkey_edits["toggle_window"].text() == settings.hotkeys.toggle_window
    assert d.speed_box.value() == 1.25
    assert d.sensitivity_slider.value() == 70
    assert not d.engine_token_edit.isEnabled()  # no address: the local engine needs no token
    assert ok_button(d).isEnabled()


def test_every_field_round_trips(dialog, qtbot):
    original = Settings()
    d = dialog(original)
    d.input_choice.setCurrentIndex(d.input_choice.findData("USB Headset Mic"))
    d.output_choice.setCurrentIndex(d.output_choice.findData("Built-in Speakers"))
    new_keys = {"toggle_window": "<ctrl>+<shift>+c", "push_to_talk": "<f9>", "ask_screen": "<ctrl>+<alt>+a",
                "stop_speaking": ""}
    for name, text in new_keys.items():
        d.hotkey_edits[name].setText(text)
    d.speed_box.setValue(1.4)
    d.hands_free_box.setChecked(True)
    d.sensitivity_slider.setValue(35)
    d.instructions_edit.setText("  Answer in one short sentence. ")
    d.echo_box.setChecked(False)
    d.noise_box.setChecked(True)
    d.engine_url_edit.setText(" ws://192.168.1.20:8765/v1/realtime ")
    assert d.engine_token_edit.isEnabled()
    d.engine_token_edit.setText("s3cret")
    assert ok_button(d).isEnabled()
    qtbot.mouseClick(ok_button(d), Qt.MouseButton.LeftButton)
    assert d.result() == QDialog.DialogCode.Accepted

    result = d.result_settings()
    assert isinstance(result, Settings) and result is not original
    assert dataclasses.asdict(result) == {
        "audio": {"input_device": "USB Headset Mic", "output_device": "Built-in Speakers",
                  "echo_cancellation": False, "noise_suppression": True},
        "hotkeys": new_keys,
        "voice": {"name": original.voice.name, "speed": 1.4},  # the voice itself is not on this page: kept
        "conversation": {"hands_free": True, "vad_sensitivity": 0.35, "silence_ms": original.conversation.silence_ms,
                         "instructions": "Answer in one short sentence."},
        "engine": {"url": "ws://192.168.1.20:8765/v1/realtime", "token": "s3cret", "llm": original.engine.llm},
    }
    assert dataclasses.asdict(original) == dataclasses.asdict(Settings())  # the input is left alone


def test_plain_objects_work_too(dialog):
    plain = SimpleNamespace(
        audio=SimpleNamespace(input_device=None, output_device="USB Headset"),
        hotkeys=SimpleNamespace(toggle_window="<ctrl>+<alt>+<space>", push_to_talk="<ctrl>+<alt>+t",
                                ask_screen="<ctrl>+<alt>+s", stop_speaking="<ctrl>+<alt>+x"),
        voice=SimpleNamespace(speed=1.0),
        conversation=SimpleNamespace(hands_free=True, vad_sensitivity=0.5),
        engine=SimpleNamespace(url="", token=""),
    )
    d = dialog(plain)
    d.output_choice.setCurrentIndex(0)
    result = d.result_settings()
    assert result.audio.output_device is None and result.conversation.hands_free is True
    assert plain.audio.output_device == "USB Headset"  # copied, not changed in place


def test_bad_hotkey_is_explained_and_blocks_ok(dialog, qtbot, x_display):
    d = dialog(Settings())
    d.show()
    edit = d.hotkey_edits["push_to_talk"]
    edit.setText("<ctrl>+<alt>+<spcae>")
    error = d.hotkey_errors["push_to_talk"]
    assert error.isVisible()
    assert "<spcae> is not a key name" in error.text()
    assert not ok_button(d).isEnabled()
    assert "hotkeys.push_to_talk" in d.problems()
    # Enter in a field must not sneak past the disabled OK.
    d.activateWindow()
    edit.setFocus()
    wait_until(d.isActiveWindow, timeout=5, what="the dialog to take the focus")
    xdo.key(x_display, "Return").wait(5)
    qtbot.wait(100)
    assert d.isVisible() and d.result() != QDialog.DialogCode.Accepted

    edit.setText("<ctrl>+<alt>+<space>")  # now the same as "show or hide the window"
    assert "same keys as toggle window" in error.text() and not ok_button(d).isEnabled()
    edit.setText("<ctrl>+<alt>+p")
    assert not error.isVisible() and ok_button(d).isEnabled()


def test_bad_engine_address_is_explained(dialog):
    d = dialog(Settings())
    d.show()
    d.engine_url_edit.setText("192.168.1.20:8765")
    assert d.engine_url_error.isVisible() and "ws://" in d.engine_url_error.text()
    assert not ok_button(d).isEnabled()
    d.engine_url_edit.setText("")
    assert ok_button(d).isEnabled()
    assert engine_url_problem("wss://confide.example.org/v1/realtime") is None
    assert engine_url_problem("ftp://host/x") is not None


def test_unplugged_device_is_kept(dialog):
    settings = Settings()
    settings.audio.output_device = "Bluetooth Earbuds"
    d = dialog(settings)
    assert d.output_choice.currentText() == "Bluetooth Earbuds (not connected)"
    assert d.result_settings().audio.output_device == "Bluetooth Earbuds"


def test_cancel_reports_rejected(dialog, qtbot):
    d = dialog(Settings())
    qtbot.mouseClick(d.buttons.button(QDialogButtonBox.StandardButton.Cancel), Qt.MouseButton.LeftButton)
    assert d.result() == QDialog.DialogCode.Rejected
