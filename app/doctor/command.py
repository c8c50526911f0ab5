"""`confide doctor [--check NAME ...] [--json]`: run the checks, print what is wrong and how to fix it.

Exit codes (for scripts): 0 every check passed (warnings, which Confide works around, are printed but
pass); 1 at least one check failed; 2 the command line was wrong.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable

from app.doctor.result import FAIL, OK, WARN, Check

EXIT_OK, EXIT_PROBLEMS, EXIT_USAGE = 0, 1, 2
CHECK_NAMES = ("microphone", "speaker", "hotkeys", "screen", "models", "engine")


def _runners(settings) -> dict[str, Callable[[], list[Check]]]:
    from app.doctor import audio, engine_check, hotkeys, models, screen

    return {
        "microphone": lambda: [audio.check_microphone(settings.audio.input_device)],
        "speaker": lambda: [audio.check_speaker(settings.audio.output_device)],
        "hotkeys": lambda: [hotkeys.check_hotkeys()],
        "screen": lambda: [screen.check_screen()],
        "models": lambda: [] if settings.engine.url else models.check_models(settings.engine.llm),
        "engine": lambda: engine_check.check_engine(settings.engine.llm, settings.engine.url, settings.engine.token),
    }


def run_checks(names: list[str], on_check: Callable[[Check], None] = lambda check: None) -> list[Check]:
    from app.settings import load_settings

    settings, _warnings = load_settings()
    runners = _runners(settings)
    results = []
    for name in names:
        try:
            found = runners[name]()
        except Exception as error:  # a check that breaks is a finding too, not a traceback
            found = [Check(name, FAIL, f"the check itself failed: {type(error).__name__}: {error}",
                           "Please report this, with the output of `confide doctor --json`.")]
        for check in found:
            on_check(check)
        results.extend(found)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="confide doctor", description="Check that Confide can work here; "
                                     "say what is wrong and how to fix it.", epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--check", action="append", choices=CHECK_NAMES,
                        help="run only this check (repeatable; default: all, in this order: " + ", ".join(CHECK_NAMES) + ")")
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout instead of text")
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:
        return EXIT_USAGE if exit_.code else EXIT_OK
    names = [name for name in CHECK_NAMES if name in (args.check or CHECK_NAMES)]
    started = time.monotonic()
    if not args.json:
        print("Confide doctor")
    results = run_checks(names, on_check=(lambda check: None) if args.json else _print_check)
    failed = [check for check in results if check.status == FAIL]
    code = EXIT_PROBLEMS if failed else EXIT_OK
    if args.json:
        print(json.dumps({"exit_code": code, "seconds": round(time.monotonic() - started, 1),
                          "checks": [check.__dict__ for check in results]}, indent=1))
    else:
        warned = sum(check.status == WARN for check in results)
        if failed:
            print(f"\n{len(failed)} problem{'s' if len(failed) > 1 else ''} found (exit code {code}).")
        else:
            print(f"\nAll good{f', with {warned} warning' + ('s' if warned > 1 else '') if warned else ''}.")
    return code


def _print_check(check: Check) -> None:
    label = {OK: "ok  ", WARN: "warn", FAIL: "FAIL"}[check.status]
    print(f"  {label}  {check.name:11} {check.summary}", flush=True)
    if check.fix:
        print(f"        {'':11} fix: {check.fix}", flush=True)
