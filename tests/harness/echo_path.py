"""An acoustic echo path on the PulseAudio harness: what the virtual speaker plays comes back into the
virtual microphone, late and quieter, the way a laptop hears its own speakers.

    with acoustic_echo(pulse_audio, latency_ms=60, gain_db=-6):       # PulseAudio module-loopback
    with coloured_echo(pulse_audio, gain_db=0, drive=4.0):            # a small speaker: band-limited,
                                                                      # saturating, late (LADSPA filters)
Both mix into the microphone's feed sink, so speech fed with `feed_mic` is heard over the echo (double
talk).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import numpy as np

from tests.harness.pulse import MIC_FEED, SPEAKER, PulseHarness
from tests.harness.xdo import wait_until


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


# LADSPA plugins (Debian's swh-plugins and ladspa-sdk) that module-ladspa-sink chains as filter sinks.
LADSPA_PLUGINS = {"foverdrive": "foverdrive_1196", "butthigh_iir": "butterworth_1902",
                  "buttlow_iir": "butterworth_1902", "amp_mono": "amp"}
LADSPA_DIR = "/usr/lib/ladspa"
LADSPA_APT = "swh-plugins ladspa-sdk"
DRIVE = 3.0  # foverdrive's most: 3x gain for quiet sound, softly limited to full scale


def _filter_sink(pulse: PulseHarness, name: str, master: str, label: str, controls: list[float]) -> str:
    return pulse.pactl("load-module", "module-ladspa-sink", f"sink_name={name}", f"sink_master={master}",
                       f"plugin={LADSPA_PLUGINS[label]}", f"label={label}", "channels=1",
                       "control=" + ",".join(f"{c:g}" for c in controls)).stdout.strip()


@contextlib.contextmanager
def coloured_echo(pulse: PulseHarness, gain_db: float = 0.0, drive: float = 4.0, low_hz: float = 250.0,
                  high_hz: float = 5000.0, latency_ms: int = 60) -> Iterator[None]:
    """The speaker's sound back into the microphone through a small, overdriven loudspeaker model:
    module-loopback into a chain of LADSPA filter sinks (soft saturation, 2nd-order Butterworth high- and
    low-pass, output gain) that ends in the microphone's feed. All of it runs inside PulseAudio on the
    sinks' one clock, so the echo path holds still (a path through a client process drifted ~0.3 ms/s
    and jumped whenever its writer ran dry).

    Saturation: quiet sound passes at unity gain and loud sound flattens toward 1/`drive` of full
    scale, like tanh(drive·x)/drive: the loopback's volume drives the plugin by drive/3 and the output
    gain takes back 1/drive."""
    missing = [f"{plugin}.so" for plugin in set(LADSPA_PLUGINS.values())
               if not os.path.exists(os.path.join(LADSPA_DIR, f"{plugin}.so"))]
    if missing:
        raise RuntimeError(f"missing LADSPA plugins {missing}; install: apt-get install -y {LADSPA_APT}")
    modules: list[str] = []
    try:
        chain = [("echo_gain", "amp_mono", [10 ** (gain_db / 20) / drive]),
                 ("echo_low", "buttlow_iir", [high_hz, 0.707]),
                 ("echo_high", "butthigh_iir", [low_hz, 0.707]),
                 ("echo_drive", "foverdrive", [DRIVE])]
        master = MIC_FEED
        for name, label, controls in chain:  # built from the microphone's end, each on the one before
            modules.append(_filter_sink(pulse, name, master, label, controls))
            master = name
        module_id = pulse.pactl("load-module", "module-loopback", f"source={SPEAKER}.monitor", f"sink={master}",
                                f"latency_msec={latency_ms}", "source_dont_move=true", "sink_dont_move=true",
                                "remix=true").stdout.strip()
        modules.append(module_id)
        wait_until(lambda: _loopback_input(pulse, module_id), timeout=5, what="the loopback's stream")
        pulse.pactl("--", "set-sink-input-volume", _loopback_input(pulse, module_id),
                    f"{20 * np.log10(drive / DRIVE):+.2f}dB")
        yield
    finally:
        for module in reversed(modules):
            pulse.pactl("unload-module", module, check=False)
