"""Screenshots in, RGB pixels out: data URLs and encoded PNG/JPEG/WebP bytes, checked before decoding.

Every rejection is a `ScreenImageError` whose message can be shown to the person as it is.
"""

from __future__ import annotations

import base64
import binascii
import io
import urllib.parse
import warnings

import cv2
import numpy as np
from PIL import Image

# 40 MP covers an 8K monitor (33 MP); past that a "screenshot" is more likely a mistake or a bomb,
# and decoding it would take seconds and hundreds of MB.
MAX_PIXELS = 40_000_000
# A 40 MP PNG of real screen content stays well under this; it bounds the base64 work before any check.
MAX_ENCODED_BYTES = 64 * 1024 * 1024

SUPPORTED_TYPES = {"image/png": "PNG", "image/jpeg": "JPEG", "image/jpg": "JPEG", "image/webp": "WEBP"}
_SUPPORTED_NAMES = "PNG, JPEG or WebP"


class ScreenImageError(ValueError):
    """The screenshot cannot be read. The message says why in words a person understands; `code` is for
    programs: not_a_data_url, bad_base64, unsupported_type, corrupt_image, too_large, bad_pixels."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


def decode_data_url(url: str) -> bytes:
    """The image bytes inside a `data:image/...;base64,...` URL, as a Realtime `input_image` carries them."""
    if not isinstance(url, str) or not url[:5].lower() == "data:":
        raise ScreenImageError(
            "not_a_data_url", "The screenshot was not sent as an image data URL (data:image/png;base64,...)."
        )
    header, comma, payload = url[5:].partition(",")
    if not comma:
        raise ScreenImageError(
            "not_a_data_url", "The screenshot's data URL is malformed: it has no ',' before the image data."
        )
    params = [part.strip().lower() for part in header.split(";")]
    media_type = params[0] or "text/plain"
    if media_type not in SUPPORTED_TYPES:
        raise _unsupported(media_type)
    if len(payload) > MAX_ENCODED_BYTES * 4 // 3 + 4:
        raise _too_large(f"{len(payload) * 3 // 4 / 1e6:.0f} MB of image data")
    if "base64" in params[1:]:
        data = _base64_bytes(payload)
    else:
        data = urllib.parse.unquote_to_bytes(payload)
    if not data:
        raise ScreenImageError("not_a_data_url", "The screenshot's data URL holds no image data.")
    return data


def decode_image(data: bytes, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Encoded PNG/JPEG/WebP bytes as an RGB uint8 array (height, width, 3).

    The size is read from the header first, so an oversized image is refused before it is decoded.
    """
    if len(data) > MAX_ENCODED_BYTES:
        raise _too_large(f"{len(data) / 1e6:.0f} MB of image data")
    width, height, kind = _header(data)
    if kind not in SUPPORTED_TYPES.values():
        raise _unsupported(kind)
    if width * height > max_pixels:
        raise _too_large(f"{width}×{height} pixels", max_pixels)
    # OpenCV decodes 2-3x faster than Pillow for these formats; Pillow only read the header.
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if bgr is None or bgr.shape[0] != height or bgr.shape[1] != width:
        message = f"The screenshot is damaged: its {kind} data is cut short or corrupt."
        raise ScreenImageError("corrupt_image", message)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def as_rgb(pixels: np.ndarray, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """An already decoded image as contiguous RGB uint8: grey and RGBA are converted, other shapes refused."""
    if pixels.dtype != np.uint8:
        raise ScreenImageError("bad_pixels", f"Screen pixels must be 8-bit (uint8), not {pixels.dtype}.")
    if pixels.ndim == 2:
        pixels = cv2.cvtColor(pixels, cv2.COLOR_GRAY2RGB)
    elif pixels.ndim == 3 and pixels.shape[2] == 4:
        pixels = pixels[:, :, :3]
    elif pixels.ndim != 3 or pixels.shape[2] != 3:
        message = f"Screen pixels must be RGB (height, width, 3), not {pixels.shape}."
        raise ScreenImageError("bad_pixels", message)
    height, width = pixels.shape[:2]
    if height == 0 or width == 0:
        raise ScreenImageError("bad_pixels", "The screenshot is empty (0 pixels).")
    if width * height > max_pixels:
        raise _too_large(f"{width}×{height} pixels", max_pixels)
    return np.ascontiguousarray(pixels)


def _base64_bytes(payload: str) -> bytes:
    compact = "".join(urllib.parse.unquote(payload).split())
    compact += "=" * (-len(compact) % 4)  # some encoders drop the padding
    try:
        return base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError):
        try:  # the URL-safe alphabet ('-', '_') is also seen in the wild
            return base64.b64decode(compact.encode("ascii"), altchars=b"-_", validate=True)
        except (binascii.Error, ValueError):
            message = "The screenshot's data is corrupt: it is not valid base64."
            raise ScreenImageError("bad_base64", message) from None


def _header(data: bytes) -> tuple[int, int, str]:
    """Width, height and format name, from the header alone (nothing is decoded)."""
    try:
        with warnings.catch_warnings():
            # Our own pixel limit applies below; Pillow's bomb warning would only add noise.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                width, height = image.size
                return width, height, image.format or "an unknown format"
    except Image.DecompressionBombError:
        raise _too_large("more pixels than any screen has") from None
    except Exception:  # Pillow raises many types for garbage; all mean the same to the person
        raise ScreenImageError(
            "corrupt_image",
            f"The screenshot is not a readable image: its data is not {_SUPPORTED_NAMES}, or it is damaged."
        ) from None


def _unsupported(kind: str) -> ScreenImageError:
    return ScreenImageError("unsupported_type", f"Screenshots must be {_SUPPORTED_NAMES}, not {kind}.")


def _too_large(what: str, max_pixels: int = MAX_PIXELS) -> ScreenImageError:
    return ScreenImageError(
        "too_large",
        f"The screenshot is too large to read ({what}; the limit is {max_pixels / 1e6:.0f} megapixels). "
        "Share one monitor, a window or a region instead."
    )
