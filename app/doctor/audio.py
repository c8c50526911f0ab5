"""Microphone and speaker: a device is there, it opens, and audio really flows through it.

The microphone is opened for half a second: a device that opens but delivers no frames (a stalled sound
server) or only exact zeros (muted, or a dead input) is reported, not just a missing one. The speaker
plays half a second of silence and must consume it.
"""

from __future__ import annotations

import threading
import time

import numpy as np

from app.doctor.result import Check, fail, ok, platform_text

LISTEN_S = 0.5
MIN_DELIVERED = 0.5  # of the frames the sample rate promises: less means the device is not really running


def _no_device_fix(noun: str) -> str:
    kind = "sources" if noun == "microphone" else "sinks"
    return platform_text(
        f"Connect a {noun}, then check that the sound server lists it: `pactl list short {kind}` (PulseAudio or "
        f"PipeWire; if pactl cannot connect, start it: `systemctl --user start pipewire-pulse` or `pulseaudio --start`). "
        f"Then pick it in Confide's Settings (Audio).",
        f"Connect a {noun} and make it the default in Settings → System → Sound; if Windows lists it, allow access: "
        f"Settings → Privacy & security → Microphone → \"Let desktop apps access your microphone\".",
        f"Connect a {noun} and choose it in System Settings → Sound; allow Confide in System Settings → "
        f"Privacy & Security → Microphone.",
    )


def _muted_fix() -> str:
    return platform_text(
        "Unmute the microphone and raise its level: `pactl set-source-mute @DEFAULT_SOURCE@ 0; pactl "
        "set-source-volume @DEFAULT_SOURCE@ 100%` (or the desktop's sound settings); a hardware mute switch "
        "or key does the same. Or pick another microphone in Confide's Settings (Audio).",
        "Unmute the microphone in Settings → System → Sound → Input, and check its privacy switch: Settings → "
        "Privacy & security → Microphone.",
        "Allow Confide in System Settings → Privacy & Security → Microphone (macOS sends silence until you do), "
        "and check the input level in System Settings → Sound → Input.",
    )


def _open_settings(kind: str, noun: str, device: str | None):
    """The device as the app would open it (mono where offered, else stereo, at its preferred rate), or
    the failed Check that says why there is none."""
    from app.audio.devices import AudioDeviceError, describe_error, find_device, preferred_rate, stream_channels

    try:
        found = find_device(kind, device)
    except AudioDeviceError as error:
        return fail(noun, str(error), _no_device_fix(noun))
    except Exception as error:  # PortAudio itself could not start
        return fail(noun, f"the audio system could not be read ({describe_error(error)})", _no_device_fix(noun))
    channels = stream_channels(found, kind)
    return found, channels, preferred_rate(found, kind, channels)


def check_microphone(device: str | None = None) -> Check:
    from app.audio.devices import describe_error, portaudio

    opened = _open_settings("input", "microphone", device)
    if isinstance(opened, Check):
        return opened
    found, channels, rate = opened
    sd = portaudio()
    blocks: list[np.ndarray] = []
    lock = threading.Lock()

    def callback(indata, frames, _time, _status) -> None:
        with lock:
            blocks.append(indata[:, 0].copy())

    try:
        with sd.InputStream(device=found.index, samplerate=rate, channels=channels, dtype="float32",
                            callback=callback):
            time.sleep(LISTEN_S)
    except Exception as error:
        return fail("microphone", f"{found.name} would not open: {describe_error(error)}",
                    _no_device_fix("microphone"))
    with lock:
        audio = np.concatenate(blocks) if blocks else np.zeros(0, np.float32)
    expected = int(rate * LISTEN_S)
    if audio.size < expected * MIN_DELIVERED:
        return fail("microphone", f"{found.name} opened but delivered {audio.size} of {expected} samples in "
                                  f"{LISTEN_S} s: it is not really running", _no_device_fix("microphone"))
    if not np.any(audio):
        return fail("microphone", f"{found.name} delivers only digital silence (every sample exactly zero): "
                                  "muted, switched off, or not allowed", _muted_fix())
    level = 20 * np.log10(max(float(np.sqrt(np.mean(audio ** 2))), 1e-9))
    return ok("microphone", f"{found.name}: {audio.size} samples in {LISTEN_S} s at {rate} Hz, level {level:.0f} dBFS")


def check_speaker(device: str | None = None) -> Check:
    from app.audio.devices import describe_error, portaudio

    opened = _open_settings("output", "speaker", device)
    if isinstance(opened, Check):
        return opened
    found, channels, rate = opened
    sd = portaudio()
    consumed = 0

    def callback(outdata, frames, _time, _status) -> None:
        nonlocal consumed
        outdata.fill(0)  # silence: a check should not startle anyone
        consumed += frames

    try:
        with sd.OutputStream(device=found.index, samplerate=rate, channels=channels, dtype="float32",
                             callback=callback):
            time.sleep(LISTEN_S)
    except Exception as error:
        return fail("speaker", f"{found.name} would not open: {describe_error(error)}", _no_device_fix("speaker"))
    expected = int(rate * LISTEN_S)
    if consumed < expected * MIN_DELIVERED:
        return fail("speaker", f"{found.name} opened but took {consumed} of {expected} samples in {LISTEN_S} s: "
                               "it is not really playing", _no_device_fix("speaker"))
    return ok("speaker", f"{found.name}: played {consumed} samples in {LISTEN_S} s at {rate} Hz")
