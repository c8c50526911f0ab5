"""Reading order: text regions grouped into visual rows, top to bottom, each row read left to right.

A row is what the eye sees as one line across the whole screen, so two columns side by side share a row
and the wide gap between them is written as " | ". This keeps what is side by side together (a label and
its value, a menu, a title bar and its clock) in a form a small language model can follow.
"""

from __future__ import annotations

from collections.abc import Sequence
from statistics import median

from engine.vision.screen_text import ScreenLine
from engine.vision.text_detector import TextRegion

COLUMN_SEPARATOR = " | "
# A gap wider than this many line heights is a break between separate things (columns, menu items,
# label and value), not the space between two words; a word space is ~0.3 line heights.
_WIDE_GAP = 1.5
# Two regions are on one row when they overlap vertically by at least this share of the shorter one,
# and neither is more than this many times taller: a big heading beside several small lines must not
# pull them all into its row.
_SAME_ROW_OVERLAP = 0.5
_SAME_ROW_HEIGHT_RATIO = 3.0


def rows_of(regions: Sequence[TextRegion]) -> list[list[TextRegion]]:
    """Regions grouped into rows, rows top to bottom, each row left to right."""
    rows: list[list[TextRegion]] = []
    bands: list[tuple[float, float]] = []  # each row's mean top and bottom
    for region in sorted(regions, key=lambda r: (r.top + r.bottom, r.left)):
        if rows and _same_row(region, bands[-1]):
            rows[-1].append(region)
            count = len(rows[-1])
            top, bottom = bands[-1]
            bands[-1] = (top + (region.top - top) / count, bottom + (region.bottom - bottom) / count)
        else:
            rows.append([region])
            bands.append((region.top, region.bottom))
    for row in rows:
        row.sort(key=lambda r: r.left)
    return rows


def line_of(row: Sequence[tuple[TextRegion, str]]) -> ScreenLine:
    """One row's texts joined left to right: a space for a narrow gap, " | " for a wide one."""
    line_height = median(region.height for region, _ in row)
    parts: list[str] = []
    previous: TextRegion | None = None
    for region, text in row:
        if previous is not None:
            wide = region.left - previous.right > _WIDE_GAP * line_height
            parts.append(COLUMN_SEPARATOR if wide else " ")
        parts.append(text)
        previous = region
    return ScreenLine(
        text="".join(parts),
        left=min(region.left for region, _ in row),
        top=min(region.top for region, _ in row),
        right=max(region.right for region, _ in row),
        bottom=max(region.bottom for region, _ in row),
    )


def _same_row(region: TextRegion, band: tuple[float, float]) -> bool:
    top, bottom = band
    shorter, taller = sorted((region.height, bottom - top))
    overlap = min(region.bottom, bottom) - max(region.top, top)
    return overlap >= _SAME_ROW_OVERLAP * shorter and taller <= _SAME_ROW_HEIGHT_RATIO * shorter
