"""Settings on disk: defaults, round trips, every way a file can be wrong, and saves that are atomic."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import textwrap
import time
import tomllib

import pytest

from app import atomic_file as atomic_module
from app.settings import (AudioSettings, ConversationSettings, EngineSettings, HotkeySettings, Settings,
                          VoiceSettings, default_settings_path, load_settings, save_settings)


def custom_settings() -> Settings:
    return Settings(
        audio=AudioSettings(input_device='USB "Yeti" Mikrofon – Stereo', output_device=None),
        hotkeys=HotkeySettings(push_to_talk="<ctrl>+<shift>+p"),
        voice=VoiceSettings(name="amy", speed=1.25),
        conversation=ConversationSettings(hands_free=True, vad_sensitivity=0.8, silence_ms=500),
        engine=EngineSettings(url="ws://gpu-box:8000/v1/realtime", token="s3cret", llm="qwen2.5-coder-1.5b-instruct"),
    )


def test_missing_file_gives_the_defaults(tmp_path):
    settings, warnings = load_settings(tmp_path / "nope" / "settings.toml")
    assert settings == Settings() and warnings == []
    assert settings.hotkeys.toggle_window == "<ctrl>+<alt>+<space>"
    assert settings.conversation.silence_ms == 384 and settings.voice.name == "joe"


def test_default_path_is_in_the_platform_config_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    assert default_settings_path() == tmp_path / "confide" / "settings.toml"


def test_round_trip(tmp_path):
    path = tmp_path / "config" / "settings.toml"
    save_settings(custom_settings(), path)
    loaded, warnings = load_settings(path)
    assert warnings == []
    assert loaded == custom_settings()
    assert loaded.audio.output_device is None  # absent in the file (TOML has no null), None again on load


def test_saved_file_is_plain_toml_readable_by_the_user_alone(tmp_path):
    path = tmp_path / "settings.toml"
    save_settings(custom_settings(), path)
    document = tomllib.loads(path.read_text(encoding="utf-8"))
    assert document["voice"] == {"name": "amy", "speed": 1.25}
    assert document["engine"]["url"] == "ws://gpu-box:8000/v1/realtime"
    assert "output_device" not in document["audio"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600  # it may hold the engine token
    assert [p.name for p in tmp_path.iterdir()] == ["settings.toml"]  # no temp file left behind


def test_bad_values_fall_back_to_their_defaults_with_a_warning_each(tmp_path):
    path = tmp_path / "settings.toml"
    path.write_text(textwrap.dedent("""
        [voice]
        name = "amy"
        speed = "fast"
        [conversation]
        hands_free = 1
        vad_sensitivity = 3.5
        silence_ms = 500.5
        [audio]
        input_device = 7
        [engine]
        url = "ws://box:1/v1/realtime"
    """))
    settings, warnings = load_settings(path)
    assert settings.voice == VoiceSettings(name="amy", speed=1.0)
    assert settings.conversation == ConversationSettings()
    assert settings.audio.input_device is None
    assert settings.engine.url == "ws://box:1/v1/realtime"  # the good values still count
    assert len(warnings) == 5
    for name in ("voice.speed", "conversation.hands_free", "conversation.vad_sensitivity",
                 "conversation.silence_ms", "audio.input_device"):
        assert any(w.startswith(f"{name} = ") for w in warnings), (name, warnings)
    assert any("voice.speed = 'fast' is not a float; using the default 1.0" in w for w in warnings), warnings
    assert any("outside 0.0–1.0" in w for w in warnings), warnings


def test_integers_are_accepted_for_floats(tmp_path):
    path = tmp_path / "settings.toml"
    path.write_text("[voice]\nspeed = 2\n")
    settings, warnings = load_settings(path)
    assert settings.voice.speed == 2.0 and isinstance(settings.voice.speed, float) and warnings == []


def test_unknown_keys_and_sections_are_ignored_with_a_warning(tmp_path):
    path = tmp_path / "settings.toml"
    path.write_text('theme = "dark"\n[voice]\nname = "amy"\npitch = 3\n[plugins]\nx = 1\n[hotkeys]\n')
    settings, warnings = load_settings(path)
    assert settings.voice.name == "amy"
    assert sorted(warnings) == ["unknown setting voice.pitch ignored", "unknown settings section [plugins] ignored",
                                "unknown settings section [theme] ignored"]


def test_a_section_that_is_not_a_table(tmp_path):
    path = tmp_path / "settings.toml"
    path.write_text('voice = "loud"\n')
    settings, warnings = load_settings(path)
    assert settings.voice == VoiceSettings()
    assert warnings == ["[voice] should be a table; using its defaults"]


@pytest.mark.parametrize("content", [b'[voice\nname = "amy"\n', b"\xff\xfe\x00garbage", b'[voice]\nname = "amy\n'])
def test_corrupt_file_gives_defaults_and_is_kept_aside(tmp_path, content):
    path = tmp_path / "settings.toml"
    path.write_bytes(content)
    settings, warnings = load_settings(path)
    assert settings == Settings()
    assert len(warnings) == 1 and "not valid TOML" in warnings[0] and "settings.toml.broken" in warnings[0]
    assert (tmp_path / "settings.toml.broken").read_bytes() == content
    assert not path.exists()
    save_settings(settings, path)  # the next save writes a good file again
    assert load_settings(path) == (Settings(), [])


def test_a_failed_replace_leaves_the_old_file_and_no_temp_file(tmp_path, monkeypatch):
    path = tmp_path / "settings.toml"
    save_settings(custom_settings(), path)
    good = path.read_bytes()

    def refuse(source, target):
        assert os.path.dirname(source) == str(tmp_path)  # the temp file sits beside the target (same filesystem)
        assert tomllib.loads(open(source, encoding="utf-8").read())  # and it is complete before the rename
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(atomic_module.os, "replace", refuse)
    with pytest.raises(OSError):
        save_settings(Settings(), path)
    assert path.read_bytes() == good
    assert [p.name for p in tmp_path.iterdir()] == ["settings.toml"]


# Writes trickle out in small flushed pieces, as on a slow disk, so that the kills land mid-write.
TRICKLE = """
import os
import time

class Trickle:
    def __init__(self, file):
        self.file = file
    def write(self, data):
        for start in range(0, len(data), 4096):
            self.file.write(data[start:start + 4096])
            self.file.flush()
            time.sleep(0.001)
    def __getattr__(self, name):
        return getattr(self.file, name)
    def __enter__(self):
        return self
    def __exit__(self, *exc):
        self.file.close()

real_fdopen = os.fdopen
os.fdopen = lambda *args, **kwargs: Trickle(real_fdopen(*args, **kwargs))
"""

WRITER = TRICKLE + """
import sys
from pathlib import Path
from app.settings import Settings, VoiceSettings, save_settings

path = Path(sys.argv[1])
# Two versions, each large enough that a save takes many write calls' worth of bytes.
versions = [Settings(voice=VoiceSettings(name=letter * 200_000)) for letter in "ab"]
print("ready", flush=True)
n = 0
while True:
    save_settings(versions[n % 2], path)
    n += 1
"""


def test_a_writer_killed_mid_save_never_leaves_a_half_written_file(tmp_path):
    path = tmp_path / "settings.toml"
    save_settings(Settings(voice=VoiceSettings(name="a" * 200_000)), path)
    mid_write_kills = 0
    for attempt in range(15):
        writer = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE,
                                  cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
        assert writer.stdout.readline() == b"ready\n"
        time.sleep(0.05 + 0.013 * attempt)  # a different moment of the save each time
        writer.send_signal(signal.SIGKILL)
        writer.wait()
        leftovers = [p.name for p in tmp_path.iterdir() if p.name != "settings.toml"]
        assert all(name.startswith(".settings.toml.") and name.endswith(".tmp") for name in leftovers)
        mid_write_kills += bool(leftovers)  # a temp file left behind: this kill landed mid-write
        settings, warnings = load_settings(path)
        assert warnings == [], warnings
        assert settings.voice.name in ("a" * 200_000, "b" * 200_000)
    assert mid_write_kills >= 5, mid_write_kills  # proof the kills hit saves
    assert [p.name for p in tmp_path.iterdir()] == ["settings.toml"]  # loading cleared the crash leftovers
