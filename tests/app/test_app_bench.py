"""`confide bench`: a real but reduced run of the whole benchmark (its own display, PulseAudio, app and
engine, in a process of its own as a person would run it), checked for every figure and sane values.
Timing targets are the benchmark's to report, never asserted here: the machines are shared and noisy."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from app.bench.hotkey_trials import keysyms_of
from app.bench.sound_edges import first_sound, last_sound, speech_end, speech_start
from tests.harness.pulse import Recording
from tests.harness.xdo import REPOSITORY

REDUCED_RUN = ["--prompts", "3", "--bargeins", "3", "--hotkeys", "5", "--idle-seconds", "3",
               "--screen-questions", "1"]

TIMINGS_MS = ("hotkey_to_window_ms_p50", "hotkey_to_window_ms_p95", "hotkey_to_handler_ms_p50",
              "eos_to_first_sound_ms_p50", "eos_to_first_sound_ms_p95", "eos_to_first_delta_ms_p50",
              "eos_to_first_delta_ms_p95", "first_delta_to_first_sound_ms_p50", "first_delta_to_first_sound_ms_p95",
              "bargein_to_silence_ms_p50", "bargein_to_silence_ms_p95", "bargein_to_detection_ms_p50",
              "screen_question_to_first_sound_ms_p50", "screen_question_to_first_sound_ms_p95")
CPU_PERCENTS = ("app_idle_cpu_percent", "app_listening_cpu_percent", "engine_idle_cpu_percent",
                "engine_listening_cpu_percent")
MEMORY_MB = ("app_rss_mb", "app_rss_mb_at_end", "app_peak_rss_mb")
COUNTS = ("hotkey_misses", "prompts_unanswered", "prompts_answered_early", "bargein_fired",
          "bargein_reply_over_first", "screen_answers_mentioning_text")


@pytest.fixture(scope="module")
def bench_figures():
    result = subprocess.run([sys.executable, "-m", "app", "bench", "--json", *REDUCED_RUN], cwd=REPOSITORY,
                            env=dict(os.environ), stdin=subprocess.DEVNULL, capture_output=True, text=True,
                            timeout=1200)
    if result.returncode == 2 and "./dev test" in result.stderr:
        pytest.skip(result.stderr.strip())  # a failure in CI (see tests/conftest.py)
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout)


@pytest.mark.slow
def test_a_reduced_run_reports_every_figure_with_sane_values(bench_figures):
    figures = bench_figures
    missing = [key for key in (*TIMINGS_MS, *CPU_PERCENTS, *MEMORY_MB, *COUNTS, "trials", "engine_model",
                               "cpu_cores", "app_ready_s", "eos_to_first_sound_over_engine_ms", "targets")
               if key not in figures]
    assert not missing, missing

    trials = figures["trials"]
    # A reply that ends before the interruption is retried, up to twice the trials asked for.
    assert 3 <= trials["bargeins"] <= 6 and trials["bargeins_measured"] <= trials["bargeins"]
    assert {k: trials[k] for k in ("hotkeys", "prompts", "screen_questions")} == {"hotkeys": 5, "prompts": 3,
                                                                              "screen_questions": 1}
    assert figures["cpu_cores"] == os.cpu_count()
    assert figures["engine_model"].startswith("confide-")
    assert 0 < figures["app_ready_s"] < 300

    # Whatever was measured is a positive time below any timeout; a p95 is never below its median.
    for key in TIMINGS_MS:
        assert figures[key] is None or 0 < figures[key] < 90_000, (key, figures[key])
    for name in ("hotkey_to_window_ms", "eos_to_first_sound_ms", "bargein_to_silence_ms"):
        assert figures[f"{name}_p50"] is not None, name
        assert figures[f"{name}_p95"] >= figures[f"{name}_p50"], name
    assert figures["hotkey_to_handler_ms_p50"] <= figures["hotkey_to_window_ms_p95"]

    for key in CPU_PERCENTS:
        assert figures[key] is not None and 0 <= figures[key] <= 100 * os.cpu_count(), (key, figures[key])
    # Idle, the audio streams rest and hardly a thread wakes; listening, the capture path must show.
    assert figures["app_listening_cpu_percent_by_thread"], "no thread of the app used any CPU"
    for key in MEMORY_MB:
        assert 30 < figures[key] < 4000, (key, figures[key])

    for key in COUNTS:
        assert isinstance(figures[key], int) and figures[key] >= 0, key
    assert figures["hotkey_misses"] < 5
    assert figures["bargein_fired"] <= trials["bargeins"] and trials["bargeins_measured"] <= figures["bargein_fired"]
    assert len(figures["turns"]) == 3 and all(turn["replied"] for turn in figures["turns"])
    assert len(figures["screen_answers"]) == 1 and figures["screen_answers"][0]["answer"]
    assert set(figures["targets"]) == {"hotkey_to_window_ms_p50", "bargein_to_silence_ms_p95",
                                       "eos_to_first_sound_over_engine_ms", "app_idle_cpu_percent"}


@pytest.mark.slow
def test_a_reduced_echo_cancellation_run_reports_every_figure_for_both_echo_paths():
    result = subprocess.run([sys.executable, "-m", "app", "bench", "--aec", "--json", "--aec-replies", "2",
                             "--doubletalk", "1"], cwd=REPOSITORY, env=dict(os.environ), stdin=subprocess.DEVNULL,
                            capture_output=True, text=True, timeout=900)
    if result.returncode == 2 and "./dev test" in result.stderr:
        pytest.skip(result.stderr.strip())  # a failure in CI (see tests/conftest.py)
    assert result.returncode == 0, result.stderr[-4000:]
    figures = json.loads(result.stdout)
    assert set(figures["paths"]) == {"loopback", "coloured"}
    for path in figures["paths"].values():
        assert path["replies"] == 2 and path["echo_rms_dbfs"] > -40, path  # the echo really came back
        assert path["erle_db"] is not None and path["erle_db"] > 6, path  # and was really cancelled
        assert 0 < path["aec_cpu_ms_per_10ms"] < 10, path
        assert abs(path["delay_drift_ppm"]) <= 2000 and path["reference_placements"] >= 1, path
        assert 3.0 <= path["excess_margin_db_after_echo_only"] <= 7.0, path  # as measured on that path
        # Where the app would have gone half-duplex: only after two false barge-ins in a row.
        assert path["half_duplex_at_reply"] == (2 if path["false_barge_ins"] == 2 else None), path
        for level in ("", "_minus_6db"):
            assert 0 <= path[f"doubletalk_detect_rate{level}"] <= 1
            each = path[f"doubletalk_detect_ms_each{level}"]
            assert len(each) == 1 and path[f"doubletalk_detect_rate{level}"] == (
                each[0] is not None and 0 <= each[0] <= 300), path
    for key in ("erle_db", "false_bargein_rate", "doubletalk_detect_rate", "doubletalk_detect_ms_p50",
                "doubletalk_detect_rate_minus_6db", "doubletalk_detect_ms_p50_minus_6db", "aec_cpu_ms_per_10ms"):
        assert key in figures, key
    assert figures["replies"] == 4 and set(figures["targets"]) == {"erle_db", "false_bargein_rate",
                                                                   "doubletalk_detect_rate"}


# --- the parts that need no desktop ----------------------------------------------------------------------


def test_hotkeys_in_the_settings_syntax_become_x_keysyms():
    assert keysyms_of("<ctrl>+<alt>+<space>") == ["Control_L", "Alt_L", "space"]
    assert keysyms_of("<ctrl>+<alt>+t") == ["Control_L", "Alt_L", "t"]
    assert keysyms_of("<shift>+<f5>") == ["Shift_L", "F5"]


def _recording(audio: np.ndarray, chunk: int = 480, start: float = 100.0) -> Recording:
    """A recording that arrived in chunks of `chunk` samples, each exactly on time."""
    recording = Recording("test")
    pcm = (np.clip(audio, -1, 1) * 32767).astype("<i2")
    for begin in range(0, len(pcm), chunk):
        piece = pcm[begin:begin + chunk]
        recording._add(piece.tobytes(), start + (begin + len(piece)) / recording.rate)
    return recording


def test_sound_edges_are_arrival_times_of_the_samples():
    rate = 48_000
    audio = np.zeros(rate, np.float32)
    audio[12_000:24_000] = 0.5  # speech from 0.25 s to 0.5 s
    audio[30_000] = 0.001  # a quiet sample: sound at the speaker, not speech at the microphone
    recording = _recording(audio)
    assert speech_start(recording) == pytest.approx(100.25)
    assert speech_end(recording) == pytest.approx(100.5 - 1 / rate)
    assert first_sound(recording) == pytest.approx(100.25)
    assert last_sound(recording) == pytest.approx(100.0 + 30_000 / rate)
    assert first_sound(recording, after=100.7) is None
    assert last_sound(recording, after=100.3) == pytest.approx(100.0 + 30_000 / rate)
