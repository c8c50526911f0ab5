"""The small window a hotkey summons: the conversation as it happens, and a few controls.

Every slot here returns at once: text goes into labels, the screenshot is decoded on a worker thread, and
nothing waits on audio or the network.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import math

from PySide6.QtCore import QPoint, QRectF, QSize, Qt, QThreadPool, QTimer, Signal
from PySide6.QtGui import QColor, QCursor, QGuiApplication, QImage, QKeySequence, QPainter, QPixmap, QShortcut
from PySide6.QtWidgets import (
    QCheckBox,
    QFrame,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QScrollArea,
    QSizePolicy,
    QVBoxLayout,
    QWidget,
)

from app.state import AppState
from app.ui.icons import app_icon, state_colour

log = logging.getLogger(__name__)

USER = "user"
ASSISTANT = "assistant"
INTERRUPTED_NOTE = "Interrupted — this is what you heard"
INFO_MESSAGE_MS = 10_000  # info messages fade; errors stay until read (clicked) or replaced
THUMBNAIL_WIDTH = 300
SCREEN_MARGIN = 24


# --- the transcript --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class TranscriptEntry:
    """One turn as shown: `key` is the engine's item id (user) or response id (assistant)."""

    role: str
    key: str
    text: str
    partial: bool = False  # a user transcript still being recognised
    interrupted: bool = False  # an assistant reply cut short; `text` is what was heard
    finished: bool = False  # nothing more may change it


class MessageBubble(QFrame):
    """One turn's text, styled by who said it and how final it is."""

    def __init__(self, entry: TranscriptEntry, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.entry = entry
        self.setObjectName(f"bubble-{entry.role}")
        self.text_label = QLabel()
        self.text_label.setTextFormat(Qt.TextFormat.PlainText)  # transcripts are text, never markup
        self.text_label.setWordWrap(True)
        self.text_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.note_label = QLabel(INTERRUPTED_NOTE)
        self.note_label.setStyleSheet("color: #c92a2a; font-size: 11px;")
        self.note_label.hide()
        layout = QVBoxLayout(self)
        layout.setContentsMargins(10, 6, 10, 6)
        layout.setSpacing(2)
        layout.addWidget(self.text_label)
        layout.addWidget(self.note_label)
        self.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Minimum)
        self.refresh()

    def refresh(self) -> None:
        entry = self.entry
        self.text_label.setText(entry.text if entry.text else "…")
        if entry.role == USER:
            background, colour = "#e7f0ff", ("#868e96" if entry.partial else "#1c1f24")
        else:
            background, colour = "#f1f3f5", "#1c1f24"
        italic = "italic" if entry.partial else "normal"
        border = "border-left: 3px solid #e03131;" if entry.interrupted else ""
        self.setStyleSheet(f"MessageBubble {{ background: {background}; border-radius: 8px; {border} }}")
        self.text_label.setStyleSheet(f"color: {colour}; font-style: {italic};")
        self.note_label.setVisible(entry.interrupted)


class TranscriptView(QScrollArea):
    """Both sides of the conversation, newest at the bottom; follows new text unless the person scrolled up."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWidgetResizable(True)
        self.setFrameShape(QFrame.Shape.NoFrame)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self._content = QWidget()
        self._layout = QVBoxLayout(self._content)
        self._layout.setContentsMargins(4, 4, 4, 4)
        self._layout.setSpacing(6)
        self._layout.addStretch(1)
        self.setWidget(self._content)
        self._bubbles: dict[tuple[str, str], MessageBubble] = {}
        self._follow = True
        bar = self.verticalScrollBar()
        bar.valueChanged.connect(lambda value: setattr(self, "_follow", value >= bar.maximum() - 4))
        bar.rangeChanged.connect(lambda _low, high: self._follow and bar.setValue(high))

    def entries(self) -> list[TranscriptEntry]:
        """What is shown, top to bottom."""
        return [self._layout.itemAt(i).widget().entry for i in range(self._layout.count() - 1)]

    def bubble(self, role: str, key: str) -> MessageBubble | None:
        return self._bubbles.get((role, key))

    def add(self, entry: TranscriptEntry) -> MessageBubble:
        bubble = MessageBubble(entry)
        self._layout.insertWidget(self._layout.count() - 1, bubble)  # above the stretch
        side = Qt.AlignmentFlag.AlignRight if entry.role == USER else Qt.AlignmentFlag.AlignLeft
        self._layout.setAlignment(bubble, side)
        self._bubbles[(entry.role, entry.key)] = bubble
        return bubble

    def remove(self, role: str, key: str) -> None:
        bubble = self._bubbles.pop((role, key), None)
        if bubble is not None:
            self._layout.removeWidget(bubble)
            bubble.deleteLater()

    def clear(self) -> None:
        for bubble in self._bubbles.values():
            self._layout.removeWidget(bubble)
            bubble.deleteLater()
        self._bubbles.clear()
        self._follow = True


# --- small widgets ---------------------------------------------------------------------------------------------


class LevelMeter(QWidget):
    """The microphone's level as a slim bar: proof that Confide hears you."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._level = 0.0
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.setToolTip("Microphone level")

    def sizeHint(self) -> QSize:
        return QSize(160, 6)

    def level(self) -> float:
        return self._level

    def set_level(self, level: float) -> None:
        level = 0.0 if not math.isfinite(level) else min(1.0, max(0.0, level))
        if level != self._level:
            self._level = level
            self.update()  # repaints coalesce: calling this 100 times a second costs one paint per frame

    def paintEvent(self, event) -> None:
        painter = QPainter(self)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        painter.setPen(Qt.PenStyle.NoPen)
        track = QRectF(self.rect())
        radius = track.height() / 2
        painter.setBrush(QColor("#e9ecef"))
        painter.drawRoundedRect(track, radius, radius)
        if self._level > 0:
            filled = QRectF(track.x(), track.y(), track.width() * self._level, track.height())
            painter.setBrush(QColor("#f08c00" if self._level > 0.9 else "#2f9e44"))  # orange near clipping
            painter.drawRoundedRect(filled, radius, radius)


class ClickableLabel(QLabel):
    clicked = Signal()

    def mouseReleaseEvent(self, event) -> None:
        if event.button() == Qt.MouseButton.LeftButton:
            self.clicked.emit()
        super().mouseReleaseEvent(event)


class ScreenshotViewer(QLabel):
    """The last screenshot, large: the person can check what Confide was shown."""

    def __init__(self, image: QImage) -> None:
        super().__init__()
        self.setWindowTitle("Confide: screenshot sent")
        self.setWindowIcon(app_icon())
        self.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        screen = QGuiApplication.screenAt(QCursor.pos()) or QGuiApplication.primaryScreen()
        room = screen.availableGeometry().size() * 0.8
        self.setPixmap(QPixmap.fromImage(image.scaled(room, Qt.AspectRatioMode.KeepAspectRatio,
                                                      Qt.TransformationMode.SmoothTransformation)))
        QShortcut(QKeySequence(Qt.Key.Key_Escape), self, self.close)


# --- the window ------------------------------------------------------------------------------------------------


class MainWindow(QWidget):
    """Talk, type, or show your screen; read along as Confide answers.

    Toggle signals fire on the person's clicks only; `set_hands_free`/`set_muted` never echo back.
    Text typed and sent is not added to the transcript here: the controller shows it with `show_user_final`
    (under whatever id it likes), so a typed turn appears once, like a spoken one.
    """

    text_submitted = Signal(str)
    talk_pressed = Signal()
    talk_released = Signal()
    ask_screen_requested = Signal()
    hands_free_toggled = Signal(bool)
    mute_toggled = Signal(bool)
    settings_requested = Signal()
    new_conversation_requested = Signal()

    # Internal: a screenshot decoded on a worker thread, delivered to the GUI thread.
    _screenshot_decoded = Signal(int, QImage, QImage)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Confide")
        self.setWindowIcon(app_icon())
        self.resize(480, 560)

        self._state = AppState.CONNECTING
        self._screenshot_generation = itertools.count(1)
        self._wanted_screenshot = 0  # only the latest screenshot may land; older decodes are dropped
        self._screenshot_full: QImage | None = None
        self._viewer: ScreenshotViewer | None = None
        self._placed_on_screen = None
        self._history_keys = itertools.count()

        # State line: a coloured dot, the state in words, and what it is about.
        self.state_dot = QLabel()
        self.state_dot.setFixedSize(10, 10)
        self.state_label = QLabel()
        self.state_label.setStyleSheet("font-weight: 600;")
        self.detail_label = QLabel()
        self.detail_label.setStyleSheet("color: #868e96;")
        self.detail_label.setTextFormat(Qt.TextFormat.PlainText)
        state_row = QHBoxLayout()
        state_row.setSpacing(8)
        state_row.addWidget(self.state_dot)
        state_row.addWidget(self.state_label)
        state_row.addWidget(self.detail_label, 1)

        self.message_label = ClickableLabel()  # click to dismiss
        self.message_label.setWordWrap(True)
        self.message_label.setTextFormat(Qt.TextFormat.PlainText)
        self.message_label.hide()
        self.message_label.clicked.connect(self.message_label.hide)
        self._message_timer = QTimer(self, singleShot=True, interval=INFO_MESSAGE_MS)
        self._message_timer.timeout.connect(self.message_label.hide)

        self.transcript = TranscriptView()

        self.thumbnail = ClickableLabel()
        self.thumbnail.setToolTip("The screenshot Confide was shown (click to enlarge)")
        self.thumbnail.setCursor(Qt.CursorShape.PointingHandCursor)
        self.thumbnail.hide()
        self.thumbnail.clicked.connect(self.enlarge_screenshot)

        self.level_meter = LevelMeter()

        self.text_input = QLineEdit()
        self.text_input.setPlaceholderText("Type to Confide, Enter to send")
        self.text_input.returnPressed.connect(self._submit_text)

        self.talk_button = QPushButton("Hold to talk")
        self.talk_button.pressed.connect(self.talk_pressed)
        self.talk_button.released.connect(self.talk_released)
        self.ask_screen_button = QPushButton("Ask about my screen")
        self.ask_screen_button.clicked.connect(lambda: self.ask_screen_requested.emit())
        buttons = QHBoxLayout()
        buttons.addWidget(self.talk_button, 1)
        buttons.addWidget(self.ask_screen_button, 1)

        self.hands_free_box = QCheckBox("Hands-free")
        self.hands_free_box.setToolTip("Listen all the time; just start talking")
        self.hands_free_box.clicked.connect(self.hands_free_toggled)
        self.mute_box = QCheckBox("Mute microphone")
        self.mute_box.clicked.connect(self.mute_toggled)
        self.new_conversation_button = QPushButton("New conversation")
        self.new_conversation_button.setFlat(True)
        self.new_conversation_button.setToolTip("Forget this conversation and start afresh")
        self.new_conversation_button.clicked.connect(lambda: self.new_conversation_requested.emit())
        self.settings_button = QPushButton("Settings…")
        self.settings_button.setFlat(True)
        self.settings_button.clicked.connect(lambda: self.settings_requested.emit())
        toggles = QHBoxLayout()
        toggles.addWidget(self.hands_free_box)
        toggles.addWidget(self.mute_box)
        toggles.addStretch(1)
        toggles.addWidget(self.new_conversation_button)
        toggles.addWidget(self.settings_button)

        layout = QVBoxLayout(self)
        layout.setContentsMargins(12, 10, 12, 10)
        layout.setSpacing(8)
        layout.addLayout(state_row)
        layout.addWidget(self.message_label)
        layout.addWidget(self.transcript, 1)
        layout.addWidget(self.thumbnail, 0, Qt.AlignmentFlag.AlignHCenter)
        layout.addWidget(self.level_meter)
        layout.addWidget(self.text_input)
        layout.addLayout(buttons)
        layout.addLayout(toggles)

        QShortcut(QKeySequence(Qt.Key.Key_Escape), self, self.hide)
        self._screenshot_decoded.connect(self._on_screenshot_decoded, Qt.ConnectionType.QueuedConnection)
        self.set_state(AppState.CONNECTING)

    # --- state -----------------------------------------------------------------------------------------------

    @property
    def state(self) -> AppState:
        return self._state

    def set_state(self, state: AppState, detail: str = "") -> None:
        self._state = state
        self.state_dot.setStyleSheet(f"background: {state_colour(state).name()}; border-radius: 5px;")
        self.state_label.setText(state.label)
        self.detail_label.setText(detail)
        self.talk_button.setEnabled(state not in (AppState.CONNECTING, AppState.MUTED))

    def set_mic_level(self, level: float) -> None:
        self.level_meter.set_level(level)

    def set_hands_free(self, on: bool) -> None:
        self.hands_free_box.setChecked(on)

    def set_echo_mode(self, mode: str, explanation: str) -> None:
        """How hands-free copes with the speakers' echo ("echo cancelled", "half-duplex", or "")."""
        self.hands_free_box.setText(f"Hands-free · {mode}" if mode else "Hands-free")
        self.hands_free_box.setToolTip(f"Listen all the time; just start talking. {explanation}".strip())

    def set_muted(self, on: bool) -> None:
        self.mute_box.setChecked(on)

    def show_message(self, text: str, error: bool = False) -> None:
        colour, background = ("#c92a2a", "#fff5f5") if error else ("#1c1f24", "#f1f3f5")
        self.message_label.setStyleSheet(
            f"color: {colour}; background: {background}; border-radius: 6px; padding: 6px;")
        self.message_label.setProperty("error", error)
        self.message_label.setText(text)
        self.message_label.show()
        if error:
            self._message_timer.stop()
        else:
            self._message_timer.start()

    # --- the conversation ------------------------------------------------------------------------------------

    def show_user_partial(self, item_id: str, text: str) -> None:
        bubble = self.transcript.bubble(USER, item_id)
        if bubble is None:
            self.transcript.add(TranscriptEntry(USER, item_id, text, partial=True))
        elif not bubble.entry.finished:  # a late partial never overwrites the final words
            bubble.entry.text = text
            bubble.refresh()

    def show_user_final(self, item_id: str, text: str) -> None:
        bubble = self.transcript.bubble(USER, item_id)
        if bubble is None:
            bubble = self.transcript.add(TranscriptEntry(USER, item_id, text))
        bubble.entry.text, bubble.entry.partial, bubble.entry.finished = text, False, True
        bubble.refresh()

    def drop_user_turn(self, item_id: str) -> None:
        """A turn that was not the person's (the assistant's own voice, heard through the speakers)."""
        self.transcript.remove(USER, item_id)

    def show_assistant_delta(self, response_id: str, text: str) -> None:
        bubble = self.transcript.bubble(ASSISTANT, response_id)
        if bubble is None:
            self.transcript.add(TranscriptEntry(ASSISTANT, response_id, text))
        elif not bubble.entry.finished:  # deltas of a reply already finished or cut are stale: drop them
            bubble.entry.text += text
            bubble.refresh()

    def finish_assistant(self, response_id: str, heard_text: str | None, interrupted: bool) -> None:
        """End a reply. `heard_text`, when given, replaces the streamed text: it is what the person actually
        heard (an interrupted reply is cut to it)."""
        bubble = self.transcript.bubble(ASSISTANT, response_id)
        if bubble is None:
            if not heard_text and not interrupted:
                return  # a reply that said nothing leaves no trace
            bubble = self.transcript.add(TranscriptEntry(ASSISTANT, response_id, ""))
        entry = bubble.entry
        if heard_text is not None:
            entry.text = heard_text
        entry.interrupted, entry.finished = interrupted, True
        bubble.refresh()

    def load_history(self, turns: list[tuple[str, str, bool]]) -> None:
        """Replace the transcript with earlier turns: (role "user"|"assistant", text, interrupted)."""
        self.transcript.clear()
        for role, text, interrupted in turns:
            if role not in (USER, ASSISTANT):
                raise ValueError(f"unknown role {role!r} in history")
            key = f"history-{next(self._history_keys)}"
            self.transcript.add(TranscriptEntry(role, key, text, interrupted=interrupted, finished=True))

    def clear_conversation(self) -> None:
        """A new conversation: no transcript, no screenshot."""
        self.transcript.clear()
        self.show_screenshot(None)

    def transcript_entries(self) -> list[TranscriptEntry]:
        return self.transcript.entries()

    # --- the screenshot --------------------------------------------------------------------------------------

    def show_screenshot(self, png: bytes | None) -> None:
        """Show a thumbnail of what Confide was shown (None hides it). PNG decoding runs on a worker thread."""
        generation = next(self._screenshot_generation)
        self._wanted_screenshot = generation
        if png is None:
            self._screenshot_full = None
            self.thumbnail.clear()
            self.thumbnail.hide()
            return
        data = bytes(png)
        signal = self._screenshot_decoded

        def decode() -> None:
            full = QImage.fromData(data)
            thumbnail = QImage()
            if not full.isNull():
                thumbnail = full.scaledToWidth(min(THUMBNAIL_WIDTH, full.width()),
                                               Qt.TransformationMode.SmoothTransformation)
            try:
                signal.emit(generation, thumbnail, full)
            except RuntimeError:  # the window was deleted while we decoded
                pass

        QThreadPool.globalInstance().start(decode)

    def _on_screenshot_decoded(self, generation: int, thumbnail: QImage, full: QImage) -> None:
        if generation != self._wanted_screenshot:
            return
        if full.isNull():
            log.warning("could not decode the screenshot")
            self.thumbnail.hide()
            return
        self._screenshot_full = full
        self.thumbnail.setPixmap(QPixmap.fromImage(thumbnail))
        self.thumbnail.show()

    def enlarge_screenshot(self) -> None:
        if self._screenshot_full is None:
            return
        if self._viewer is not None:
            self._viewer.close()
        self._viewer = ScreenshotViewer(self._screenshot_full)
        self._viewer.destroyed.connect(lambda: setattr(self, "_viewer", None))
        self._viewer.show()

    # --- showing and hiding ----------------------------------------------------------------------------------

    def toggle_visibility(self) -> None:
        """Hide when in front; otherwise bring the window up on the screen where the pointer is."""
        if self.isVisible() and self.isActiveWindow():
            self.hide()
        else:
            self.present()

    def present(self, focus: bool = True) -> None:
        """Show and raise the window on the pointer's screen (top-right corner, near most trays); with `focus`,
        also give it the keyboard focus, ready to type. Without: for messages that must not steal the focus."""
        screen = QGuiApplication.screenAt(QCursor.pos()) or QGuiApplication.primaryScreen()
        if screen is not self._placed_on_screen:
            self._placed_on_screen = screen
            area = screen.availableGeometry()
            self.layout().activate()  # before the first show the size is not yet held to the layout's minimum
            frame = self.frameGeometry()
            self.move(QPoint(area.right() - frame.width() - SCREEN_MARGIN, area.top() + SCREEN_MARGIN))
        if self.isMinimized():
            self.showNormal()
        self.setAttribute(Qt.WidgetAttribute.WA_ShowWithoutActivating, not focus)
        self.show()
        self.raise_()
        if not focus:
            return
        self.activateWindow()
        self.text_input.setFocus()

    def closeEvent(self, event) -> None:
        # The tray app lives on: closing the window only hides it.
        event.ignore()
        self.hide()

    def _submit_text(self) -> None:
        text = self.text_input.text().strip()
        if text:
            self.text_input.clear()
            self.text_submitted.emit(text)
