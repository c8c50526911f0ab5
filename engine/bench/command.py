"""`confide-engine bench --json`: end-to-end latency over the real WebSocket, and the baseline it beats.

1. The engine starts as its own process (cold start and peak memory are measured on it).
2. Spoken prompts stream in real time, as from a microphone, through one conversation; each reply is
   timed from the true end of speech (known from the audio) to its first audio delta.
3. Long replies are interrupted; the time from `response.cancel` to the last delta still received is kept.
4. With the engine stopped (so nothing competes for the CPU), each model is measured alone, and the
   non-streaming baseline runs the same prompts through the same models.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
from pathlib import Path

from engine.bench.stats import p50, p95

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("bench", help="measure end-to-end latency and print the figures")
    parser.add_argument("--json", action="store_true", help="print one JSON object (default: a readable summary)")
    parser.add_argument("--prompts", type=int, default=12, help="spoken prompts (default 12, at least 10)")
    parser.add_argument("--cancels", type=int, default=12, help="interrupted replies (default 12)")
    parser.add_argument("--llm", help="language model id (default: the embedded default)")
    parser.add_argument("--backend", default="embedded", choices=("embedded", "omni"),
                        help="backend to measure (default: embedded)")
    from engine.realtime.serve_command import add_omni_arguments

    add_omni_arguments(parser)
    parser.add_argument("--silence-ms", type=int, default=None,
                        help="server_vad silence window to ask for (default: the engine's)")
    parser.add_argument("--no-baseline", action="store_true", help="skip the per-model figures and the baseline")
    parser.add_argument("--engine-log", type=Path, help="write the engine's log here (per-reply latency traces)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    logging.getLogger().setLevel(logging.WARNING)
    results = asyncio.run(_measure(args))
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for key, value in results.items():
            if key != "turns":
                print(f"{key:40s} {value}")
    return 0


async def _measure(args: argparse.Namespace) -> dict:
    from engine.bench.realtime_probe import RealtimeProbe
    from engine.bench.prompts import LONG_REQUESTS, speak_prompts
    from engine.bench.server_process import EngineProcess
    from engine.models.store import ModelStore
    from engine.realtime.session_config import TurnDetection
    from engine.runtime import inference_threads
    from engine.speech.tts import PiperTts

    store = ModelStore()
    voice = store.resolve("piper-joe-medium")
    prompt_voice = PiperTts(voice.file(voice.spec.files[0].name), inference_threads())
    # At least 10 for the default bench (its p95 needs them); the omni bench may be reduced (tests, slow GPUs).
    prompts = speak_prompts(prompt_voice, max(10, args.prompts) if args.backend == "embedded" else max(1, args.prompts))
    del prompt_voice
    silence_ms = args.silence_ms or TurnDetection().silence_duration_ms

    from engine.realtime.serve_command import omni_arguments

    engine_args = omni_arguments(args) if args.backend == "omni" else (["--llm", args.llm] if args.llm else [])
    engine = EngineProcess(engine_args, log_path=args.engine_log)
    try:
        turns, cancels = [], []
        async with RealtimeProbe(engine.url, engine.token, args.silence_ms) as probe:
            for prompt in prompts:
                turns.append(await probe.spoken_turn(prompt))
                await asyncio.sleep(0.3)
        async with RealtimeProbe(engine.url, engine.token) as probe:
            for index in range(args.cancels):
                listen_s = 0.2 + 0.1 * (index % 5)  # interrupt at different points of the reply
                timing = await probe.interrupted_reply(LONG_REQUESTS[index % len(LONG_REQUESTS)], listen_s)
                if timing is not None:
                    cancels.append(timing)
        peak_rss = engine.peak_rss_mb()
    finally:
        engine.stop()

    first_audio = [t.eos_to_first_audio_ms for t in turns]
    results: dict = {
        "eos_to_first_audio_ms_p50": p50(first_audio),
        "eos_to_first_audio_ms_p95": p95(first_audio),
        "eos_to_speech_stopped_ms_p50": p50([t.eos_to_speech_stopped_ms for t in turns]),
        "reply_stall_ms_p50": p50([t.stall_ms for t in turns]),
        "reply_stall_ms_p95": p95([t.stall_ms for t in turns]),
        "cancel_to_last_delta_ms_p50": p50([c.cancel_to_last_delta_ms for c in cancels]),
        "cancel_to_last_delta_ms_p95": p95([c.cancel_to_last_delta_ms for c in cancels]),
        "cancel_to_done_ms_p50": p50([c.cancel_to_done_ms for c in cancels]),
        "peak_rss_mb": peak_rss,
        "cold_start_s": round(engine.cold_start_s, 2),
        "model": engine.model,
        "silence_duration_ms": silence_ms,
        "prompts": len(turns),
        "cancels": len(cancels),
        "cpu_cores": os.cpu_count(),
        "backend": args.backend,
    }
    if not args.no_baseline:
        results.update(await asyncio.to_thread(_components, args, prompts, [t.answer for t in turns], silence_ms,
                                               results["eos_to_first_audio_ms_p50"]))
    results["turns"] = [t.__dict__ for t in turns]
    return results


def _components(args, prompts, answers, silence_ms, streaming_p50) -> dict:
    from engine.assembly import build_engine
    from engine.bench.components import measure
    from engine.models.store import ModelStore
    from engine.turns.vad import SileroVadModel

    if args.backend == "omni":
        return _omni_components(args, prompts, silence_ms, streaming_p50)
    engine = build_engine(llm=args.llm, warm_up=True)
    vad = SileroVadModel(ModelStore().resolve("silero-vad").file())
    figures = measure(engine.backend, vad, prompts, answers, silence_ms)
    engine.backend.close()
    baseline_p50 = p50(figures.baseline_eos_to_first_audio_ms)
    return {
        "asr_rtf": figures.asr_rtf,
        "llm_prefill_tok_s": figures.llm_prefill_tok_s,
        "llm_decode_tok_s": figures.llm_decode_tok_s,
        "tts_first_chunk_ms_p50": figures.tts_first_chunk_ms_p50,
        "baseline_eos_to_first_audio_ms_p50": baseline_p50,
        "baseline_eos_to_first_audio_ms_p95": p95(figures.baseline_eos_to_first_audio_ms),
        "baseline_parts": figures.baseline_parts_ms,
        "speedup_vs_baseline": round(baseline_p50 / streaming_p50, 2) if baseline_p50 and streaming_p50 else None,
    }



def _omni_components(args, prompts, silence_ms, streaming_p50) -> dict:
    from engine.assembly import build_engine
    from engine.bench.omni_components import measure_omni
    from engine.models.store import ModelStore
    from engine.realtime.serve_command import omni_settings
    from engine.turns.vad import SileroVadModel

    engine = build_engine("omni", warm_up=True, omni=omni_settings(args))
    vad = SileroVadModel(ModelStore().resolve("silero-vad").file())
    try:
        return measure_omni(engine.backend, vad, prompts, silence_ms, streaming_p50)
    finally:
        engine.backend.close()
