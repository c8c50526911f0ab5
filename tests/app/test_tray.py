"""The tray icon on a real X display with a real tray host (trayer), driven by xdotool from another process."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import time

import pytest

from PySide6.QtGui import QColor, QGuiApplication, QImage
from PySide6.QtWidgets import QApplication, QLabel

from app.state import AppState
from app.ui.icons import STATE_LOOKS, render_state_image, state_icon
from app.ui.tray import TrayIcon
from app.ui.window import MainWindow
from tests.harness import xdo
from tests.harness.xdo import REPOSITORY, require_binaries, run_python, stop_process, wait_until

# The display fixtures come as a plugin, so every module shares one X server (and Qt stays on it).
pytestmark = pytest.mark.usefixtures("x_display")


def tray_icon_widget():
    """Qt's own widget for the icon on X11 (one per shown tray icon)."""
    for widget in QApplication.topLevelWidgets():
        if widget.metaObject().className() == "QSystemTrayIconSys":
            return widget
    return None


def is_docked(display, tray: TrayIcon) -> bool:
    """Embedded by the tray host, not just placed: Qt reports a geometry before trayer has mapped the icon,
    and a click there would land on the panel."""
    widget = tray_icon_widget()
    if widget is None:
        return False
    # Qt learns the docked position a moment after the X server has it: wait for both to agree.
    return display.embedded_geometry(int(widget.winId())) == tray.geometry().getRect()


@pytest.fixture
def window(qtbot) -> MainWindow:
    window = MainWindow()
    qtbot.addWidget(window)
    window.set_state(AppState.IDLE)
    return window


@pytest.fixture
def tray(window, x_display) -> TrayIcon:
    tray = TrayIcon(fallback=window)
    tray.open_window_requested.connect(window.present)
    started = time.perf_counter()
    tray.show()
    seconds = wait_until(lambda: is_docked(x_display, tray), timeout=10, what="the tray icon to dock")
    print(f"\ntray icon docked in {seconds * 1000:.0f} ms (show → geometry {tray.geometry().getRect()})")
    assert time.perf_counter() - started < 10
    yield tray
    close_popups()
    tray.dispose()


def close_popups() -> None:
    for widget in QApplication.topLevelWidgets():
        if widget.isVisible() and widget.metaObject().className() in ("QMenu", "QBalloonTip"):
            widget.close()


def settle_focus() -> None:
    """Wait until Qt has let go of the focus of a window that was just hidden. With no window manager to hand
    the focus on, Qt does that ~0.1 s after the hide, and closes any popup menu that is open at that moment."""
    def focus_settled() -> bool:
        focus = QGuiApplication.focusWindow()
        return focus is None or focus.isVisible()

    wait_until(focus_settled, timeout=5, what="Qt to release the focus of a hidden window")


def open_menu(display, tray: TrayIcon) -> None:
    settle_focus()
    centre = tray.geometry().center()
    clicker = xdo.click(display, centre.x(), centre.y(), button=3)
    wait_until(lambda: tray.menu.isVisible(), timeout=5, what="the tray menu to open on a right-click")
    clicker.wait(5)


def click_menu_item(display, tray: TrayIcon, action) -> None:
    rect = tray.menu.actionGeometry(action)
    assert rect.isValid(), f"{action.text()} has no place in the menu"
    point = tray.menu.mapToGlobal(rect.center())
    clicker = xdo.click(display, point.x(), point.y())
    wait_until(lambda: not tray.menu.isVisible(), timeout=5, what=f"the menu to close after clicking {action.text()}")
    clicker.wait(5)


def screen_image(rect) -> QImage:
    """What the X server shows in `rect` right now (the tray host draws the icon, not us)."""
    return QGuiApplication.primaryScreen().grabWindow(0, rect.x(), rect.y(), rect.width(), rect.height()).toImage()


def share_of_colour(image: QImage, colour: QColor, tolerance: int = 40) -> float:
    close = 0
    for x, y in itertools.product(range(image.width()), range(image.height())):
        pixel = image.pixelColor(x, y)
        if (abs(pixel.red() - colour.red()) + abs(pixel.green() - colour.green())
                + abs(pixel.blue() - colour.blue())) <= tolerance:
            close += 1
    return close / max(1, image.width() * image.height())


# --- docking, looks ----------------------------------------------------------------------------------------


def test_icon_docks_in_the_tray_host(tray, x_display):
    assert tray.available is True
    geometry = tray.geometry()
    screen = QGuiApplication.primaryScreen().geometry()
    assert screen.contains(geometry), (geometry.getRect(), screen.getRect())
    # trayer sits on the top edge, aligned right: the icon must be there, not in a stray window elsewhere.
    assert geometry.y() < 40 and geometry.x() > screen.width() // 2
    assert 16 <= geometry.height() <= 32


def test_every_state_has_its_own_icon_and_tooltip(tray):
    images = {}
    for state in AppState:
        tray.set_state(state, detail=f"detail for {state.value}")
        assert tray.state is state
        assert state.label in tray.tool_tip()
        assert f"detail for {state.value}" in tray.tool_tip()
        images[state] = render_state_image(state, 22)
        assert not state_icon(state).isNull()
    for first, second in itertools.combinations(AppState, 2):
        assert images[first] != images[second], f"{first.name} and {second.name} look the same"
    tray.set_state(AppState.LISTENING)
    assert tray.tool_tip() == "Confide: Listening"  # no detail: no dangling second line


def test_icon_is_drawn_without_the_svg_too(monkeypatch):
    """An install without the assets folder still shows the bubble, in the same colours and place."""
    from app.ui import icons

    from_svg = render_state_image(AppState.LISTENING, 64)
    monkeypatch.setattr(icons, "_svg_source", lambda: None)
    drawn = render_state_image(AppState.LISTENING, 64)
    green = QColor(STATE_LOOKS[AppState.LISTENING].colour)
    assert share_of_colour(drawn, green) > 0.2
    assert abs(share_of_colour(drawn, green) - share_of_colour(from_svg, green)) < 0.05
    assert drawn.pixelColor(10, 20) == from_svg.pixelColor(10, 20)  # bubble body
    assert drawn.pixelColor(2, 62).alpha() == 0  # below the tail: transparent in both
    assert from_svg.pixelColor(2, 62).alpha() == 0


def test_icons_are_cached():
    assert state_icon(AppState.SPEAKING).cacheKey() == state_icon(AppState.SPEAKING).cacheKey()


def test_state_colour_reaches_the_screen(tray):
    """A glance works: what the tray host draws changes colour with the state."""
    rect = tray.geometry()
    for state in (AppState.LISTENING, AppState.ERROR, AppState.SPEAKING):
        tray.set_state(state)
        colour = QColor(STATE_LOOKS[state].colour)
        wait_until(lambda: share_of_colour(screen_image(rect), colour) > 0.25, timeout=5,
                   what=f"the tray to show the {state.name} colour")
        others = [QColor(look.colour) for s, look in STATE_LOOKS.items() if s is not state]
        shown = screen_image(rect)
        assert all(share_of_colour(shown, other) < 0.05 for other in others), state.name


# --- the menu and clicks -----------------------------------------------------------------------------------


def test_right_click_menu_open_confide_shows_the_window(tray, window, x_display):
    assert not window.isVisible()
    open_menu(x_display, tray)
    labels = [action.text() for action in tray.menu.actions() if not action.isSeparator()]
    assert labels[1:] == ["Open Confide", "Talk", "Ask about my screen", "Hands-free", "Mute microphone",
                          "New conversation", "Settings…", "Quit"]
    assert labels[0].startswith("Confide: ")  # the state, in words, heads the menu
    click_menu_item(x_display, tray, tray.open_action)
    wait_until(lambda: window.isVisible() and window.isActiveWindow(), timeout=5, what="the window to come up")


def test_left_click_opens_the_window(tray, window, x_display, qtbot):
    centre = tray.geometry().center()
    with qtbot.waitSignal(tray.open_window_requested, timeout=5000):
        xdo.click(x_display, centre.x(), centre.y(), button=1).wait(5)
    wait_until(window.isVisible, timeout=5, what="the window to show")


@pytest.mark.parametrize("action_name, signal_name", [
    ("talk_action", "talk_requested"),
    ("ask_screen_action", "ask_screen_requested"),
    ("settings_action", "settings_requested"),
    ("new_conversation_action", "new_conversation_requested"),
    ("quit_action", "quit_requested"),
])
def test_menu_items_emit_their_signal(tray, x_display, qtbot, action_name, signal_name):
    open_menu(x_display, tray)
    with qtbot.waitSignal(getattr(tray, signal_name), timeout=5000):
        click_menu_item(x_display, tray, getattr(tray, action_name))


def test_hands_free_and_mute_toggle_from_the_menu(tray, x_display, qtbot):
    open_menu(x_display, tray)
    with qtbot.waitSignal(tray.hands_free_toggled, timeout=5000) as hands_free:
        click_menu_item(x_display, tray, tray.hands_free_action)
    assert hands_free.args == [True] and tray.hands_free_action.isChecked()

    open_menu(x_display, tray)
    with qtbot.waitSignal(tray.mute_toggled, timeout=5000) as muted:
        click_menu_item(x_display, tray, tray.mute_action)
    assert muted.args == [True] and tray.mute_action.isChecked()

    open_menu(x_display, tray)
    with qtbot.waitSignal(tray.mute_toggled, timeout=5000) as unmuted:
        click_menu_item(x_display, tray, tray.mute_action)
    assert unmuted.args == [False] and not tray.mute_action.isChecked()


def test_setting_toggles_from_code_does_not_echo(tray, qtbot):
    with qtbot.assertNotEmitted(tray.hands_free_toggled), qtbot.assertNotEmitted(tray.mute_toggled):
        tray.set_hands_free(True)
        tray.set_muted(True)
        qtbot.wait(50)
    assert tray.hands_free_action.isChecked() and tray.mute_action.isChecked()
    tray.set_hands_free(False)
    assert not tray.hands_free_action.isChecked()


# --- notifications -----------------------------------------------------------------------------------------


def visible_balloon():
    for widget in QApplication.topLevelWidgets():
        if widget.isVisible() and widget.metaObject().className() == "QBalloonTip":
            return widget
    return None


@pytest.mark.parametrize("error", [False, True])
def test_notify_shows_a_balloon_at_the_tray(tray, window, x_display, qtbot, error):
    tray.notify("Microphone", "No microphone found; plug one in.", error=error)
    wait_until(lambda: visible_balloon() is not None, timeout=5, what="the notification balloon")
    balloon = visible_balloon()
    texts = " ".join(label.text() for label in balloon.findChildren(QLabel))
    assert "Microphone" in texts and "No microphone found" in texts
    assert not window.message_label.isVisibleTo(window)  # the tray handled it: no fallback
    # A click on the balloon opens the window, where the details are.
    centre = balloon.mapToGlobal(balloon.rect().center())
    with qtbot.waitSignal(tray.open_window_requested, timeout=5000):
        xdo.click(x_display, centre.x(), centre.y()).wait(5)


# --- no tray host ------------------------------------------------------------------------------------------

NO_TRAY_SCRIPT = r"""
import json
from PySide6.QtWidgets import QApplication
app = QApplication([])
from app.state import AppState
from app.ui.tray import TrayIcon
from app.ui.window import MainWindow
window = MainWindow()
tray = TrayIcon(fallback=window)
result = {"available": tray.available}
tray.show()
for state in AppState:
    tray.set_state(state, "detail")
    app.processEvents()
tray.notify("Note", "Saved your settings.")
app.processEvents()
result["info_message"] = window.message_label.text()
result["visible_after_info"] = window.isVisible()
tray.notify("Engine", "The engine stopped; restarting.", error=True)
for _ in range(50):
    app.processEvents()
result["error_message"] = window.message_label.text()
result["error_flag"] = window.message_label.property("error")
result["visible_after_error"] = window.isVisible()
tray.dispose()
print("RESULT " + json.dumps(result))
"""


def test_without_a_tray_host_notifications_go_to_the_window(bare_display):
    assert bare_display.selection_owner() == 0  # really no tray on that display
    result = run_python(NO_TRAY_SCRIPT, bare_display.env, timeout=60)
    assert result.returncode == 0, result.stderr
    line = next(line for line in result.stdout.splitlines() if line.startswith("RESULT "))
    outcome = json.loads(line.removeprefix("RESULT "))
    assert outcome == {
        "available": False,
        "info_message": "Note: Saved your settings.",
        "visible_after_info": False,  # information waits in the window
        "error_message": "Engine: The engine stopped; restarting.",
        "error_flag": True,
        "visible_after_error": True,  # an error brings the window up
    }


LATE_TRAY_SCRIPT = r"""
import sys, time
from PySide6.QtWidgets import QApplication
app = QApplication([])
from app.ui.tray import TrayIcon
tray = TrayIcon()
tray.show()
print("SHOWN available=%s" % tray.available, flush=True)
deadline = time.monotonic() + 20
while time.monotonic() < deadline:
    app.processEvents()
    g = tray.geometry()
    if g.width() > 0 and (g.x() > 0 or g.y() > 0):
        print("DOCKED %d %d %d %d available=%s" % (g.x(), g.y(), g.width(), g.height(), tray.available), flush=True)
        sys.exit(0)
    time.sleep(0.02)
print("NEVER DOCKED", flush=True)
sys.exit(1)
"""


def test_icon_docks_when_the_tray_host_starts_after_confide(display_factory):
    """At login the panel may come up after Confide: the icon must dock once it does."""
    display = display_factory(tray=False)
    env = dict(display.env, PYTHONPATH=str(REPOSITORY))
    app_process = subprocess.Popen([sys.executable, "-c", LATE_TRAY_SCRIPT], env=env, stdin=subprocess.DEVNULL,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert app_process.stdout.readline().strip() == "SHOWN available=False"
        display.start_tray_host()
        out, err = app_process.communicate(timeout=30)
    finally:
        stop_process(app_process)
    assert app_process.returncode == 0, (out, err)
    assert out.startswith("DOCKED") and out.strip().endswith("available=True"), out


def test_a_missing_harness_program_fails_in_ci_and_skips_elsewhere(monkeypatch):
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="apt-get install"):
        require_binaries("no-such-tray-host")
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception):
        require_binaries("no-such-tray-host")
    require_binaries("Xvfb", "trayer", "xdotool")  # what these tests run on is here
