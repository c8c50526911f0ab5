"""Parse and validate client events before the session acts on them.

Every way an event can be wrong raises ProtocolError with a stable code; nothing is half-applied.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from engine.realtime import errors
from engine.realtime.errors import ProtocolError
from engine.vision.screen_image import MAX_PIXELS

# Input limits. Each refusal is an `error` event whose message names the limit; the session goes on.
MAX_EVENT_BYTES = 24 * 1024 * 1024  # a 4K screenshot as a base64 PNG fits; more is refused, not parsed
MAX_APPEND_SAMPLES = 24_000 * 15  # one append carries at most 15 s of audio
MAX_TEXT_CHARS = 32_000  # a text part, a transcript, instructions
MAX_ID_CHARS = 128  # event, item and response ids (the Realtime API's own are 32)
MAX_NAME_CHARS = 128  # a voice name
MAX_CONTENT_PARTS = 32  # parts of one item
MAX_IMAGE_BYTES = 16 * 1024 * 1024  # one encoded screenshot (an 8K PNG of real screen content is well under)
MAX_IMAGE_PIXELS = MAX_PIXELS  # 40 MP: an 8K monitor is 33 MP; past that it is a mistake or a bomb


@dataclass(frozen=True)
class ClientEvent:
    type: str
    event_id: str | None
    body: dict[str, Any]
    decoded: dict[str, Any]  # payloads decoded once during validation: "audio", or "parts" by index


def parse(raw: str | bytes) -> ClientEvent:
    if len(raw) > MAX_EVENT_BYTES:
        raise ProtocolError(errors.EVENT_TOO_LARGE,
                            f"event of {len(raw)} bytes exceeds the {MAX_EVENT_BYTES}-byte limit")
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as error:
        raise ProtocolError(errors.INVALID_JSON, f"event is not valid JSON: {error}") from None
    except RecursionError:
        raise ProtocolError(errors.INVALID_JSON, "event is nested too deeply to be a Realtime event") from None
    if not isinstance(body, dict):
        raise ProtocolError(errors.INVALID_EVENT, "an event must be a JSON object")
    event_id = body.get("event_id")
    if event_id is not None and not isinstance(event_id, str):
        raise ProtocolError(errors.INVALID_VALUE, "`event_id` must be a string", param="event_id")
    if event_id is not None and len(event_id) > MAX_ID_CHARS:
        raise ProtocolError(errors.INVALID_VALUE, f"`event_id` is longer than the {MAX_ID_CHARS}-character limit",
                            param="event_id")
    try:  # from here on, every error answers this event by its id
        kind = body.get("type")
        if not isinstance(kind, str):
            raise ProtocolError(errors.INVALID_EVENT, "an event needs a string `type`", param="type")
        validate = _VALIDATORS.get(kind)
        if validate is None:
            raise ProtocolError(errors.UNKNOWN_EVENT_TYPE, f"unknown event type {kind[:80]!r}", param="type")
        decoded = validate(body) or {}
    except ProtocolError as error:
        error.event_id = event_id
        raise
    return ClientEvent(kind, event_id, body, decoded)


def decode_audio(data: Any, param: str = "audio") -> np.ndarray:
    """Base64 PCM16 little-endian mono → int16 samples."""
    if not isinstance(data, str):
        raise ProtocolError(errors.INVALID_AUDIO, f"`{param}` must be a base64 string", param=param)
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise ProtocolError(errors.INVALID_AUDIO, f"`{param}` is not valid base64", param=param) from None
    if len(raw) % 2:
        raise ProtocolError(errors.INVALID_AUDIO, f"`{param}` holds {len(raw)} bytes: PCM16 needs a whole "
                            "number of 2-byte samples", param=param)
    if len(raw) // 2 > MAX_APPEND_SAMPLES:
        raise ProtocolError(errors.INVALID_AUDIO, f"`{param}` holds more than {MAX_APPEND_SAMPLES} samples "
                            "(15 s); send audio in smaller pieces", param=param)
    return np.frombuffer(raw, dtype="<i2")


def decode_image_url(url: Any, param: str) -> bytes:
    """A `data:image/...;base64,` URL → the encoded image bytes. Remote URLs are refused: nothing leaves
    or enters this machine behind the user's back."""
    if not isinstance(url, str):
        raise ProtocolError(errors.INVALID_IMAGE, f"`{param}` must be a data URL string", param=param)
    if not url.startswith("data:image/"):
        raise ProtocolError(errors.INVALID_IMAGE, f"`{param}` must be a data:image/...;base64 URL",
                            param=param)
    header, _, payload = url.partition(",")
    if not header.endswith(";base64") or not payload:
        raise ProtocolError(errors.INVALID_IMAGE, f"`{param}` must be base64-encoded", param=param)
    if len(payload) > MAX_IMAGE_BYTES * 4 // 3 + 4:
        raise _image_too_large(f"{len(payload) * 3 // 4} bytes", param)
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise ProtocolError(errors.INVALID_IMAGE, f"`{param}` is not valid base64", param=param) from None
    if len(data) > MAX_IMAGE_BYTES:
        raise _image_too_large(f"{len(data)} bytes", param)
    pixels = _pixel_count(data)
    if pixels is not None and pixels > MAX_IMAGE_PIXELS:
        raise _image_too_large(f"{pixels} pixels", param)
    return data


def _pixel_count(data: bytes) -> int | None:
    """Width × height from the image's header (nothing is decoded); None when the header is unreadable, which
    the backend then reports as an unusable image."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                width, height = image.size
                return width * height
    except Image.DecompressionBombError:
        return MAX_IMAGE_PIXELS + 1
    except Exception:  # Pillow raises many types for garbage
        return None


def _image_too_large(what: str, param: str) -> ProtocolError:
    return ProtocolError(errors.IMAGE_TOO_LARGE, f"`{param}` is too large ({what}); the limits are "
                         f"{MAX_IMAGE_BYTES} bytes and {MAX_IMAGE_PIXELS} pixels: share one monitor, a window or "
                         "a region", param=param)


# --- per-type validation ---------------------------------------------------------------------------

def _require(body: dict, key: str, kinds: type | tuple[type, ...], param: str | None = None) -> Any:
    param = param or key
    if key not in body:
        raise ProtocolError(errors.MISSING_FIELD, f"missing required field `{param}`", param=param)
    value = body[key]
    if isinstance(value, bool) and bool not in (kinds if isinstance(kinds, tuple) else (kinds,)):
        raise ProtocolError(errors.INVALID_VALUE, f"`{param}` has the wrong type", param=param)
    if not isinstance(value, kinds):
        raise ProtocolError(errors.INVALID_VALUE, f"`{param}` has the wrong type", param=param)
    return value


def _optional(body: dict, key: str, kinds: type | tuple[type, ...], param: str | None = None) -> Any:
    if body.get(key) is None:
        return None
    return _require(body, key, kinds, param)


def _bounded(value: str | None, limit: int, param: str) -> str | None:
    """A string field within its length limit."""
    if value is not None and len(value) > limit:
        raise ProtocolError(errors.INVALID_VALUE, f"`{param}` is longer than the {limit}-character limit",
                            param=param)
    return value


def _id(body: dict, key: str, param: str | None = None, *, required: bool = True) -> str | None:
    value = (_require if required else _optional)(body, key, str, param)
    return _bounded(value, MAX_ID_CHARS, param or key)


def string_field(value: Any, param: str, limit: int) -> str:
    """A string of at most `limit` characters (MAX_TEXT_CHARS for text the model reads, MAX_NAME_CHARS for a name)."""
    if not isinstance(value, str):
        raise ProtocolError(errors.INVALID_VALUE, f"`{param}` must be a string", param=param)
    return _bounded(value, limit, param)


def _session_update(body: dict) -> None:
    _require(body, "session", dict)  # fields are checked by session_config.apply_update


def _append(body: dict) -> dict:
    if "audio" not in body:
        raise ProtocolError(errors.MISSING_FIELD, "missing required field `audio`", param="audio")
    return {"audio": decode_audio(body["audio"])}


def _nothing(body: dict) -> None:
    pass


def _item_id(body: dict) -> None:
    _id(body, "item_id")


def _truncate(body: dict) -> None:
    _id(body, "item_id")
    if _require(body, "content_index", int) < 0:
        raise ProtocolError(errors.INVALID_VALUE, "`content_index` must be >= 0", param="content_index")
    if _require(body, "audio_end_ms", int) < 0:
        raise ProtocolError(errors.INVALID_VALUE, "`audio_end_ms` must be >= 0", param="audio_end_ms")


_CONTENT_BY_ROLE = {
    "user": {"input_text", "input_audio", "input_image"},
    "system": {"input_text"},
    "assistant": {"output_text", "output_audio", "text", "audio"},
}


def _item_create(body: dict) -> dict:
    _id(body, "previous_item_id", required=False)
    item = _require(body, "item", dict)
    _id(item, "id", "item.id", required=False)
    kind = item.get("type", "message")
    if kind != "message":
        raise ProtocolError(errors.UNSUPPORTED, f"item type {kind!r} is not supported (no tools yet)",
                            param="item.type")
    role = _require(item, "role", str, "item.role")
    if role not in _CONTENT_BY_ROLE:
        raise ProtocolError(errors.INVALID_VALUE, "item.role must be user, assistant or system",
                            param="item.role")
    content = _require(item, "content", list, "item.content")
    decoded_parts: dict[int, Any] = {}
    if not content:
        raise ProtocolError(errors.INVALID_VALUE, "item.content must not be empty", param="item.content")
    if len(content) > MAX_CONTENT_PARTS:
        raise ProtocolError(errors.INVALID_VALUE, f"item.content has {len(content)} parts; the limit is "
                            f"{MAX_CONTENT_PARTS}", param="item.content")
    for index, part in enumerate(content):
        param = f"item.content[{index}]"
        if not isinstance(part, dict):
            raise ProtocolError(errors.INVALID_VALUE, f"{param} must be an object", param=param)
        part_type = _require(part, "type", str, f"{param}.type")
        if part_type not in _CONTENT_BY_ROLE[role]:
            raise ProtocolError(errors.INVALID_VALUE, f"{param}.type {part_type!r} is not allowed for role "
                                f"{role!r}", param=f"{param}.type")
        if part_type in ("input_text", "output_text", "text"):
            _bounded(_require(part, "text", str, f"{param}.text"), MAX_TEXT_CHARS, f"{param}.text")
        elif part_type == "input_audio":
            if part.get("audio") is not None:
                decoded_parts[index] = decode_audio(part["audio"], f"{param}.audio")
            _bounded(_optional(part, "transcript", str, f"{param}.transcript"), MAX_TEXT_CHARS,
                     f"{param}.transcript")
        elif part_type == "input_image":
            decoded_parts[index] = decode_image_url(part.get("image_url"), f"{param}.image_url")
        else:  # assistant audio given as history: its transcript is what counts
            _bounded(_optional(part, "transcript", str, f"{param}.transcript"), MAX_TEXT_CHARS,
                     f"{param}.transcript")
    return {"parts": decoded_parts}


def _response_create(body: dict) -> None:
    response = _optional(body, "response", dict)
    if not response:
        return
    if response.get("instructions") is not None:
        string_field(response["instructions"], "response.instructions", MAX_TEXT_CHARS)
    conversation = response.get("conversation", "auto")
    if conversation not in ("auto", None):
        raise ProtocolError(errors.UNSUPPORTED, "only responses in the default conversation are supported",
                            param="response.conversation")
    for key in ("output_modalities", "modalities"):
        modalities = response.get(key)
        if modalities is not None and (not isinstance(modalities, list)
                                       or any(m not in ("text", "audio") for m in modalities)):
            raise ProtocolError(errors.INVALID_VALUE, f"response.{key} must list 'text' and/or 'audio'",
                                param=f"response.{key}")


def _response_cancel(body: dict) -> None:
    _id(body, "response_id", required=False)


_VALIDATORS = {
    "session.update": _session_update,
    "input_audio_buffer.append": _append,
    "input_audio_buffer.commit": _nothing,
    "input_audio_buffer.clear": _nothing,
    "output_audio_buffer.clear": _nothing,
    "conversation.item.create": _item_create,
    "conversation.item.delete": _item_id,
    "conversation.item.retrieve": _item_id,
    "conversation.item.truncate": _truncate,
    "response.create": _response_create,
    "response.cancel": _response_cancel,
}
