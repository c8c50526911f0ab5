"""Medians and percentiles for benchmark figures."""

from __future__ import annotations

import numpy as np


def p50(values) -> float | None:
    return percentile(values, 50)


def p95(values) -> float | None:
    return percentile(values, 95)


def percentile(values, q: float) -> float | None:
    values = [v for v in values if v is not None]
    return round(float(np.percentile(values, q)), 1) if values else None
