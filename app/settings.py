"""The app's settings, typed and in one place: a TOML file under the platform's config folder.

Loading never fails: a missing file gives the defaults, and anything wrong in it (an unknown key, a value
of the wrong type or out of range, a file that is not TOML at all) falls back to the default for what was
wrong and says so in a warning the app can show.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import platformdirs
import tomli_w

from app.atomic_file import keep_broken_file, remove_stale_temp_files, write_file_atomically


def _ranged(default: float, low: float, high: float) -> Any:
    return field(default=default, metadata={"range": (low, high)})


@dataclass
class AudioSettings:
    input_device: str | None = None  # None: the system's default device
    output_device: str | None = None
    # Hands-free on open speakers: the assistant's own voice is removed from the microphone (AEC3).
    echo_cancellation: bool = True
    noise_suppression: bool = False  # off: it blunts quiet speech, and Whisper copes with noise


@dataclass
class HotkeySettings:
    toggle_window: str = "<ctrl>+<alt>+<space>"
    push_to_talk: str = "<ctrl>+<alt>+t"
    ask_screen: str = "<ctrl>+<alt>+s"
    stop_speaking: str = "<ctrl>+<alt>+x"


@dataclass
class VoiceSettings:
    name: str = "joe"
    speed: float = _ranged(1.0, 0.5, 2.0)


@dataclass
class ConversationSettings:
    hands_free: bool = False
    vad_sensitivity: float = _ranged(0.5, 0.0, 1.0)
    silence_ms: int = _ranged(384, 100, 3000)
    instructions: str = ""  # how the assistant should answer; empty: the engine's own persona


@dataclass
class EngineSettings:
    url: str = ""  # empty: the app starts and supervises its own engine
    token: str = ""  # for a configured url; the file is written readable by the user alone
    llm: str = ""  # empty: the engine's default model


@dataclass
class Settings:
    audio: AudioSettings = field(default_factory=AudioSettings)
    hotkeys: HotkeySettings = field(default_factory=HotkeySettings)
    voice: VoiceSettings = field(default_factory=VoiceSettings)
    conversation: ConversationSettings = field(default_factory=ConversationSettings)
    engine: EngineSettings = field(default_factory=EngineSettings)


def default_settings_path() -> Path:
    return Path(platformdirs.user_config_dir("confide")) / "settings.toml"


def load_settings(path: Path | None = None) -> tuple[Settings, list[str]]:
    """The settings in `path` (default: the platform's config folder), and what was wrong with them."""
    path = Path(path) if path else default_settings_path()
    remove_stale_temp_files(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return Settings(), []
    except OSError as error:
        return Settings(), [f"could not read {path} ({error.strerror}); using the default settings"]
    try:
        document = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        return Settings(), [f"{path} is not valid TOML ({error}); using the default settings"
                            f"{keep_broken_file(path)}"]
    warnings: list[str] = []
    settings = Settings()
    known = {f.name: f for f in dataclasses.fields(Settings)}
    for section_name, table in document.items():
        if section_name not in known:
            warnings.append(f"unknown settings section [{section_name}] ignored")
        elif not isinstance(table, dict):
            warnings.append(f"[{section_name}] should be a table; using its defaults")
        else:
            _fill_section(getattr(settings, section_name), section_name, table, warnings)
    return settings, warnings


def _fill_section(section: Any, section_name: str, table: dict, warnings: list[str]) -> None:
    fields = {f.name: f for f in dataclasses.fields(section)}
    for key, value in table.items():
        name = f"{section_name}.{key}"
        spec = fields.get(key)
        if spec is None:
            warnings.append(f"unknown setting {name} ignored")
            continue
        problem = _problem_with(value, spec)
        if problem:
            warnings.append(f"{name} = {value!r} {problem}; using the default {getattr(section, key)!r}")
        else:
            setattr(section, key, float(value) if spec.type == "float" else value)


def _problem_with(value: Any, spec: dataclasses.Field) -> str | None:
    """Why `value` cannot go into the field, or None. Field types are strings (postponed annotations)."""
    kind = spec.type
    if kind == "bool":
        ok = isinstance(value, bool)
    elif kind == "int":
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind == "float":
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    else:  # str or str | None (TOML has no null: an absent key means None)
        ok = isinstance(value, str)
    if not ok:
        return f"is not a {kind.split(' ')[0]}"
    if "range" in spec.metadata:
        low, high = spec.metadata["range"]
        if not low <= value <= high:
            return f"is outside {low}–{high}"
    return None


def save_settings(settings: Settings, path: Path | None = None) -> None:
    """Write the settings atomically: a reader, or a crash at any moment, sees the old file or the new one."""
    path = Path(path) if path else default_settings_path()
    document = {name: {k: v for k, v in section.items() if v is not None}  # TOML has no null
                for name, section in dataclasses.asdict(settings).items()}
    write_file_atomically(path, tomli_w.dumps(document).encode("utf-8"))
