"""The conversation as the person had it, kept on disk so that it outlives engine restarts and app crashes.

Each save replaces the file atomically and durably: a crash at any point leaves the previous good file,
and a full disk raises `HistoryWriteError` with the previous file untouched. After an engine restart the
turns re-seed the new session (`as_conversation_items`) so the conversation goes on where it was.
"""

from __future__ import annotations

import json
import threading
from dataclasses import asdict, dataclass, fields, replace
from datetime import datetime
from pathlib import Path

import platformdirs

from app.atomic_file import keep_broken_file, remove_stale_temp_files, write_file_atomically

FORMAT_VERSION = 1
ROLES = ("user", "assistant")


class HistoryWriteError(OSError):
    """The history could not be saved; the last saved file is still there, unchanged."""

    def __str__(self) -> str:  # a sentence for the person, without OSError's "[Errno 28]" in front
        return self.strerror or super().__str__()


@dataclass(frozen=True)
class Turn:
    role: str  # user | assistant
    text: str  # for an interrupted reply: the words the person heard
    at: str  # ISO 8601 local time with its offset
    item_id: str | None = None  # the Realtime item this turn is, for updates while it streams
    interrupted: bool = False
    had_screenshot: bool = False  # the picture itself is never stored


def default_history_path() -> Path:
    return Path(platformdirs.user_data_dir("confide")) / "history.json"


class ConversationHistory:
    """Ordered turns, the oldest dropped past `max_turns`. Safe to use from several threads."""

    def __init__(self, path: Path | None = None, max_turns: int = 500):
        self.path = Path(path) if path else default_history_path()
        self.max_turns = max_turns
        self._turns: list[Turn] = []
        self._lock = threading.Lock()

    @property
    def turns(self) -> list[Turn]:
        with self._lock:
            return list(self._turns)

    def __len__(self) -> int:
        return len(self._turns)

    def append(self, role: str, text: str, item_id: str | None = None, interrupted: bool = False,
               had_screenshot: bool = False, at: str | None = None) -> Turn:
        turn = _new_turn(role, text, item_id, interrupted, had_screenshot, at)
        with self._lock:
            self._add(turn)
        return turn

    def update(self, item_id: str, *, text: str | None = None, interrupted: bool | None = None) -> bool:
        """Change the turn of `item_id` (a reply that streamed on, or was cut short); False if there is none."""
        changes = {k: v for k, v in (("text", text), ("interrupted", interrupted)) if v is not None}
        with self._lock:
            index = self._index_of(item_id)
            if index is None:
                return False
            self._turns[index] = replace(self._turns[index], **changes)
            return True

    def record(self, role: str, text: str, item_id: str, interrupted: bool = False,
               had_screenshot: bool = False, after: str | None = None) -> Turn:
        """Add the turn of `item_id`, or bring the one already there up to date (a reply as it streams).
        A new turn goes right after the turn of `after` (the item before it in the engine's conversation)
        when that is here: a transcript that comes after the reply to it (the omni backend answers the
        audio without waiting for Whisper) still lands before that reply."""
        turn = _new_turn(role, text, item_id, interrupted, had_screenshot)
        with self._lock:
            index = self._index_of(item_id)
            before = None if after is None else self._index_of(after)
            if index is None and before is not None and before < len(self._turns) - 1:
                self._turns.insert(before + 1, turn)
                del self._turns[:-self.max_turns]
            elif index is None:
                self._add(turn)
            else:  # it keeps the time it began
                self._turns[index] = turn = replace(turn, at=self._turns[index].at)
        return turn

    def _add(self, turn: Turn) -> None:
        self._turns.append(turn)
        del self._turns[:-self.max_turns]

    def _index_of(self, item_id: str) -> int | None:
        for index in range(len(self._turns) - 1, -1, -1):  # the turn sought is nearly always the last
            if self._turns[index].item_id == item_id:
                return index
        return None

    def clear(self) -> None:
        with self._lock:
            self._turns.clear()

    # --- on disk --------------------------------------------------------------------------------------

    def save(self) -> None:
        with self._lock:  # one writer at a time, so an older snapshot never lands after a newer one
            data = json.dumps({"version": FORMAT_VERSION, "turns": [asdict(t) for t in self._turns]},
                              ensure_ascii=False, indent=1).encode("utf-8")
            try:
                write_file_atomically(self.path, data)
            except OSError as error:
                raise HistoryWriteError(error.errno, f"could not save the conversation history to {self.path} "
                                        f"({error.strerror or error}); the last saved history is unchanged"
                                        ) from error

    def load(self) -> list[str]:
        """Replace the turns with the saved ones. Returns warnings; a broken file is moved aside, never fatal."""
        remove_stale_temp_files(self.path)
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            turns, warnings = [], []
        except OSError as error:
            turns, warnings = [], [f"could not read the conversation history {self.path} ({error.strerror})"]
        else:
            try:
                turns, warnings = _parse(raw), []
            except ValueError as error:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
                turns = []
                warnings = [f"the conversation history {self.path} is damaged ({error}); starting afresh"
                            f"{keep_broken_file(self.path)}"]
        with self._lock:
            self._turns = turns[-self.max_turns:]
        return warnings

    # --- for a new engine session ---------------------------------------------------------------------

    def as_conversation_items(self, last: int | None = None, assistant_audio: bool = False) -> list[dict]:
        """`conversation.item.create` events that rebuild the conversation in a fresh Realtime session.

        `last` keeps only the most recent turns (None: all). Replies go in as `output_text` (what every
        Realtime server reads as context), or with `assistant_audio` as `output_audio` parts carrying only
        their transcript.
        """
        turns = self.turns[-last:] if last else self.turns
        events = []
        for turn in turns:
            if turn.role == "user":
                part = {"type": "input_text", "text": turn.text}
            elif assistant_audio:
                part = {"type": "output_audio", "transcript": turn.text}
            else:
                part = {"type": "output_text", "text": turn.text}
            item = {"type": "message", "role": turn.role, "content": [part]}
            if turn.item_id:
                item["id"] = turn.item_id  # the same ids as before, so later updates still find their turn
            events.append({"type": "conversation.item.create", "item": item})
        return events


def _new_turn(role: str, text: str, item_id: str | None, interrupted: bool, had_screenshot: bool,
              at: str | None = None) -> Turn:
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, not {role!r}")
    return Turn(role, text, at or datetime.now().astimezone().isoformat(timespec="seconds"), item_id,
                interrupted, had_screenshot)


def _parse(raw: bytes) -> list[Turn]:
    document = json.loads(raw.decode("utf-8"))
    if not isinstance(document, dict) or not isinstance(document.get("turns"), list):
        raise ValueError("not a history file")
    if document.get("version") != FORMAT_VERSION:
        raise ValueError(f"unknown history format version {document.get('version')!r}")
    types = {f.name: f.type for f in fields(Turn)}
    turns = []
    for index, entry in enumerate(document["turns"]):
        if (not isinstance(entry, dict) or set(entry) != set(types) or entry["role"] not in ROLES
                or not all(_fits(entry[name], kind) for name, kind in types.items())):
            raise ValueError(f"turn {index} is malformed")
        turns.append(Turn(**entry))
    return turns


def _fits(value: object, kind: str) -> bool:
    if kind == "bool":
        return isinstance(value, bool)
    return isinstance(value, str) or (kind == "str | None" and value is None)
