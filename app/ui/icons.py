"""Icons that say at a glance what Confide is doing: the app's speech bubble, recoloured per state, with a
small badge whose *shape* differs too (so the state reads without colour vision, and at 16 px)."""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

from PySide6.QtCore import QByteArray, QPointF, QRectF, Qt
from PySide6.QtGui import QColor, QIcon, QImage, QPainter, QPainterPath, QPen, QPixmap

from app.state import AppState

APP_ICON_PATH = Path(__file__).resolve().parents[2] / "assets" / "confide.svg"
BRAND_COLOUR = "#3b5bdb"  # the bubble's fill in assets/confide.svg
ICON_SIZES = (16, 22, 24, 32, 48, 64, 128)


@dataclasses.dataclass(frozen=True)
class StateLook:
    colour: str  # the bubble's fill; also the window's state dot
    badge: str | None  # the badge's glyph, None for no badge


STATE_LOOKS: dict[AppState, StateLook] = {
    AppState.CONNECTING: StateLook("#868e96", "ring"),  # grey, an open ring: not there yet
    AppState.IDLE: StateLook(BRAND_COLOUR, None),  # the plain app icon: nothing going on
    AppState.LISTENING: StateLook("#2f9e44", "dot"),  # green with a solid dot: "on air", it hears you
    AppState.THINKING: StateLook("#7048e8", "dots"),  # violet with an ellipsis
    AppState.SPEAKING: StateLook("#e8590c", "waves"),  # warm orange with sound waves: it is talking
    AppState.MUTED: StateLook("#495057", "slash"),  # dark grey with a struck-through badge
    AppState.ERROR: StateLook("#e03131", "bang"),  # red with an exclamation mark
}


def state_colour(state: AppState) -> QColor:
    return QColor(STATE_LOOKS[state].colour)


@functools.lru_cache(maxsize=None)
def _svg_source() -> bytes | None:
    try:
        return APP_ICON_PATH.read_bytes()
    except OSError:
        return None  # an install without the assets folder still gets a drawn bubble


def _render_bubble(painter: QPainter, size: int, colour: str) -> None:
    """Paint the app's bubble in `colour` over the full `size` square."""
    source = _svg_source()
    if source is not None:
        try:
            from PySide6.QtSvg import QSvgRenderer
        except ImportError:
            QSvgRenderer = None
        if QSvgRenderer is not None:
            renderer = QSvgRenderer(QByteArray(source.replace(BRAND_COLOUR.encode(), colour.encode())))
            if renderer.isValid():
                renderer.render(painter, QRectF(0, 0, size, size))
                return
    _draw_bubble(painter, size, colour)


def _draw_bubble(painter: QPainter, size: int, colour: str) -> None:
    """The same shape as assets/confide.svg, drawn by hand (64-unit grid)."""
    painter.save()
    painter.scale(size / 64, size / 64)
    bubble = QPainterPath()
    bubble.addRoundedRect(QRectF(4, 8, 56, 38), 6, 6)
    tail = QPainterPath()
    tail.moveTo(18, 44)
    tail.lineTo(18, 56)
    tail.lineTo(32, 44)
    tail.closeSubpath()
    painter.setPen(Qt.PenStyle.NoPen)
    painter.setBrush(QColor(colour))
    painter.drawPath(bubble.united(tail))
    pen = QPen(QColor("#ffffff"), 4)
    pen.setCapStyle(Qt.PenCapStyle.RoundCap)
    painter.setPen(pen)
    for x, top, bottom in ((20, 24, 30), (28, 18, 36), (36, 21, 33), (44, 25, 29)):
        painter.drawLine(QPointF(x, top), QPointF(x, bottom))
    painter.restore()


def _draw_badge(painter: QPainter, size: int, colour: str, glyph: str) -> None:
    """A round badge in the bottom-right corner, white-rimmed so it reads on dark and light panels."""
    diameter = size * 0.56
    rect = QRectF(size - diameter, size - diameter, diameter, diameter).adjusted(0.5, 0.5, -0.5, -0.5)
    rim = max(1.0, size / 24)
    painter.setPen(QPen(QColor("#ffffff"), rim))
    painter.setBrush(QColor(colour))
    painter.drawEllipse(rect)

    centre = rect.center()
    unit = rect.width() / 10  # glyphs are drawn on a 10-unit badge
    white = QColor("#ffffff")
    stroke = QPen(white, max(1.0, unit * 1.4))
    stroke.setCapStyle(Qt.PenCapStyle.RoundCap)
    painter.setBrush(Qt.BrushStyle.NoBrush)
    if glyph == "dot":
        painter.setPen(Qt.PenStyle.NoPen)
        painter.setBrush(white)
        painter.drawEllipse(centre, unit * 2.4, unit * 2.4)
    elif glyph == "ring":
        painter.setPen(stroke)
        arc = QRectF(centre.x() - unit * 2.8, centre.y() - unit * 2.8, unit * 5.6, unit * 5.6)
        painter.drawArc(arc, 90 * 16, 270 * 16)  # an open circle, like a loading spinner
    elif glyph == "dots":
        painter.setPen(Qt.PenStyle.NoPen)
        painter.setBrush(white)
        for dx in (-2.8, 0.0, 2.8):
            painter.drawEllipse(QPointF(centre.x() + dx * unit, centre.y()), unit * 1.1, unit * 1.1)
    elif glyph == "waves":
        source = QPointF(centre.x() - unit * 1.8, centre.y())  # a sound source with waves going right
        painter.setPen(Qt.PenStyle.NoPen)
        painter.setBrush(white)
        painter.drawEllipse(source, unit * 1.0, unit * 1.0)
        painter.setPen(stroke)
        painter.setBrush(Qt.BrushStyle.NoBrush)
        for radius in (2.3, 4.1):
            painter.drawArc(QRectF(source.x() - unit * radius, source.y() - unit * radius, unit * radius * 2,
                                   unit * radius * 2), -45 * 16, 90 * 16)
    elif glyph == "slash":
        painter.setPen(stroke)
        painter.drawLine(QPointF(centre.x() - unit * 2.6, centre.y() + unit * 2.6),
                         QPointF(centre.x() + unit * 2.6, centre.y() - unit * 2.6))
    elif glyph == "bang":
        painter.setPen(stroke)
        painter.drawLine(QPointF(centre.x(), centre.y() - unit * 2.8), QPointF(centre.x(), centre.y() + unit * 0.6))
        painter.setPen(Qt.PenStyle.NoPen)
        painter.setBrush(white)
        painter.drawEllipse(QPointF(centre.x(), centre.y() + unit * 2.7), unit * 0.9, unit * 0.9)
    else:
        raise ValueError(f"unknown badge glyph {glyph!r}")


def render_state_image(state: AppState, size: int) -> QImage:
    """The state's icon as a transparent `size`×`size` image."""
    look = STATE_LOOKS[state]
    image = QImage(size, size, QImage.Format.Format_ARGB32_Premultiplied)
    image.fill(Qt.GlobalColor.transparent)
    painter = QPainter(image)
    painter.setRenderHint(QPainter.RenderHint.Antialiasing)
    # Leave room for the badge: the bubble shrinks a little when one is drawn.
    bubble_size = size if look.badge is None else round(size * 0.9)
    _render_bubble(painter, bubble_size, look.colour)
    if look.badge is not None:
        _draw_badge(painter, size, look.colour, look.badge)
    painter.end()
    return image


@functools.lru_cache(maxsize=None)
def state_icon(state: AppState) -> QIcon:
    """The tray icon for `state`, with a pixmap per common panel size. Needs a QGuiApplication."""
    icon = QIcon()
    for size in ICON_SIZES:
        icon.addPixmap(QPixmap.fromImage(render_state_image(state, size)))
    return icon


@functools.lru_cache(maxsize=None)
def app_icon() -> QIcon:
    """Confide's own icon (windows, dialogs): the plain bubble."""
    return state_icon(AppState.IDLE)
