"""`confide-engine`: one entry point, one subcommand per job, each defined beside the code it drives."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from engine.runtime import limit_malloc_arenas

# ONNX Runtime (1.32 here) records usage telemetry on Linux and macOS too: a device id and a queue of events
# (OS, process path, models run) in ~/.cache/Microsoft/DeveloperTools, a session file in the temporary folder,
# for upload to Microsoft's collector when a network is there. The engine runs offline and reports to no one.
# The variable is read when the library loads, so it is set here, before any command imports it.
os.environ["ORT_DISABLE_TELEMETRY"] = "1"

# Each module exposes `register(subparsers)`, which adds its subcommand and sets `func`.
_COMMAND_MODULES = (
    "engine.realtime.serve_command",
    "engine.models.command",
    "engine.converse",
    "engine.bench.command",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="confide-engine",
        description="Confide's local voice engine: an OpenAI-Realtime-compatible server on local models.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug details")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for module_name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            if error.name != module_name:
                raise
            continue  # that command has not been written yet
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    limit_malloc_arenas()  # before any model runner starts a thread
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
