"""Where the text is: PP-OCR's DB detector run on a downscaled copy of the screen.

Detection cost grows with pixels, so the detector sees at most `max_side` pixels on the long side
(1920×1080 → 1280×704: 2.3x less work than full size, ~320 ms instead of ~740 ms on one thread).
At 960 (~190 ms) words made only of x-height letters in a 14 px monospace font ("revenue error") fade
below the detector's threshold and are lost; at 1280 none were lost in 1,018 test lines of 10-18 px text.
Boxes come back in full-resolution coordinates, so recognition reads sharp pixels.
Screens are upright, so boxes are axis-aligned rectangles: no rotated crops, no angle classifier.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from engine.vision.onnx_session import cpu_session

DEFAULT_MAX_SIDE = 1280
_STRIDE = 32  # the network's input sides must be multiples of this
_MAX_REGIONS = 1000
# Joins the pieces of one line's kernel that a faint stretch split apart (PP-OCR dilates by 2×2; the wider
# kernel keeps a faint word inside its line's region instead of leaving it as a speck that is dropped).
_JOIN_KERNEL = np.ones((2, 4), np.uint8)


@dataclass(frozen=True)
class TextRegion:
    """A rectangle of the full-resolution image that holds one run of text (end coordinates exclusive)."""

    left: int
    top: int
    right: int
    bottom: int

    @property
    def width(self) -> int:
        return self.right - self.left

    @property
    def height(self) -> int:
        return self.bottom - self.top


class TextDetector:
    def __init__(
        self,
        model_path: Path,
        threads: int = 1,
        max_side: int = DEFAULT_MAX_SIDE,
        pixel_threshold: float = 0.2,
        region_threshold: float = 0.4,
        unclip_ratio: float = 1.2,
    ):
        self.session = cpu_session(model_path, threads)
        self.input_name = self.session.get_inputs()[0].name
        self.max_side = max_side
        # Below PP-OCR's 0.3 / 0.5: faint small text is faint in the downscaled map, and recognition
        # rejects what is not text anyway (its confidence stays low).
        self.pixel_threshold = pixel_threshold
        self.region_threshold = region_threshold
        # How far a region grows past the detector's shrunken text kernel. PP-OCR uses 1.6 at full size;
        # downscaled, the kernel is already relatively thicker. Measured at 1280 on 1,018 lines: 0.7 clips
        # glyphs (0.08% character errors), 1.1-1.3 is best (0.05%) and, with taller crops, ~15% cheaper to
        # recognise; 1.5 lets neighbouring lines bleed in (0.31%).
        self.unclip_ratio = unclip_ratio

    def detect(self, rgb: np.ndarray) -> list[TextRegion]:
        height, width = rgb.shape[:2]
        scaled = self._network_input(rgb)
        probability = self.session.run(None, {self.input_name: scaled})[0][0, 0]
        scale_x = width / probability.shape[1]
        scale_y = height / probability.shape[0]
        return self._regions(probability, scale_x, scale_y, width, height)

    def _network_input(self, rgb: np.ndarray) -> np.ndarray:
        height, width = rgb.shape[:2]
        scale = min(1.0, self.max_side / max(height, width))
        target_w = max(_STRIDE, round(width * scale / _STRIDE) * _STRIDE)
        target_h = max(_STRIDE, round(height * scale / _STRIDE) * _STRIDE)
        shrinking = target_w < width
        resized = cv2.resize(
            rgb, (target_w, target_h), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
        )
        # (pixel / 255 - 0.5) / 0.5, laid out as NCHW, in one C pass.
        return cv2.dnn.blobFromImage(resized, scalefactor=1 / 127.5, mean=(127.5, 127.5, 127.5))

    def _regions(
        self, probability: np.ndarray, scale_x: float, scale_y: float, width: int, height: int
    ) -> list[TextRegion]:
        text_pixels = (probability > self.pixel_threshold).astype(np.uint8)
        text_pixels = cv2.dilate(text_pixels, _JOIN_KERNEL)
        count, labels, stats, _ = cv2.connectedComponentsWithStats(text_pixels, connectivity=8)
        mean_probability = np.bincount(labels.ravel(), weights=probability.ravel(), minlength=count)
        mean_probability /= np.maximum(stats[:, cv2.CC_STAT_AREA], 1)

        candidates = []
        for label in range(1, count):
            left, top, kernel_w, kernel_h, _ = stats[label]
            if min(kernel_w, kernel_h) < 2 or mean_probability[label] < self.region_threshold:
                continue  # specks and faint blobs: icons, borders, noise
            grow = kernel_w * kernel_h * self.unclip_ratio / (2 * (kernel_w + kernel_h))
            region = TextRegion(
                left=max(0, int((left - grow) * scale_x)),
                top=max(0, int((top - grow) * scale_y)),
                right=min(width, int(np.ceil((left + kernel_w + grow) * scale_x))),
                bottom=min(height, int(np.ceil((top + kernel_h + grow) * scale_y))),
            )
            if region.height >= 6 and region.width >= 4:  # smaller than any legible glyph
                candidates.append(region)
        if len(candidates) > _MAX_REGIONS:
            candidates.sort(key=lambda r: r.width * r.height, reverse=True)
            candidates = candidates[:_MAX_REGIONS]
        return candidates
