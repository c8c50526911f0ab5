"""`confide bench --aec`: echo cancellation on open speakers, on the harness's two echo paths.

- loopback: PulseAudio's module-loopback from the speaker's monitor into the microphone, 60 ms late,
  6 dB down (a laptop hearing its own speakers);
- coloured: the same through a small, overdriven loudspeaker model (soft saturation like tanh at drive
  4, then a 250-5000 Hz Butterworth band-pass; LADSPA filters inside PulseAudio), at the speaker's full
  level: the nonlinear echo a linear filter cannot model fully.

On each: replies played to the end with nobody talking (every barge-in is a false one; ERLE), then a
person talking over replies as loud as the echo and 6 dB quieter (detection within 300 ms, and its
time). The top-level figures are the worse of the two paths.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from app.bench.desktop import SOURCE_ROOT, virtual_audio

TARGETS = {  # figure: (limit, "min" or "max"); reported, never asserted
    "erle_db": (35.0, "min"),
    "false_bargein_rate": (0.0, "max"),
    "doubletalk_detect_rate": (0.9, "min"),
}
WORST = {"erle_db": min, "false_bargein_rate": max, "doubletalk_detect_rate": min,
         "doubletalk_detect_ms_p50": max, "doubletalk_detect_rate_minus_6db": min,
         "doubletalk_detect_ms_p50_minus_6db": max, "aec_cpu_ms_per_10ms": max}


def _progress(text: str) -> None:
    import sys

    print(f"confide bench --aec: {text}", file=sys.stderr, flush=True)


def measure(replies: int, doubletalk_trials: int, work_dir, record_dir: Path | None = None) -> dict:
    """With `record_dir`, each path's echo-only frames are saved to record_dir/<path>.npz for
    `confide bench --aec-replay` (echo_recording.py)."""
    from app.bench import echo_trials

    load = round(os.getloadavg()[0], 2)
    _progress("synthesising replies and interruptions")
    script = echo_trials.synthesize_script(SOURCE_ROOT)
    if record_dir is not None:
        record_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    with virtual_audio(work_dir) as pulse:
        from tests.harness.echo_path import acoustic_echo, coloured_echo

        for name, path in (("loopback", lambda: acoustic_echo(pulse, latency_ms=60, gain_db=-6.0)),
                           ("coloured", lambda: coloured_echo(pulse, gain_db=0.0, drive=4.0))):
            _progress(f"{name} echo path: {replies} replies, {doubletalk_trials} × 2 double-talk trials")
            began = time.monotonic()
            record_to = None if record_dir is None else record_dir / f"{name}.npz"
            paths[name] = echo_trials.path_figures(
                echo_trials.measure_path(pulse, script, replies, doubletalk_trials, path(), record_to=record_to))
            if record_to is not None:
                _progress(f"{name} echo path: echo-only frames recorded in {record_to}")
            paths[name]["seconds"] = round(time.monotonic() - began, 1)
    results = {}
    for key, pick in WORST.items():
        values = [p[key] for p in paths.values() if p.get(key) is not None]
        results[key] = pick(values) if values else None
    results["false_barge_ins"] = sum(p["false_barge_ins"] for p in paths.values())
    results["replies"] = sum(p["replies"] for p in paths.values())
    results["paths"] = paths
    results["conditions"] = {
        "loopback": "module-loopback speaker monitor → microphone, 60 ms, -6 dB",
        "coloured": "soft saturation (tanh-like, drive 4), Butterworth 250-5000 Hz, 0 dB, 60 ms (LADSPA)",
        "replies": "natural speech: Piper (joe) and flite (slt, awb, rms)",
        "users": "flite and Piper, scaled to the echo's RMS at the microphone (equal) and 6 dB under it",
        "detect_within_ms": echo_trials.DETECT_WITHIN_S * 1000,
    }
    results["cpu_cores"] = os.cpu_count()
    results["load_average_1m_at_start"] = load
    results["targets"] = {
        name: {"limit": limit, "met": bool(results[name] is not None and
                                           (results[name] >= limit if kind == "min" else results[name] <= limit))}
        for name, (limit, kind) in TARGETS.items()}
    return results
