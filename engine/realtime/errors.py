"""Protocol errors with stable codes a client program can match on.

Every malformed or out-of-order client event becomes one `error` event; the session keeps going.
"""

from __future__ import annotations


MAX_MESSAGE_CHARS = 400  # a message quotes what the client sent; a 20 MB value must not come back 20 MB long


class ProtocolError(Exception):
    """A client event that cannot be carried out. Sent as `error {type, code, message, param, event_id}`;
    `event_id` is the client's id for the event, once it is known (the event parsed far enough to have one)."""

    def __init__(self, code: str, message: str, *, param: str | None = None, kind: str = "invalid_request_error"):
        if len(message) > MAX_MESSAGE_CHARS:
            message = message[:MAX_MESSAGE_CHARS - 1] + "…"
        super().__init__(message)
        self.code = code
        self.message = message
        self.param = param
        self.kind = kind
        self.event_id: str | None = None


# Stable codes (kept in one place so clients and tests agree).
INVALID_JSON = "invalid_json"
INVALID_EVENT = "invalid_event"
UNKNOWN_EVENT_TYPE = "unknown_event_type"
MISSING_FIELD = "missing_required_parameter"
INVALID_VALUE = "invalid_value"
INVALID_AUDIO = "invalid_audio"
EVENT_TOO_LARGE = "event_too_large"
AUDIO_BUFFER_FULL = "input_audio_buffer_full"
COMMIT_EMPTY = "input_audio_buffer_commit_empty"
RESPONSE_ACTIVE = "conversation_already_has_active_response"
CANCEL_NOT_ACTIVE = "response_cancel_not_active"
ITEM_NOT_FOUND = "item_not_found"
DUPLICATE_ITEM_ID = "duplicate_item_id"
AUDIO_END_TOO_LARGE = "audio_end_ms_out_of_range"
INVALID_IMAGE = "invalid_image"
IMAGE_TOO_LARGE = "image_too_large"
UNSUPPORTED = "unsupported_feature"
MODEL_FAILURE = "model_failure"
SERVER_ERROR = "server_error"
