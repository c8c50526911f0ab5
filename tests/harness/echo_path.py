"""An acoustic echo path on the PulseAudio harness: what the virtual speaker plays comes back into the
virtual microphone, late and quieter, the way a laptop hears its own speakers.

    with acoustic_echo(pulse_audio, latency_ms=60, gain_db=-6):       # PulseAudio module-loopback
    with coloured_echo(pulse_audio, gain_db=0, drive=4.0):            # a small speaker: band-limited,
                                                                      # saturating (tanh), late
Both mix into the microphone's feed sink, so speech fed with `feed_mic` is heard over the echo (double
talk). `coloured_echo` runs the path through this process (parec → numpy → pacat), because PulseAudio
has no filter or distortion module without LADSPA plugins.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import threading
from collections.abc import Iterator

import numpy as np

from tests.harness.pulse import MIC_FEED, RATE, SPEAKER, PulseHarness
from tests.harness.xdo import DIE_WITH_PARENT, stop_process, wait_until


def _loopback_input(pulse: PulseHarness, module_id: str) -> str:
    """The sink input (stream into micfeed) that a loopback module owns."""
    for block in pulse.pactl("list", "sink-inputs").stdout.split("\n\n"):
        lines = [line.strip() for line in block.splitlines()]
        if f"Owner Module: {module_id}" in lines and lines[0].startswith("Sink Input #"):
            return lines[0].removeprefix("Sink Input #")
    return ""


@contextlib.contextmanager
def acoustic_echo(pulse: PulseHarness, latency_ms: int = 60, gain_db: float = -6.0) -> Iterator[None]:
    """module-loopback from the speaker's monitor into the microphone's feed, attenuated by `gain_db`."""
    module_id = pulse.pactl("load-module", "module-loopback", f"source={SPEAKER}.monitor", f"sink={MIC_FEED}",
                            f"latency_msec={latency_ms}", "source_dont_move=true", "sink_dont_move=true",
                            "remix=true").stdout.strip()
    try:
        wait_until(lambda: _loopback_input(pulse, module_id), timeout=5, what="the loopback's stream")
        # "--": a negative volume must not be read as an option.
        pulse.pactl("--", "set-sink-input-volume", _loopback_input(pulse, module_id), f"{gain_db:+.1f}dB")
        yield
    finally:
        pulse.pactl("unload-module", module_id, check=False)


def _band_pass(low_hz: float, high_hz: float, taps: int = 255) -> np.ndarray:
    """A windowed-sinc band-pass: a small speaker has no bass and little treble."""
    n = np.arange(taps) - (taps - 1) / 2
    high = 2 * high_hz / RATE * np.sinc(2 * high_hz / RATE * n)
    low = 2 * low_hz / RATE * np.sinc(2 * low_hz / RATE * n)
    return ((high - low) * np.blackman(taps)).astype(np.float32)


class _ColouredPath:
    BLOCK = RATE // 100

    def __init__(self, pulse: PulseHarness, gain_db: float, drive: float, low_hz: float, high_hz: float,
                 latency_ms: int):
        self._gain = np.float32(10 ** (gain_db / 20))
        self._drive = np.float32(drive)
        self._taps = _band_pass(low_hz, high_hz)
        self._history = np.zeros(len(self._taps) - 1, np.float32)
        env = pulse.client_env
        self._reader = subprocess.Popen(
            [*DIE_WITH_PARENT, "parec", "-d", f"{SPEAKER}.monitor", "--raw", "--format=float32le", f"--rate={RATE}",
             "--channels=1", f"--latency-msec={latency_ms // 2}"],
            env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        self._writer = subprocess.Popen(
            [*DIE_WITH_PARENT, "pacat", "--playback", "-d", MIC_FEED, "--raw", "--format=float32le",
             f"--rate={RATE}", "--channels=1", f"--latency-msec={latency_ms // 2}"],
            env=env, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self._thread = threading.Thread(target=self._run, name="coloured-echo", daemon=True)
        self._thread.start()

    def colour(self, block: np.ndarray) -> np.ndarray:
        padded = np.concatenate((self._history, block))
        self._history = padded[len(padded) - len(self._history):]
        filtered = np.convolve(padded, self._taps, mode="valid")
        # Saturation: a speaker driven into its limits; tanh(drive x) / drive keeps quiet parts linear.
        return (np.tanh(self._drive * filtered) / self._drive * self._gain).astype(np.float32)

    def _run(self) -> None:
        source, sink = self._reader.stdout.fileno(), self._writer.stdin
        leftover = b""
        while True:
            try:
                data = os.read(source, 4 * self.BLOCK)
            except OSError:
                return
            if not data:
                return
            data = leftover + data
            whole = len(data) - len(data) % 4
            leftover = data[whole:]
            try:
                sink.write(self.colour(np.frombuffer(data[:whole], "<f4")).astype("<f4").tobytes())
                sink.flush()
            except (BrokenPipeError, ValueError, OSError):
                return

    def stop(self) -> None:
        stop_process(self._reader)
        stop_process(self._writer)
        self._thread.join(timeout=2)


@contextlib.contextmanager
def coloured_echo(pulse: PulseHarness, gain_db: float = 0.0, drive: float = 4.0, low_hz: float = 250.0,
                  high_hz: float = 5000.0, latency_ms: int = 60) -> Iterator[None]:
    """The speaker's sound back into the microphone through a small, overdriven loudspeaker model."""
    path = _ColouredPath(pulse, gain_db, drive, low_hz, high_hz, latency_ms)
    try:
        yield
    finally:
        path.stop()
