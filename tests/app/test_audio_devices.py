"""Device listing, hot-plug and the no-device case, on a real PulseAudio server through real PortAudio."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from app.audio import devices
from app.audio.capture import Microphone
from app.audio.playback import Speaker
from tests.harness.pulse import (  # noqa: F401  (pulse_audio is a pytest fixture)
    MIC,
    SPEAKER,
    PulseHarness,
    pulse_audio,
    report,
    sound_ms,
    wait_for,
)

ROOT = Path(__file__).resolve().parents[2]


def names(device_list):
    return [d.name for d in device_list]


def test_lists_the_virtual_mic_and_speaker_with_system_defaults(pulse_audio: PulseHarness):
    listed = devices.list_devices()
    by_name = {d.name: d for d in listed}
    assert by_name[SPEAKER].output_channels > 0 and by_name[SPEAKER].input_channels == 0
    assert by_name[MIC].input_channels > 0 and by_name[MIC].output_channels == 0
    assert all(d.default_rate > 0 and d.host_api for d in listed)
    assert SPEAKER in names(devices.output_devices()) and SPEAKER not in names(devices.input_devices())
    assert MIC in names(devices.input_devices()) and MIC not in names(devices.output_devices())
    # One default each way; PulseAudio's own defaults are spk and mic, reached through ALSA's `default`.
    assert sum(d.is_default_input for d in listed) == 1 and sum(d.is_default_output for d in listed) == 1
    assert devices.find_device("input").is_default_input
    assert devices.find_device("output").is_default_output
    assert devices.find_device("output", SPEAKER).name == SPEAKER
    assert devices.find_device("input", by_name[MIC].index).name == MIC


def test_an_unknown_device_name_gets_a_message_naming_the_ones_there(pulse_audio: PulseHarness):
    with pytest.raises(devices.AudioDeviceError) as caught:
        devices.find_device("output", "Studio Monitor 9000")
    message = str(caught.value)
    assert "'Studio Monitor 9000' is not connected" in message and f"'{SPEAKER}'" in message
    assert "\n" not in message


def test_hot_plugged_device_appears_after_refresh_and_goes_after_unplug(pulse_audio: PulseHarness):
    pulse_audio.add_sink("usb_headset")
    pulse_audio.add_source("usb_mic")
    listed = devices.refresh()
    assert "usb_headset" in names(d for d in listed if d.output_channels)
    assert "usb_mic" in names(d for d in listed if d.input_channels)
    pulse_audio.unplug("usb_headset")
    pulse_audio.unplug("usb_mic")
    listed = devices.refresh()
    assert "usb_headset" not in names(listed) and "usb_mic" not in names(listed)
    assert SPEAKER in names(listed) and MIC in names(listed)


def test_watcher_reports_plug_and_unplug(pulse_audio: PulseHarness):
    seen: list[list[str]] = []
    changed = threading.Event()

    def on_change(device_list):
        seen.append(names(device_list))
        changed.set()

    watcher = devices.DeviceWatcher(on_change, interval_s=0.1)
    watcher.start()
    try:
        began = time.monotonic()
        pulse_audio.add_sink("hdmi_out")
        assert changed.wait(5.0), "no on_change after a device was plugged in"
        report("watcher: plug noticed after", 1000 * (time.monotonic() - began), "ms")
        assert "hdmi_out" in seen[-1]
        changed.clear()
        pulse_audio.unplug("hdmi_out")
        assert changed.wait(5.0), "no on_change after a device was unplugged"
        assert "hdmi_out" not in seen[-1]
        changed.clear()
        time.sleep(0.5)  # polls with nothing changed must stay quiet
        assert not changed.is_set()
        # A poll that finds nothing new is a few stat calls, not a PortAudio re-initialisation.
        polls = 200
        began = time.perf_counter()
        for _ in range(polls):
            assert not watcher.check_now()
        report("watcher: idle poll", 1e6 * (time.perf_counter() - began) / polls, "us")
    finally:
        watcher.stop()


def test_refresh_keeps_a_running_mic_and_speaker_going(pulse_audio: PulseHarness):
    """Re-initialising PortAudio closes every stream; refresh() reopens ours, and a reply's accounting
    stays exact across it."""
    errors: list[str] = []
    chunks: list[int] = []
    mic = Microphone(on_audio=lambda chunk, at: chunks.append(len(chunk)), on_error=errors.append)
    speaker = Speaker(on_error=errors.append)
    assert mic.start() and speaker.start()
    try:
        tone = (0.3 * np.sin(2 * np.pi * 440 * np.arange(24_000 * 3) / 24_000)).astype(np.float32)
        with pulse_audio.record_speaker() as heard:
            speaker.push("r1", tone)
            speaker.finish("r1")
            time.sleep(0.5)
            pulse_audio.add_sink("dock_speaker")
            listed = devices.refresh()
            assert "dock_speaker" in names(listed)
            delivered = len(chunks)
            wait_for(lambda: len(chunks) > delivered + 20, 3.0, what="microphone audio after refresh")
            wait_for(lambda: speaker.playing is None, 5.0, what="the reply to finish")
            time.sleep(0.1)
        assert mic.running and speaker.running and not errors
        assert abs(speaker.played_ms("r1") - 3000) < 1
        # The stream drains before it closes and the reply goes on after it reopens: a gap of silence,
        # but no tone lost or doubled.
        loud = sound_ms(heard.audio())
        report("refresh: reply audio reaching the speaker", loud, "ms of 3000")
        assert abs(loud - 3000) <= 20  # a late block on a loaded machine may cost a few ms
    finally:
        mic.stop()
        speaker.stop()
        pulse_audio.unplug("dock_speaker")


def test_no_audio_device_at_all_is_a_clear_message():
    """No sound server and no sound card: PortAudio lists nothing. Runs in a fresh interpreter, which
    is how the app meets this (PortAudio's view is fixed at initialisation)."""
    code = """
from app.audio import devices
from app.audio.capture import Microphone
from app.audio.playback import Speaker
errors = []
assert devices.list_devices() == [], devices.list_devices()
try:
    devices.find_device("input")
except devices.AudioDeviceError as error:
    errors.append(str(error))
assert not Microphone(on_error=errors.append).start()
assert not Speaker(on_error=errors.append).start()
watcher = devices.DeviceWatcher(lambda found: None, interval_s=0.05)
watcher.start(); watcher.check_now(); watcher.stop()
print("\\n".join(errors))
"""
    env = {"PATH": "/usr/bin:/bin", "PULSE_SERVER": "unix:/nonexistent/pulse/native", "HOME": "/nonexistent",
           "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True,
                            timeout=60, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.strip().splitlines()
    assert lines == [
        "No microphone found: connect one, or check that the sound system is running.",
        "No microphone found: connect one, or check that the sound system is running.",
        "No speaker found: connect one, or check that the sound system is running.",
    ]
    assert "Traceback" not in result.stderr


def test_the_audio_package_imports_neither_qt_nor_the_engine():
    """app/audio talks to PortAudio only; the engine is reached through the protocol (DESIGN.md)."""
    code = """
import sys
import app.audio.capture, app.audio.devices, app.audio.playback, app.audio.voice_activity
print(sorted({name.split(".")[0] for name in sys.modules if name.split(".")[0] in ("PySide6", "engine")}))
"""
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60,
                            stdin=subprocess.DEVNULL, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]"
