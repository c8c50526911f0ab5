"""What the text says: PP-OCR's CTC recogniser, one cropped line at a time.

Measured on one thread, and the reasons for what differs from the stock PP-OCR pipeline:
- One crop per run, no batches: a batch pads every crop to its widest one, and the stock pipeline pads even
  a one-word crop to 320 columns. On one thread batching saved nothing; the padding cost 20-40%.
- The network's input is 48 px high and its cost grows with the width, so a crop costs about
  48 / crop height × crop width columns (~0.08 ms each). The crop fills the whole 48 px: scaling the text to
  36 px inside replicated margins was 20% faster but merged numbers ("92240 34813" → "9224034813") and lost
  the "i" of "file"; grey margins made it misread most lines.
- The output layer scores 18,710 characters per step, ~15% of the time: without CJK it is cut to the
  ~1,750 Latin, Greek, Cyrillic and symbol characters (which also ends confusions like '～' for '~').
"""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import onnx
from onnx import numpy_helper

from engine.vision.onnx_session import cpu_session

INPUT_HEIGHT = 48
_STEP = 8  # input columns per output step
_MIN_WIDTH = 32  # a lone character still gets a few output steps


class TextRecognizer:
    def __init__(self, model_path: Path, threads: int = 1, cjk: bool = False, min_confidence: float = 0.5):
        model = onnx.load(str(model_path))
        characters = _character_list(model)
        if not cjk:
            model, characters = _without_cjk(model, characters)
        self.session = cpu_session(model.SerializeToString(), threads)
        self.input_name = self.session.get_inputs()[0].name
        # CTC class 0 is the blank; the dictionary follows, then the space the model appends.
        self.characters = np.array(["", *characters, " "], dtype=object)
        self.min_confidence = min_confidence

    def read(self, crop: np.ndarray) -> tuple[str, float]:
        """The text in one RGB line crop and the mean confidence of its characters; ("", 0) for none."""
        if crop.shape[0] == 0 or crop.shape[1] == 0:
            return "", 0.0
        steps = self.session.run(None, {self.input_name: self._network_input(crop)})[0][0]
        text, confidence = self._decode(steps)
        if confidence < self.min_confidence:
            return "", confidence
        return text, confidence

    @staticmethod
    def _network_input(crop: np.ndarray) -> np.ndarray:
        height, width = crop.shape[:2]
        scaled_w = max(1, math.ceil(width * INPUT_HEIGHT / height))
        interpolation = cv2.INTER_AREA if height > INPUT_HEIGHT else cv2.INTER_LINEAR
        resized = cv2.resize(crop, (scaled_w, INPUT_HEIGHT), interpolation=interpolation)
        blob = cv2.dnn.blobFromImage(resized, scalefactor=1 / 127.5, mean=(127.5, 127.5, 127.5))
        if scaled_w < _MIN_WIDTH:  # pad with 0 (mid grey after normalising), as PP-OCR pads
            blob = np.pad(blob, ((0, 0), (0, 0), (0, 0), (0, _MIN_WIDTH - scaled_w)))
        return blob

    def _decode(self, steps: np.ndarray) -> tuple[str, float]:
        best = steps.argmax(axis=1)
        keep = best != 0
        keep[1:] &= best[1:] != best[:-1]  # CTC: a repeat without a blank between is one character
        if not keep.any():
            return "", 0.0
        confidence = float(steps[np.arange(len(best)), best][keep].mean())
        text = "".join(self.characters[best[keep]]).strip()
        return text, confidence


def _character_list(model: onnx.ModelProto) -> list[str]:
    metadata = {prop.key: prop.value for prop in model.metadata_props}
    if "character" not in metadata:
        raise ValueError("the recognition model carries no character dictionary (metadata 'character')")
    return metadata["character"].splitlines()


def _is_cjk(character: str) -> bool:
    code = ord(character[0]) if character else 0
    # CJK radicals/punctuation/kana/ideographs/hangul/compatibility forms and the supplementary planes.
    return code >= 0x2E80


def _without_cjk(model: onnx.ModelProto, characters: list[str]) -> tuple[onnx.ModelProto, list[str]]:
    """The model with its output layer cut to the classes that are not CJK (plus blank and space)."""
    classes = len(characters) + 2
    kept = [0] + [index + 1 for index, c in enumerate(characters) if not _is_cjk(c)] + [classes - 1]
    layer = [init for init in model.graph.initializer if init.dims and init.dims[-1] == classes]
    if not layer:  # an unfamiliar head: keep the whole model rather than guess
        return model, characters
    for initializer in layer:
        weights = np.ascontiguousarray(numpy_helper.to_array(initializer)[..., kept])
        initializer.CopyFrom(numpy_helper.from_array(weights, initializer.name))
    for output in model.graph.output:
        output.type.tensor_type.shape.dim[-1].dim_value = len(kept)
    del model.graph.value_info[:]  # stale shapes; the runtime infers them again
    return model, [characters[index - 1] for index in kept[1:-1]]
