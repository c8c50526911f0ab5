"""Render assets/confide.svg into the raster icons the installers need, with Qt (no other image tool).

    python installers/render_icons.py

Writes assets/icons/confide-<size>.png (hicolor theme sizes, Linux), assets/confide.ico (Windows: the
sizes Explorer picks from) and assets/confide.icns (macOS). The results are committed, so a build does
not need to run this; run it again after changing the SVG.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ASSETS = Path(__file__).resolve().parents[1] / "assets"
PNG_SIZES = (16, 24, 32, 48, 64, 128, 256, 512)


def main() -> int:
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")  # no display needed to render
    from PySide6.QtCore import Qt
    from PySide6.QtGui import QGuiApplication, QImage, QPainter
    from PySide6.QtSvg import QSvgRenderer

    app = QGuiApplication.instance() or QGuiApplication(sys.argv[:1])  # noqa: F841 (Qt needs one)
    renderer = QSvgRenderer(str(ASSETS / "confide.svg"))
    if not renderer.isValid():
        print(f"cannot read {ASSETS / 'confide.svg'}", file=sys.stderr)
        return 1

    def render(size: int) -> QImage:
        image = QImage(size, size, QImage.Format.Format_ARGB32_Premultiplied)
        image.fill(Qt.GlobalColor.transparent)
        painter = QPainter(image)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        renderer.render(painter)
        painter.end()
        return image

    (ASSETS / "icons").mkdir(exist_ok=True)
    for size in PNG_SIZES:
        path = ASSETS / "icons" / f"confide-{size}.png"
        if not render(size).save(str(path), "PNG"):
            print(f"cannot write {path}", file=sys.stderr)
            return 1
    # Qt's ico and icns writers store one image: the largest each format's readers scale best from.
    for name, fmt, size in (("confide.ico", "ICO", 256), ("confide.icns", "ICNS", 512)):
        if not render(size).save(str(ASSETS / name), fmt):
            print(f"cannot write {ASSETS / name} (Qt's {fmt} image plugin missing?)", file=sys.stderr)
            return 1
    print(f"icons written to {ASSETS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
