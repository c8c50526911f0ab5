"""The first-run dialog: how far the models are, and a Cancel button that keeps what was done."""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import QLabel, QProgressBar, QPushButton, QVBoxLayout, QWidget

from app.ui.icons import app_icon

STEPS = 1000  # QProgressBar holds an int: bytes of a 0.5 GB file would overflow it on some platforms


class ModelProgressDialog(QWidget):
    """A small window, not modal: nothing else of Confide is up yet, and the desktop stays usable."""

    cancel_requested = Signal()

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent, Qt.WindowType.Dialog)
        self.setWindowTitle("Setting up Confide")
        icon = app_icon()
        if icon is not None:
            self.setWindowIcon(icon)
        self.heading = QLabel("Confide is getting its voice and language models ready. This happens once.")
        self.heading.setWordWrap(True)
        self.detail = QLabel("Looking at what is needed…")
        self.bar = QProgressBar()
        self.bar.setRange(0, STEPS)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setToolTip("Stop now; the next start continues where this one stopped")
        self.cancel_button.clicked.connect(self._cancel)
        layout = QVBoxLayout(self)
        for widget in (self.heading, self.bar, self.detail, self.cancel_button):
            layout.addWidget(widget)
        layout.setAlignment(self.cancel_button, Qt.AlignmentFlag.AlignRight)
        self.setMinimumWidth(420)
        self._finished = False

    def set_progress(self, done: int, total: int, text: str) -> None:
        self.bar.setValue(round(STEPS * done / total) if total else 0)
        self.detail.setText(text)

    @property
    def fraction(self) -> float:
        return self.bar.value() / STEPS

    def show_failure(self, message: str) -> None:
        """The work failed: say why and stay up until the person closes it (Confide starts meanwhile, and
        without a model the engine says so too, but only this window says why the model is missing)."""
        self._finished = True
        self.setWindowTitle("Confide could not set up its models")
        self.heading.setText("Confide could not get its models ready:")
        self.detail.setText(message)
        self.detail.setWordWrap(True)
        self.detail.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)  # to copy a command
        self.bar.hide()
        self.cancel_button.clicked.disconnect(self._cancel)
        self.cancel_button.clicked.connect(self.close)
        self.cancel_button.setText("Close")
        self.cancel_button.setToolTip("")
        self.cancel_button.setEnabled(True)
        self.show()

    def close_quietly(self) -> None:
        """Close once the work has ended (done, failed or cancelled): not a cancel."""
        self._finished = True
        self.close()

    def _cancel(self) -> None:
        self.cancel_button.setEnabled(False)
        self.detail.setText("Stopping… (what is done is kept)")
        self.cancel_requested.emit()

    def closeEvent(self, event) -> None:  # closing the window while it works is a cancel too
        if not self._finished and self.cancel_button.isEnabled():
            self._cancel()
        super().closeEvent(event)
