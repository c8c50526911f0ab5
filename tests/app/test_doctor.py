"""`confide doctor` on the harness: the real command in its own process, against a real X display with a tray
host, real PulseAudio devices, the real model files and the real engine. A healthy harness passes; a missing
microphone, a damaged model file and a missing display each fail with the right words and fix.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from app.doctor.hotkeys import check_hotkeys
from app.doctor.result import FAIL, OK, WARN
from app.doctor.screen import check_screen
from tests.harness.pulse import pulse_audio  # noqa: F401 (a fixture)

REPO = Path(__file__).resolve().parents[2]
LLM = "qwen2.5-coder-0.5b-instruct"
LLM_FILE = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"


def doctor(env: dict[str, str], *args: str, timeout: float = 300) -> tuple[int, dict]:
    result = subprocess.run([sys.executable, "-m", "app.main", "doctor", "--json", *args], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    try:
        report = json.loads(result.stdout)
    except ValueError:
        raise AssertionError(f"no JSON from doctor (exit {result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result.returncode, report


def by_name(report: dict) -> dict[str, list[dict]]:
    found: dict[str, list[dict]] = {}
    for check in report["checks"]:
        found.setdefault(check["name"], []).append(check)
    return found


@pytest.fixture
def desktop_env(x_display, pulse_audio, tmp_path) -> dict[str, str]:
    """The harness's display and sound server, and a fresh user's settings (the model cache is the shared one)."""
    env = {key: value for key, value in pulse_audio.client_env.items() if key not in ("DBUS_SESSION_BUS_ADDRESS",
                                                                                       "WAYLAND_DISPLAY")}
    env.update(DISPLAY=x_display.name, QT_QPA_PLATFORM="xcb", XDG_SESSION_TYPE="x11")
    for name in ("XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_STATE_HOME"):
        env[name] = str(tmp_path / name.lower())
    return env


@pytest.mark.slow
def test_a_healthy_desktop_passes_every_check(desktop_env, pulse_audio):
    # A real microphone always hears some noise; the harness's is exact zeros unless something plays into it.
    noise = np.random.default_rng(0).normal(0, 0.003, 24_000 * 120).astype(np.float32)
    feed = pulse_audio.feed_mic(noise, 24_000)
    try:
        code, report = doctor(desktop_env)
    finally:
        feed.stop()
    checks = by_name(report)
    assert code == 0 and report["exit_code"] == 0, json.dumps(report, indent=1)
    assert set(checks) == {"microphone", "speaker", "hotkeys", "screen", "models", "engine", "round trip"}
    assert all(check["status"] == OK for check in report["checks"]), json.dumps(report, indent=1)
    assert "samples in 0.5 s" in checks["microphone"][0]["summary"]
    assert "RECORD" in checks["hotkeys"][0]["summary"]
    assert "1920×1080" in checks["screen"][0]["summary"]
    assert "match their SHA-256" in checks["models"][0]["summary"]
    assert "a spoken reply" in checks["round trip"][0]["summary"]
    print(f"\ndoctor, every check: {report['seconds']} s")


def test_no_microphone_at_all_fails_with_how_to_connect_one(desktop_env, pulse_audio):
    pulse_audio.unplug_everything()  # PulseAudio with no source (and so no sink: each has a monitor source)
    try:
        code, report = doctor(desktop_env, "--check", "microphone", timeout=60)
    finally:
        pulse_audio.restore()
    (check,) = report["checks"]
    assert code == 1 and check["status"] == FAIL, check
    # Whichever way PortAudio sees it (no input device, or one that will not open or run), the fix is the same.
    assert any(words in check["summary"] for words in ("No microphone", "would not open", "not really running")), check
    assert "pactl list short sources" in check["fix"] and "Settings (Audio)" in check["fix"]


def test_a_silent_microphone_is_reported_as_muted(desktop_env, pulse_audio):
    code, report = doctor(desktop_env, "--check", "microphone", timeout=60)  # nothing plays into it: exact zeros
    (check,) = report["checks"]
    assert code == 1 and check["status"] == FAIL and "digital silence" in check["summary"], check
    assert "set-source-mute @DEFAULT_SOURCE@ 0" in check["fix"]


@pytest.mark.slow
def test_a_damaged_model_file_fails_with_the_fix_and_the_fix_works(tmp_path):
    cache = tmp_path / "models"
    damaged = cache / LLM / LLM_FILE
    damaged.parent.mkdir(parents=True)
    damaged.write_bytes(b"\0" * 4096)  # the assembled copy, cut short and zeroed
    env = {**os.environ, "CONFIDE_MODELS_DIR": str(cache)}
    code, report = doctor(env, "--check", "models")
    failures = [check for check in report["checks"] if check["status"] == FAIL]
    assert code == 1 and len(failures) == 1, json.dumps(report, indent=1)
    assert f"{LLM}: {damaged} is damaged (is 4096 bytes, expected" in failures[0]["summary"]
    assert f"rm '{damaged}'" in failures[0]["fix"]

    damaged.unlink()  # following the fix
    code, report = doctor(env, "--check", "models")
    assert code == 0 and [c["status"] for c in report["checks"]] == [OK], report


def test_no_display_fails_screen_and_hotkeys_with_what_to_do(tmp_path):
    env = {key: value for key, value in os.environ.items() if key not in ("DISPLAY", "WAYLAND_DISPLAY")}
    env["XDG_SESSION_TYPE"] = "tty"
    code, report = doctor(env, "--check", "screen", "--check", "hotkeys", timeout=60)
    checks = by_name(report)
    assert code == 1
    assert checks["screen"][0]["status"] == FAIL and "DISPLAY is not set" in checks["screen"][0]["summary"]
    assert "desktop session" in checks["screen"][0]["fix"] and "Xvfb" in checks["screen"][0]["fix"]
    assert checks["hotkeys"][0]["status"] == FAIL and "no X display" in checks["hotkeys"][0]["summary"]
    assert "confide --toggle" in checks["hotkeys"][0]["fix"]


def test_a_display_without_record_fails_hotkeys_with_the_extension_named(no_record_display):
    check = check_hotkeys({"DISPLAY": no_record_display.name}, "linux")
    assert check.status == FAIL and "RECORD" in check.summary and 'Load "record"' in check.fix


def test_wayland_and_macos_are_warnings_with_commands_to_bind():
    wayland = check_hotkeys({"WAYLAND_DISPLAY": "wayland-0", "XDG_SESSION_TYPE": "wayland"}, "linux")
    assert wayland.status == WARN and "confide --toggle" in wayland.fix
    assert check_screen({"WAYLAND_DISPLAY": "wayland-0"}, "linux").status == WARN  # no XWayland


def test_usage_errors_exit_2():
    result = subprocess.run([sys.executable, "-m", "app.main", "doctor", "--check", "teapot"], cwd=REPO,
                            capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert result.returncode == 2 and "invalid choice" in result.stderr
