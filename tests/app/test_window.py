"""The main window on a real X display: typing and clicks come from xdotool, as a person's would."""

from __future__ import annotations

import math
import os
import time

import pytest

from PySide6.QtCore import QBuffer, QByteArray, QIODevice, QPoint, Qt
from PySide6.QtGui import QColor, QGuiApplication, QImage
from PySide6.QtWidgets import QApplication

from app.state import AppState
from app.ui.icons import state_colour
from app.ui.window import ASSISTANT, INTERRUPTED_NOTE, THUMBNAIL_WIDTH, USER, MainWindow, ScreenshotViewer
from tests.harness import xdo
from tests.harness.xdo import wait_until

# The display fixtures come as a plugin, so every module shares one X server (and Qt stays on it).
pytestmark = pytest.mark.usefixtures("x_display")


@pytest.fixture
def window(qtbot) -> MainWindow:
    window = MainWindow()
    qtbot.addWidget(window)
    window.set_state(AppState.IDLE)
    yield window
    for widget in QApplication.topLevelWidgets():
        if isinstance(widget, ScreenshotViewer):
            widget.close()


def shown(window: MainWindow) -> float:
    """Bring the window up and wait until it has the keyboard focus; the seconds it took."""
    started = time.perf_counter()
    window.toggle_visibility()
    wait_until(lambda: window.isVisible() and window.isActiveWindow(), timeout=5, what="the window to be active")
    return time.perf_counter() - started


def centre_on_screen(widget) -> QPoint:
    return widget.mapToGlobal(widget.rect().center())


def png_bytes(image: QImage) -> bytes:
    data = QByteArray()
    buffer = QBuffer(data)
    buffer.open(QIODevice.OpenModeFlag.WriteOnly)
    assert image.save(buffer, "PNG")
    return bytes(data)


def solid_image(width: int, height: int, colour: str) -> QImage:
    image = QImage(width, height, QImage.Format.Format_RGB32)
    image.fill(QColor(colour))
    return image


# --- showing, hiding -----------------------------------------------------------------------------------------


def test_toggle_visibility_shows_an_active_window_then_hides_it(window, x_display):
    seconds = shown(window)
    print(f"\nwindow show latency (toggle → visible and focused): {seconds * 1000:.0f} ms")
    assert seconds < 3
    assert window.windowHandle().isExposed()
    assert x_display.input_focus() == int(window.winId())  # the X server agrees: keys go to the window
    assert window.text_input.hasFocus()  # ready to type at once
    screen = QGuiApplication.screenAt(window.frameGeometry().center())
    assert screen is not None and screen.availableGeometry().contains(window.frameGeometry())

    window.toggle_visibility()
    assert not window.isVisible()


def test_toggle_brings_a_visible_but_inactive_window_forward(window, qtbot):
    shown(window)
    other = MainWindow()
    qtbot.addWidget(other)
    other.present()
    wait_until(other.isActiveWindow, timeout=5, what="the other window to take the focus")
    assert window.isVisible() and not window.isActiveWindow()
    window.toggle_visibility()  # behind another window: come forward rather than vanish
    wait_until(window.isActiveWindow, timeout=5, what="the window to come forward")


def test_present_without_focus_leaves_the_keyboard_alone(window, x_display, qtbot):
    """For messages that must reach the person without taking the keys from what they are typing."""
    focus_before = x_display.input_focus()
    window.present(focus=False)
    wait_until(lambda: window.isVisible() and window.windowHandle().isExposed(), timeout=5, what="the window")
    qtbot.wait(100)
    assert not window.isActiveWindow()
    assert x_display.input_focus() == focus_before
    shown(window)  # a later summons takes the focus as usual
    assert x_display.input_focus() == int(window.winId())


def test_escape_hides_the_window(window, x_display):
    shown(window)
    xdo.key(x_display, "Escape").wait(5)
    wait_until(lambda: not window.isVisible(), timeout=5, what="Esc to hide the window")


def test_closing_hides_without_destroying(window):
    shown(window)
    window.close()
    assert not window.isVisible()
    window.set_state(AppState.SPEAKING)  # still alive and usable
    assert window.state_label.text() == "Speaking"


# --- input ---------------------------------------------------------------------------------------------------


def test_typed_text_is_submitted_with_enter(window, x_display, qtbot):
    shown(window)
    with qtbot.waitSignal(window.text_submitted, timeout=5000) as submitted:
        xdo.xdotool(x_display, "type", "--delay", "5", "what time is it")
        xdo.key(x_display, "Return").wait(5)
    assert submitted.args == ["what time is it"]
    assert window.text_input.text() == ""  # cleared, ready for the next
    # Only whitespace sends nothing.
    with qtbot.assertNotEmitted(window.text_submitted):
        qtbot.keyClicks(window.text_input, "   ")
        qtbot.keyClick(window.text_input, Qt.Key.Key_Return)


def test_push_to_talk_button_reports_press_and_release(window, x_display, qtbot):
    shown(window)
    point = centre_on_screen(window.talk_button)
    xdo.mousemove(x_display, point.x(), point.y())
    with qtbot.waitSignal(window.talk_pressed, timeout=5000):
        xdo.xdotool_async(x_display, "mousedown", "1")
    assert window.talk_button.isDown()
    with qtbot.waitSignal(window.talk_released, timeout=5000):
        xdo.xdotool_async(x_display, "mouseup", "1")
    assert not window.talk_button.isDown()


def test_talk_button_held_when_muting_reports_the_release(window, x_display, qtbot):
    """A press must always end in a release, or the microphone would stay open."""
    shown(window)
    point = centre_on_screen(window.talk_button)
    xdo.mousemove(x_display, point.x(), point.y())
    with qtbot.waitSignal(window.talk_pressed, timeout=5000):
        xdo.xdotool_async(x_display, "mousedown", "1")
    try:
        with qtbot.waitSignal(window.talk_released, timeout=1000):
            window.set_state(AppState.MUTED)
    finally:
        xdo.xdotool(x_display, "mouseup", "1")


def test_talk_button_is_off_while_it_cannot_listen(window):
    window.set_state(AppState.CONNECTING)
    assert not window.talk_button.isEnabled()
    window.set_state(AppState.MUTED)
    assert not window.talk_button.isEnabled()
    window.set_state(AppState.IDLE)
    assert window.talk_button.isEnabled()


def test_buttons_and_toggles_emit_on_clicks(window, x_display, qtbot):
    shown(window)
    for widget, signal, args in (
        (window.ask_screen_button, window.ask_screen_requested, []),
        (window.settings_button, window.settings_requested, []),
        (window.new_conversation_button, window.new_conversation_requested, []),
        (window.hands_free_box, window.hands_free_toggled, [True]),
        (window.mute_box, window.mute_toggled, [True]),
        (window.mute_box, window.mute_toggled, [False]),
    ):
        point = centre_on_screen(widget)
        with qtbot.waitSignal(signal, timeout=5000) as emitted:
            xdo.click(x_display, point.x(), point.y()).wait(5)
        assert emitted.args == args, widget


def test_setting_toggles_from_code_does_not_echo(window, qtbot):
    with qtbot.assertNotEmitted(window.hands_free_toggled), qtbot.assertNotEmitted(window.mute_toggled):
        window.set_hands_free(True)
        window.set_muted(True)
        qtbot.wait(20)
    assert window.hands_free_box.isChecked() and window.mute_box.isChecked()
    window.set_muted(False)
    assert not window.mute_box.isChecked()


# --- state line, messages, level -----------------------------------------------------------------------------


def test_state_line_shows_label_detail_and_colour(window):
    for state in AppState:
        window.set_state(state, f"about {state.value}")
        assert window.state is state
        assert window.state_label.text() == state.label
        assert window.detail_label.text() == f"about {state.value}"
        assert state_colour(state).name() in window.state_dot.styleSheet()
    window.set_state(AppState.IDLE)
    assert window.detail_label.text() == ""


def test_messages_info_fades_error_stays_until_clicked(window, x_display, qtbot):
    shown(window)
    window.show_message("Settings saved.")
    assert window.message_label.isVisible() and window.message_label.text() == "Settings saved."
    assert window.message_label.property("error") is False
    assert window._message_timer.isActive()  # an info message fades by itself

    window.show_message("No microphone found: plug one in, or pick one in Settings.", error=True)
    assert window.message_label.property("error") is True
    assert "#c92a2a" in window.message_label.styleSheet()
    assert not window._message_timer.isActive()  # an error waits to be read
    point = centre_on_screen(window.message_label)
    xdo.click(x_display, point.x(), point.y()).wait(5)
    wait_until(lambda: not window.message_label.isVisible(), timeout=5, what="a click to dismiss the message")


def bar_columns(window: MainWindow) -> int:
    """How many columns of the meter, along its middle row, are painted in the level colour."""
    image = window.level_meter.grab().toImage()
    row = image.height() // 2
    green = QColor("#2f9e44")
    return sum(1 for x in range(image.width())
               if sum(abs(a - b) for a, b in zip(image.pixelColor(x, row).getRgb()[:3], green.getRgb()[:3])) < 60)


def test_level_meter_draws_the_level(window):
    shown(window)
    width = window.level_meter.width()
    for level in (0.0, 0.25, 0.5, 0.8):
        window.set_mic_level(level)
        assert window.level_meter.level() == level
        assert abs(bar_columns(window) - level * width) <= max(4, width * 0.03), level
    for wild, expected in ((1.7, 1.0), (-0.3, 0.0), (math.nan, 0.0), (math.inf, 0.0)):
        window.set_mic_level(wild)
        assert window.level_meter.level() == expected


# --- the transcript ------------------------------------------------------------------------------------------


def test_user_partial_is_replaced_by_the_final_transcript(window):
    window.show_user_partial("item_1", "what's the wea")
    bubble = window.transcript.bubble(USER, "item_1")
    assert bubble.text_label.text() == "what's the wea"
    assert "italic" in bubble.text_label.styleSheet()  # lighter style while still being heard
    window.show_user_partial("item_1", "what's the weather in")
    window.show_user_final("item_1", "What's the weather in Lyon?")
    entries = window.transcript_entries()
    assert len(entries) == 1
    assert (entries[0].role, entries[0].text, entries[0].partial) == (USER, "What's the weather in Lyon?", False)
    assert bubble.text_label.text() == "What's the weather in Lyon?"
    assert "italic" not in bubble.text_label.styleSheet()
    window.show_user_partial("item_1", "what's the")  # a straggler partial never undoes the final words
    assert bubble.text_label.text() == "What's the weather in Lyon?"


def test_a_dropped_user_turn_leaves_the_transcript(window):
    window.show_user_final("item_1", "What's the weather in Lyon?")
    window.show_user_partial("item_echo", "climbed the hundred")  # the assistant's own voice
    window.drop_user_turn("item_echo")
    window.drop_user_turn("item_never_shown")
    assert [(e.role, e.text) for e in window.transcript_entries()] == [(USER, "What's the weather in Lyon?")]
    assert window.transcript.bubble(USER, "item_echo") is None


def test_final_without_partials_and_markup_shown_as_text(window):
    window.show_user_final("item_9", "<b>not bold</b> & fine")
    bubble = window.transcript.bubble(USER, "item_9")
    assert bubble.text_label.textFormat() == Qt.TextFormat.PlainText
    assert bubble.text_label.text() == "<b>not bold</b> & fine"


def test_assistant_deltas_accumulate_in_one_reply(window):
    window.show_user_final("item_1", "Weather?")
    for delta in ("It's", " sunny", " and 24 degrees."):
        window.show_assistant_delta("resp_1", delta)
    window.finish_assistant("resp_1", heard_text=None, interrupted=False)
    entries = window.transcript_entries()
    assert [(e.role, e.text) for e in entries] == [(USER, "Weather?"), (ASSISTANT, "It's sunny and 24 degrees.")]
    assert not entries[1].interrupted
    window.show_assistant_delta("resp_1", " Late words.")  # after the end: stale, dropped
    assert window.transcript_entries()[1].text == "It's sunny and 24 degrees."


def test_interrupted_reply_is_cut_to_what_was_heard_and_marked(window):
    for delta in ("Paris is the capital of France,", " and it has", " more than a hundred museums."):
        window.show_assistant_delta("resp_7", delta)
    window.finish_assistant("resp_7", heard_text="Paris is the capital of France, and", interrupted=True)
    entry = window.transcript_entries()[0]
    assert entry.text == "Paris is the capital of France, and" and entry.interrupted
    bubble = window.transcript.bubble(ASSISTANT, "resp_7")
    assert bubble.text_label.text() == "Paris is the capital of France, and"
    assert bubble.note_label.isVisibleTo(bubble) and bubble.note_label.text() == INTERRUPTED_NOTE
    assert "#e03131" in bubble.styleSheet()  # the red edge
    window.show_assistant_delta("resp_7", " The Louvre")  # queued text of the cut reply never shows
    assert window.transcript_entries()[0].text == "Paris is the capital of France, and"


def test_reply_interrupted_before_any_text_is_still_marked(window):
    window.finish_assistant("resp_3", heard_text="", interrupted=True)
    entry = window.transcript_entries()[0]
    assert entry.interrupted and entry.text == ""
    assert window.transcript.bubble(ASSISTANT, "resp_3").text_label.text() == "…"
    window.finish_assistant("resp_4", heard_text=None, interrupted=False)  # a silent reply leaves no trace
    assert len(window.transcript_entries()) == 1


def test_history_loading_replaces_the_transcript(window):
    window.show_user_final("item_1", "old")
    history = [("user", "Hello", False), ("assistant", "Hi! How can I", True), ("user", "Never mind", False)]
    window.load_history(history)
    assert [(e.role, e.text, e.interrupted) for e in window.transcript_entries()] == history
    assert all(not e.partial for e in window.transcript_entries())
    window.load_history([])
    assert window.transcript_entries() == []
    with pytest.raises(ValueError):
        window.load_history([("system", "no", False)])


def test_transcript_follows_new_text(window, qtbot):
    shown(window)
    for n in range(40):
        window.show_user_final(f"item_{n}", f"question number {n} " * 3)
    bar = window.transcript.verticalScrollBar()
    wait_until(lambda: bar.maximum() > 0 and bar.value() == bar.maximum(), timeout=5,
               what="the transcript to scroll to the newest turn")


# --- the screenshot ------------------------------------------------------------------------------------------


def test_screenshot_thumbnail_shows_and_enlarges(window, x_display, qtbot):
    shown(window)
    picture = solid_image(1600, 900, "#1971c2")
    window.show_screenshot(png_bytes(picture))
    wait_until(window.thumbnail.isVisible, timeout=5, what="the thumbnail")
    thumbnail = window.thumbnail.pixmap()
    assert thumbnail.width() == THUMBNAIL_WIDTH and thumbnail.height() == round(THUMBNAIL_WIDTH * 900 / 1600)
    assert thumbnail.toImage().pixelColor(10, 10).name() == "#1971c2"

    point = centre_on_screen(window.thumbnail)
    xdo.click(x_display, point.x(), point.y()).wait(5)
    wait_until(lambda: any(isinstance(w, ScreenshotViewer) and w.isVisible() for w in QApplication.topLevelWidgets()),
               timeout=5, what="the enlarged screenshot")

    window.show_screenshot(None)
    assert not window.thumbnail.isVisible()


def test_a_new_conversation_empties_the_transcript_and_the_screenshot(window, qtbot):
    shown(window)
    window.load_history([("user", "What is on my screen?", False), ("assistant", "A login form.", False)])
    window.show_screenshot(png_bytes(solid_image(800, 600, "#2f9e44")))
    wait_until(window.thumbnail.isVisible, timeout=5, what="the thumbnail")
    window.clear_conversation()
    assert window.transcript_entries() == [] and not window.thumbnail.isVisible()


def test_only_the_latest_screenshot_lands(window, qtbot):
    window.show_screenshot(png_bytes(solid_image(1920, 1080, "#e03131")))
    window.show_screenshot(png_bytes(solid_image(800, 600, "#2f9e44")))
    wait_until(lambda: not window.thumbnail.pixmap().isNull(), timeout=5, what="a thumbnail")
    qtbot.wait(200)  # give the older, larger decode every chance to land late
    assert window.thumbnail.pixmap().toImage().pixelColor(5, 5).name() == "#2f9e44"
    window.show_screenshot(png_bytes(solid_image(800, 600, "#e03131")))
    window.show_screenshot(None)  # hidden before the decode finished: it must stay hidden
    qtbot.wait(200)
    assert window.thumbnail.isHidden()


def test_screenshot_decoding_never_blocks_the_caller(window, qtbot):
    # Noise does not compress: a full-HD PNG of it is megabytes and takes real work to decode.
    noise = os.urandom(1920 * 1080 * 4)
    data = png_bytes(QImage(noise, 1920, 1080, 1920 * 4, QImage.Format.Format_RGB32).copy())
    started = time.perf_counter()
    window.show_screenshot(data)
    call_ms = (time.perf_counter() - started) * 1000
    assert window.thumbnail.isHidden()  # returned before the image was ready: decoding is elsewhere
    landed = wait_until(lambda: not window.thumbnail.pixmap().isNull(), timeout=5, what="the thumbnail")
    print(f"\nshow_screenshot({len(data) // 1024} KiB PNG): call {call_ms:.1f} ms, "
          f"thumbnail after {landed * 1000:.0f} ms")
    assert call_ms < 50


def test_bad_screenshot_bytes_hide_the_thumbnail(window, qtbot):
    window.show_screenshot(b"not a png")
    qtbot.wait(200)
    assert window.thumbnail.isHidden()
