"""Screenshot → text with layout, for answering spoken questions about the screen.

    reader = ScreenReader()            # the default PP-OCRv6 small models from the model store
    reader.warm_up()                   # at start-up, so the first question pays no loading time
    screen = reader.read(png_bytes)    # or a data URL, or an RGB array; blocking: call it off the event loop
    prompt_part = screen.text          # bounded, lines top to bottom, " | " between columns

Stages: decode (screen_image) → find text regions on a downscaled copy (text_detector) → read each region
from the full-resolution pixels, top first (text_recognizer, with a crop cache) → rows (screen_layout).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np

from engine.models.store import ModelStore, ResolvedModel
from engine.runtime import inference_threads
from engine.vision.crop_cache import CropCache
from engine.vision.screen_image import as_rgb, decode_data_url, decode_image
from engine.vision.screen_layout import line_of, rows_of
from engine.vision.screen_text import ScreenText
from engine.vision.text_detector import DEFAULT_MAX_SIDE, TextDetector, TextRegion
from engine.vision.text_recognizer import TextRecognizer

MODEL_ID = "ppocr-v6-small"
DETECTION_FILE = "PP-OCRv6_det_small.onnx"
RECOGNITION_FILE = "PP-OCRv6_rec_small.onnx"


class ScreenReader:
    def __init__(
        self,
        model: ResolvedModel | Path | str | None = None,
        threads: int | None = None,
        *,
        detect_max_side: int = DEFAULT_MAX_SIDE,
        cjk: bool = False,
        cache_size: int = 4096,
    ):
        """`model`: a resolved model, a folder holding the two ONNX files, or None for the model store's.
        `cjk`: also read Chinese/Japanese/Korean characters (recognition ~15% slower)."""
        self.detection_path, self.recognition_path = _model_files(model)
        self.threads = threads or inference_threads()
        self.detect_max_side = detect_max_side
        self.cjk = cjk
        self._cache = CropCache(cache_size)
        self._detector: TextDetector | None = None
        self._recognizer: TextRecognizer | None = None
        self._load_lock = threading.Lock()

    def warm_up(self) -> None:
        """Load both models and run each once, so the first real screenshot is read at full speed."""
        detector, recognizer = self._models()
        blank = np.full((64, 96, 3), 255, np.uint8)
        detector.detect(blank)
        recognizer.read(blank[:24])

    def read(self, image: bytes | str | np.ndarray, budget_ms: float | None = None) -> ScreenText:
        """The text on a screenshot: encoded PNG/JPEG/WebP bytes, a data URL, or an RGB uint8 array.

        With `budget_ms`, regions still unread when the budget is spent are skipped (and counted in
        `unread_regions`); lines already cached from an earlier screenshot are still filled in.
        Raises ScreenImageError for an image that cannot be read.
        """
        started = time.perf_counter()
        stage_ms: dict[str, float] = {}

        def lap(stage: str) -> None:
            stage_ms[stage] = (time.perf_counter() - started) * 1000 - sum(stage_ms.values())

        rgb = _pixels(image)
        lap("decode")
        detector, recognizer = self._models()
        regions = detector.detect(rgb)
        lap("detect")
        deadline = None if budget_ms is None else started + budget_ms / 1000
        top_down = sorted(regions, key=lambda region: (region.top, region.left))
        texts, unread = self._recognize(rgb, top_down, recognizer, deadline)
        lap("recognize")
        # Rows are built from what was read: a region with no text (a photo, an icon) shapes no row.
        rows = rows_of([region for region in regions if texts.get(region)])
        lines = [line_of([(region, texts[region]) for region in row]) for row in rows]
        lap("layout")
        return ScreenText(
            lines=tuple(lines),
            width=rgb.shape[1],
            height=rgb.shape[0],
            elapsed_ms=(time.perf_counter() - started) * 1000,
            stage_ms=stage_ms,
            unread_regions=unread,
        )

    def _recognize(
        self, rgb: np.ndarray, regions: list[TextRegion], recognizer: TextRecognizer, deadline: float | None
    ) -> tuple[dict[TextRegion, str], int]:
        texts: dict[TextRegion, str] = {}
        unread = 0
        for region in regions:
            crop = rgb[region.top : region.bottom, region.left : region.right]
            key = self._cache.key(crop)
            result = self._cache.get(key)
            if result is None:
                if deadline is not None and time.perf_counter() > deadline:
                    unread += 1
                    continue
                result = recognizer.read(crop)
                self._cache.put(key, result)
            texts[region] = result[0]
        return texts, unread

    def _models(self) -> tuple[TextDetector, TextRecognizer]:
        with self._load_lock:
            if self._detector is None:
                self._detector = TextDetector(self.detection_path, self.threads, self.detect_max_side)
            if self._recognizer is None:
                self._recognizer = TextRecognizer(self.recognition_path, self.threads, cjk=self.cjk)
            return self._detector, self._recognizer


def _pixels(image: bytes | str | np.ndarray) -> np.ndarray:
    if isinstance(image, np.ndarray):
        return as_rgb(image)
    if isinstance(image, str):
        image = decode_data_url(image)
    return decode_image(bytes(image))


def _model_files(model: ResolvedModel | Path | str | None) -> tuple[Path, Path]:
    if model is None:
        model = ModelStore().resolve(MODEL_ID)
    if isinstance(model, ResolvedModel):
        return model.file(DETECTION_FILE), model.file(RECOGNITION_FILE)
    folder = Path(model)
    files = folder / DETECTION_FILE, folder / RECOGNITION_FILE
    missing = [path.name for path in files if not path.is_file()]
    if missing:
        raise FileNotFoundError(f"{folder} lacks the screen-reading model files {', '.join(missing)}")
    return files
