"""The engine's access token: generated once per install, stored readable by the user alone."""

from __future__ import annotations

import hmac
import os
import secrets
import stat
from pathlib import Path

import platformdirs


def default_token_path() -> Path:
    return Path(platformdirs.user_config_dir("confide")) / "engine-token"


class TokenFileError(OSError):
    """The token file cannot be trusted: someone else owns it."""


def load_or_create_token(path: Path | None = None) -> str:
    path = path or default_token_path()
    if path.exists():
        _check_private(path)
        token = path.read_text(encoding="utf-8").strip()
        if token:
            return token
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    # Created 0600 from the first byte: the token never exists with wider permissions.
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    if hasattr(os, "fchmod"):
        os.fchmod(descriptor, 0o600)  # an existing (empty) file keeps its mode through O_CREAT: set it
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        handle.write(token + "\n")
    return token


def _check_private(path: Path) -> None:
    """A token file another user owns may be known to them: refused. One readable by others (copied, restored
    from a backup, made by an older version) is made private again before it is used."""
    if not hasattr(os, "getuid"):  # Windows: the per-user profile folder's ACL protects it
        return
    status = path.stat()
    if status.st_uid != os.getuid():
        raise TokenFileError(f"the engine token file {path} belongs to another user (uid {status.st_uid}); "
                             "delete it and a new token is made")
    if stat.S_IMODE(status.st_mode) & 0o077:
        os.chmod(path, 0o600)


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
