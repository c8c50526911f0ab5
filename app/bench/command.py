"""`confide bench [--json]`: the real app, in this process, timed as a person would feel it.

The app is assembled as `confide` assembles it (ConfideApp with its engine subprocess, real PortAudio
streams, global hotkeys, tray and window) on the test harness's virtual desktop: Xvfb with a tray host
and PulseAudio with a virtual microphone and speaker. In order:

1. idle CPU in push-to-talk mode, with the event loop left alone, once the audio streams rest;
2. global hotkey → window on screen, the keys coming from the X server;
3. hands-free: CPU while listening to silence, then spoken prompts timed from the end of speech at the
   microphone to the reply's first sound at the speaker;
4. barge-in: speech over long typed replies, timed from its onset at the microphone to the reply's last
   sound at the speaker;
5. screen questions: known text on screen, the spoken question, its reply's first sound and its answer;
6. optionally (`--engine-bench`), with the app stopped, `confide-engine bench` for the engine's own figure.

`--soak` measures something else: an hour of conversation simulated at accelerated time, for memory
growth and latency drift (app/bench/soak.py says what is real and what is accelerated). `--aec` measures
echo cancellation on open speakers (app/bench/aec.py); `--aec-replay` judges the barge-in detector's
second ear offline, on frames an `--aec --aec-record` run kept (app/bench/echo_replay.py).

CPU and memory are the app process's own (this process), never the engine's, which is reported apart.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from app.bench.desktop import SOURCE_ROOT, DesktopUnavailable, load_harness, virtual_desktop
from app.bench.figures import difference, p50, p95
from app.bench.process_load import CpuWindow, engine_child_pid, memory_mb

ENGINE_READY_TIMEOUT_S = 300.0
SETTLE_S = 2.0  # after start (or a mode change), before an idle measurement: warm-up chatter dies down
# The spoken interruptions: several phrasings, every test voice.
INTERJECTIONS = ("Wait, stop, that is enough.", "Hold on a second.", "Sorry, can I ask something else?",
                 "Okay, thank you, stop there.", "No no, wait.")
TARGETS = {  # figure: upper limit; reported, never asserted
    "hotkey_to_window_ms_p50": 50,
    "bargein_to_silence_ms_p95": 150,
    "eos_to_first_sound_over_engine_ms": 100,
    "app_idle_cpu_percent": 2,
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="confide bench",
        description="Measure the real app on a virtual desktop (a developer tool: needs a source checkout "
                    "set up by ./dev test).")
    parser.add_argument("--json", action="store_true", help="print one JSON object (default: a readable summary)")
    parser.add_argument("--prompts", type=int, default=12, help="spoken prompts in one conversation (default 12)")
    parser.add_argument("--bargeins", type=int, default=20, help="interrupted replies (default 20)")
    parser.add_argument("--hotkeys", type=int, default=20, help="hotkey presses (default 20)")
    parser.add_argument("--screen-questions", type=int, default=3, help="questions about the screen (default 3)")
    parser.add_argument("--idle-seconds", type=float, default=10.0,
                        help="length of each CPU measurement, idle and listening (default 10)")
    parser.add_argument("--llm", help="language model id for the engine (default: the embedded default)")
    parser.add_argument("--engine-bench", action="store_true",
                        help="afterwards, run `confide-engine bench` for the engine's own figure to compare with")
    parser.add_argument("--work-dir", type=Path,
                        help="keep the run's settings, history and logs (engine, Xvfb, PulseAudio) here")
    parser.add_argument("--aec", action="store_true",
                        help="measure echo cancellation on open speakers instead (see app/bench/aec.py)")
    parser.add_argument("--aec-replies", type=int, default=50,
                        help="with --aec: echo-only replies per echo path (default 50; two paths)")
    parser.add_argument("--doubletalk", type=int, default=12,
                        help="with --aec: double-talk trials per level and echo path (default 12)")
    parser.add_argument("--aec-record", type=Path, metavar="DIR",
                        help="with --aec: save what the barge-in detector's second ear was fed over each echo "
                             "path's echo-only replies to DIR/<path>.npz, for --aec-replay")
    parser.add_argument("--aec-replay", type=Path, metavar="DIR",
                        help="instead of a run, replay the recordings in DIR through the second ear (EchoExcess) "
                             "offline, with no audio devices: false onsets and detection as JSON (see "
                             "app/bench/echo_replay.py)")
    parser.add_argument("--aec-replay-db", type=float, nargs="+", action="extend", metavar="DB",
                        help="with --aec-replay: the person's level against the echo's, in dB (default 0)")
    parser.add_argument("--aec-replay-set", action="append", metavar="NAME=VALUE",
                        help="with --aec-replay: override a constant of app/audio/echo_excess.py or "
                             "linear_echo.py, e.g. OVERESTIMATE=4 (repeatable)")
    parser.add_argument("--soak", action="store_true",
                        help="an hour of conversation at accelerated time instead: memory growth and latency "
                             "drift, first ten minutes against the last (see app/bench/soak.py)")
    parser.add_argument("--soak-minutes", type=float, default=60.0,
                        help="with --soak: simulated minutes of conversation (default 60)")
    parser.add_argument("--seed", type=int, default=7, help="with --soak: the script's and the replies' seed")
    parser.add_argument("-v", "--verbose", action="store_true", help="log the app's own messages")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for name in ("prompts", "bargeins", "hotkeys"):
        if getattr(args, name) < 1:
            print(f"confide bench: --{name} must be at least 1", file=sys.stderr)
            return 2
    misuse = _misused_aec_option(args)
    if misuse:
        print(f"confide bench: {misuse}", file=sys.stderr)
        return 2
    if args.aec_replay is not None:
        return _aec_replay(args)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    keep = args.work_dir is not None
    work_dir = args.work_dir or Path(tempfile.mkdtemp(prefix="confide-bench-"))
    try:
        if args.soak:
            from app.bench import soak

            results = soak.measure(args.soak_minutes, args.seed, work_dir, args.llm, _progress)
        elif args.aec:
            from app.bench import aec

            results = aec.measure(args.aec_replies, args.doubletalk, work_dir, args.aec_record)
        else:
            results = measure(args, work_dir)
    except DesktopUnavailable as error:
        print(f"confide bench: {error}", file=sys.stderr)
        return 2
    except Exception:
        print(f"confide bench: failed; the run's logs are in {work_dir}", file=sys.stderr)
        raise
    if not keep:
        shutil.rmtree(work_dir, ignore_errors=True)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for key, value in results.items():
            if not isinstance(value, (list, dict)):
                print(f"{key:42s} {value}")
    return 0


def _progress(text: str) -> None:
    print(f"confide bench: {text}", file=sys.stderr, flush=True)


def _misused_aec_option(args: argparse.Namespace) -> str:
    if args.aec_record is not None and not args.aec:
        return "--aec-record records an --aec run: add --aec"
    if args.aec_replay is not None and (args.aec or args.soak):
        return "--aec-replay replays recordings instead of a run: leave out --aec and --soak"
    if args.aec_replay is None and (args.aec_replay_db or args.aec_replay_set):
        return "--aec-replay-db and --aec-replay-set go with --aec-replay DIR"
    return ""


def _aec_replay(args: argparse.Namespace) -> int:
    """Replay needs neither the desktop nor a work folder; what is wrong with the input is one line."""
    from app.bench import echo_replay

    try:
        overrides = echo_replay.parse_overrides(args.aec_replay_set or [])
        recordings = echo_replay.load_recordings(args.aec_replay)
    except ValueError as error:
        print(f"confide bench: {error}", file=sys.stderr)
        return 2
    results = echo_replay.measure(recordings, args.aec_replay_db or [0.0], overrides, _progress)
    print(json.dumps(results, indent=2))
    return 0


def measure(args: argparse.Namespace, work_dir: Path) -> dict:
    load_at_start = round(os.getloadavg()[0], 2)
    import app.confide_app  # noqa: F401  (the app's own modules first: what the harness adds is measured apart)

    app_modules_mb = memory_mb()
    load_harness()
    harness_modules_mb = round(memory_mb() - app_modules_mb, 1)

    _progress("synthesising the spoken lines")
    from app.bench.screen_trials import FACTS
    from app.bench.spoken_lines import synthesize, voice_for

    interjections = [(INTERJECTIONS[i % len(INTERJECTIONS)], voice_for(i + 1)) for i in range(max(1, args.bargeins))]
    questions = [(FACTS[i % len(FACTS)].question, voice_for(i + 2)) for i in range(args.screen_questions)]
    script = synthesize(args.prompts, interjections + questions, SOURCE_ROOT)
    spoken_interjections, spoken_questions = script.lines[:len(interjections)], script.lines[len(interjections):]

    with virtual_desktop(work_dir) as desktop:
        results = _measure_app(args, desktop, script.prompts, script.long_requests, spoken_interjections,
                               spoken_questions)
    results["bench_harness_rss_mb"] = harness_modules_mb
    results["cpu_cores"] = os.cpu_count()
    results["load_average_1m_at_start"] = load_at_start

    engine = None
    if args.engine_bench:
        _progress("confide-engine bench, with the app stopped")
        from app.bench.engine_figure import engine_bench

        engine = engine_bench(SOURCE_ROOT, max(10, args.prompts), args.llm)
    _compare_with_engine(results, engine)
    results["targets"] = {name: {"limit": limit, "met": results.get(name) is not None and results[name] <= limit}
                          for name, limit in TARGETS.items()}
    return results


def _measure_app(args, desktop, prompts, long_requests, interjections, screen_lines) -> dict:
    from app.bench import barge_in_trials, hotkey_trials, screen_trials, spoken_turns
    from app.bench.app_probe import AppProbe
    from app.bench.event_loop import run_for, run_until
    from app.confide_app import ConfideApp
    from app.history import ConversationHistory
    from app.settings import Settings
    from app.standby import STANDBY_AFTER_S
    from app.state import AppState

    settings = Settings()
    if args.llm:
        settings.engine.llm = args.llm
    confide = ConfideApp(settings, ConversationHistory())
    probe = AppProbe(confide)
    pulse = desktop.pulse
    started = time.monotonic()
    confide.start()
    try:
        _progress("waiting for the engine")
        run_until(lambda: confide.controller.state in (AppState.IDLE, AppState.ERROR), ENGINE_READY_TIMEOUT_S,
                  "the engine to be ready")
        if confide.controller.state is AppState.ERROR:
            raise RuntimeError(f"the app could not start its engine: {probe.messages[-1:]}")
        ready_s = time.monotonic() - started
        engine_pid = engine_child_pid()

        _progress(f"idle CPU, push-to-talk ({args.idle_seconds:.0f} s)")
        # Idle as it is all day: after the first seconds the audio streams rest (app/standby.py).
        run_until(lambda: confide.standby.resting, STANDBY_AFTER_S + 10, "audio standby")
        run_for(SETTLE_S)
        idle = CpuWindow(engine_pid).start()
        run_for(args.idle_seconds)
        idle.stop()
        idle_rss = memory_mb()

        _progress(f"hotkey → window ({args.hotkeys} presses)")
        hotkeys = hotkey_trials.measure(confide, probe, desktop.qt_app, desktop.display.name, args.hotkeys)

        _progress(f"listening CPU, hands-free in silence ({args.idle_seconds:.0f} s)")
        confide.controller.set_hands_free(True)
        run_until(lambda: confide.controller.state is AppState.LISTENING, 10, "hands-free listening")
        run_for(SETTLE_S)
        listening = CpuWindow(engine_pid).start()
        run_for(args.idle_seconds)
        listening.stop()

        _progress(f"spoken prompts ({len(prompts)}, hands-free)")
        turns = spoken_turns.spoken_conversation(pulse, confide, probe, prompts)
        _progress(f"barge-ins ({args.bargeins})")
        cuts = barge_in_trials.barge_ins(pulse, confide, probe, long_requests, interjections, args.bargeins)
        screens = []
        if screen_lines:
            _progress(f"screen questions ({len(screen_lines)})")
            screens = screen_trials.screen_questions(pulse, confide, probe, screen_lines)
        end_rss, peak_rss = memory_mb(), memory_mb("VmHWM")
    finally:
        confide.shutdown()
    return _figures(hotkeys, turns, cuts, screens, idle, listening, idle_rss, end_rss, peak_rss, ready_s,
                    probe.engine_model)


def _figures(hotkeys, turns, cuts, screens, idle, listening, idle_rss, end_rss, peak_rss, ready_s, model) -> dict:
    from app.bench.hotkey_trials import INPUT_METHOD

    to_window = [h.to_window_ms for h in hotkeys]
    first_sound = [t.eos_to_first_sound_ms for t in turns]
    first_delta = [t.eos_to_first_delta_ms for t in turns]
    playback = [difference(t.eos_to_first_sound_ms, t.eos_to_first_delta_ms) for t in turns]
    measured_cuts = [c for c in cuts if c.onset_to_silence_ms is not None]
    screen_sound = [s.turn.eos_to_first_sound_ms for s in screens]
    return {
        "hotkey_to_window_ms_p50": p50(to_window),
        "hotkey_to_window_ms_p95": p95(to_window),
        "hotkey_to_handler_ms_p50": p50([h.to_handler_ms for h in hotkeys]),
        "hotkey_input": INPUT_METHOD,
        "hotkey_misses": sum(h.to_window_ms is None for h in hotkeys),
        "eos_to_first_sound_ms_p50": p50(first_sound),
        "eos_to_first_sound_ms_p95": p95(first_sound),
        "eos_to_first_delta_ms_p50": p50(first_delta),
        "eos_to_first_delta_ms_p95": p95(first_delta),
        "first_delta_to_first_sound_ms_p50": p50(playback),
        "first_delta_to_first_sound_ms_p95": p95(playback),
        "prompts_unanswered": sum(not t.replied for t in turns),
        "prompts_answered_early": sum(t.premature for t in turns),
        "bargein_to_silence_ms_p50": p50([c.onset_to_silence_ms for c in measured_cuts]),
        "bargein_to_silence_ms_p95": p95([c.onset_to_silence_ms for c in measured_cuts]),
        "bargein_to_detection_ms_p50": p50([c.onset_to_detection_ms for c in measured_cuts]),
        "bargein_to_detection_ms_p95": p95([c.onset_to_detection_ms for c in measured_cuts]),
        "bargein_fired": sum(c.fired for c in cuts),
        "bargein_reply_over_first": sum(not c.reply_playing for c in cuts),
        "screen_question_to_first_sound_ms_p50": p50(screen_sound),
        "screen_question_to_first_sound_ms_p95": p95(screen_sound),
        "screen_answers_mentioning_text": sum(s.mentions_fact for s in screens),
        "app_idle_cpu_percent": idle.app_percent,
        "app_listening_cpu_percent": listening.app_percent,
        "app_idle_cpu_percent_by_thread": idle.app_percent_by_thread,
        "app_listening_cpu_percent_by_thread": listening.app_percent_by_thread,
        "engine_idle_cpu_percent": idle.engine_percent,
        "engine_listening_cpu_percent": listening.engine_percent,
        "app_rss_mb": idle_rss,
        "app_rss_mb_at_end": end_rss,
        "app_peak_rss_mb": peak_rss,
        "app_ready_s": round(ready_s, 2),
        "engine_model": model,
        "trials": {"hotkeys": len(hotkeys), "prompts": len(turns), "bargeins": len(cuts),
                   "bargeins_measured": len(measured_cuts), "screen_questions": len(screens)},
        "turns": [asdict(t) for t in turns],
        "bargeins": [asdict(c) for c in cuts],
        "screen_answers": [{"shown": s.shown, "answer": s.answer, "mentions_text": s.mentions_fact,
                            "eos_to_first_sound_ms": s.turn.eos_to_first_sound_ms} for s in screens],
    }


def _compare_with_engine(results: dict, engine: dict | None) -> None:
    """How much the app adds to the engine's end-of-speech → first-audio: against a fresh engine bench
    when one ran, else against the first audio delta reaching the app in this same run."""
    if engine is not None:
        results["engine_bench_eos_to_first_audio_ms_p50"] = engine["eos_to_first_audio_ms_p50"]
        results["engine_bench_eos_to_first_audio_ms_p95"] = engine["eos_to_first_audio_ms_p95"]
        reference, source = engine["eos_to_first_audio_ms_p50"], "confide-engine bench, fresh"
    else:
        reference, source = results["eos_to_first_delta_ms_p50"], "first audio delta at the app, same run"
    results["eos_to_first_sound_over_engine_ms"] = difference(results["eos_to_first_sound_ms_p50"], reference)
    results["engine_figure_source"] = source
