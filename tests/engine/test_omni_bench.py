"""A reduced `confide-engine bench --backend omni --json` on the tiny Qwen2.5-Omni: the real benchmark
(engine in its own process, spoken prompts in real time over the WebSocket, a cancel, the per-stage figures
and the non-streaming baseline), cut to two prompts and short replies so it fits in the test budget."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# The keys the embedded benchmark reports (engine/bench/command.py), which the omni one must keep.
EMBEDDED_KEYS = {
    "eos_to_first_audio_ms_p50", "eos_to_first_audio_ms_p95", "eos_to_speech_stopped_ms_p50",
    "reply_stall_ms_p50", "reply_stall_ms_p95", "cancel_to_last_delta_ms_p50", "cancel_to_last_delta_ms_p95",
    "cancel_to_done_ms_p50", "peak_rss_mb", "cold_start_s", "model", "silence_duration_ms", "prompts", "cancels",
    "cpu_cores", "asr_rtf", "llm_prefill_tok_s", "llm_decode_tok_s", "tts_first_chunk_ms_p50",
    "baseline_eos_to_first_audio_ms_p50", "baseline_eos_to_first_audio_ms_p95", "baseline_parts",
    "speedup_vs_baseline", "turns",
}


def test_reduced_omni_bench_reports_the_engine_keys_and_the_omni_figures(tmp_path):
    command = [sys.executable, "-m", "engine", "bench", "--backend", "omni", "--omni-model", "tiny", "--json",
               "--prompts", "2", "--cancels", "1", "--omni-max-tokens", "12", "--omni-max-speech-s", "2",
               "--engine-log", str(tmp_path / "engine.log")]
    out = subprocess.run(command, capture_output=True, text=True, timeout=400, cwd=ROOT,
                         env={**os.environ, "CONFIDE_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-3000:]
    figures = json.loads(out.stdout)
    assert EMBEDDED_KEYS | {"first_audio_chunk_ms", "rtf", "vram_mb"} <= set(figures)
    assert figures["model"].startswith("confide-omni/") and figures["prompts"] == 2
    assert 0 < figures["eos_to_first_audio_ms_p50"] < 5000
    assert 0 < figures["first_audio_chunk_ms"] < figures["baseline_eos_to_first_audio_ms_p50"]
    assert figures["rtf"] > 0 and figures["tts_first_chunk_ms_p50"] > 0
    assert figures["vram_mb"] is None  # CPU here; a CUDA run reports its peak
    assert 0 < figures["asr_rtf"] < 1  # Whisper transcribes the prompts beside the model (on by default)
    assert all(turn["reply_audio_s"] > 0 for turn in figures["turns"])
