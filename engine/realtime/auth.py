"""The engine's access token: generated once per install, stored readable by the user alone."""

from __future__ import annotations

import hmac
import os
import secrets
from pathlib import Path

import platformdirs


def default_token_path() -> Path:
    return Path(platformdirs.user_config_dir("confide")) / "engine-token"


def load_or_create_token(path: Path | None = None) -> str:
    path = path or default_token_path()
    if path.exists():
        token = path.read_text(encoding="utf-8").strip()
        if token:
            return token
    path.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    # Created 0600 from the first byte: the token never exists with wider permissions.
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        handle.write(token + "\n")
    return token


def bearer_matches(header_value: str | None, token: str) -> bool:
    if not header_value or not header_value.lower().startswith("bearer "):
        return False
    return hmac.compare_digest(header_value[7:].strip().encode(), token.encode())


def subprotocol_token(protocols: list[str]) -> str | None:
    """Browsers cannot set headers; the Realtime convention passes the key as a WebSocket subprotocol."""
    prefix = "openai-insecure-api-key."
    for protocol in protocols:
        if protocol.startswith(prefix):
            return protocol[len(prefix):]
    return None
