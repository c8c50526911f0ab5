"""Medians and 95th percentiles of the measured trials, leaving out trials that measured nothing."""

from __future__ import annotations

import numpy as np


def percentile(values, q: float) -> float | None:
    values = [v for v in values if v is not None]
    return round(float(np.percentile(values, q)), 1) if values else None


def p50(values) -> float | None:
    return percentile(values, 50)


def p95(values) -> float | None:
    return percentile(values, 95)


def difference(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else round(a - b, 1)
