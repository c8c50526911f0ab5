"""Ids for events, items and responses: a short prefix and random hex, like the Realtime API's."""

from __future__ import annotations

import secrets


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(10)}"
