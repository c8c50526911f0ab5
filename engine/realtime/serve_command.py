"""`confide-engine serve`: run the Realtime server until interrupted."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
from pathlib import Path

from engine.realtime.auth import TokenFileError, default_token_path, load_or_create_token

log = logging.getLogger(__name__)

DEFAULT_PORT = 8765


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("serve", help="serve the OpenAI Realtime protocol on local models")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default: loopback only; anything else exposes your "
                             "microphone's words to the network, so it also needs --token or a token file)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT}; 0 = any free)")
    token = parser.add_mutually_exclusive_group()
    token.add_argument("--token", help="bearer token clients must present")
    token.add_argument("--token-file", type=Path,
                       help=f"file holding the token, created (mode 0600) if missing (default {default_token_path()})")
    parser.add_argument("--backend", default="embedded", choices=("embedded", "omni"),
                        help="model backend (default: embedded; omni: Qwen2.5-Omni end to end, see README)")
    parser.add_argument("--llm", help="language model id for the embedded backend (see `models list`)")
    add_omni_arguments(parser)
    parser.add_argument("--allow-origin", action="append", default=[],
                        help="a browser origin allowed to connect (repeatable; default: none)")
    parser.add_argument("--seed", type=int, help="sampling seed, for reproducible replies")
    parser.add_argument("--parent-pid", type=int,
                        help="exit when this process ends (an app that supervises the engine passes its own PID, "
                             "so a killed app never leaves the engine and its microphone access behind)")
    parser.set_defaults(func=run)


def add_omni_arguments(parser: argparse.ArgumentParser) -> None:
    """The omni backend's options, shared by `serve` and `bench`."""
    from engine.backends.omni.settings import DEVICES, QUANTIZATIONS

    group = parser.add_argument_group("omni backend (--backend omni)")
    group.add_argument("--omni-model", default="qwen2.5-omni-3b",
                       help="catalog id (qwen2.5-omni-3b, qwen2.5-omni-7b; fetched with `models fetch`), a folder "
                            "holding a Qwen2.5-Omni checkpoint, or `tiny` (random weights, for tests)")
    group.add_argument("--omni-device", default="auto", choices=DEVICES, help="default: CUDA when available")
    group.add_argument("--omni-quantization", default="none", choices=QUANTIZATIONS,
                       help="weights: none, int8 (weight-only, CPU or GPU) or int4 (bitsandbytes NF4, CUDA only)")
    group.add_argument("--omni-speaker", default="Chelsie", help="voice from the checkpoint (Chelsie, Ethan)")
    group.add_argument("--omni-max-tokens", type=int, default=256, help="longest reply in text tokens (default 256)")
    group.add_argument("--omni-max-speech-s", type=float, default=60.0,
                       help="longest spoken reply in seconds (default 60)")
    group.add_argument("--omni-transcribe", action=argparse.BooleanOptionalAction, default=True,
                       help="also transcribe the user's speech with Whisper, beside the model (default: on when "
                            "whisper-tiny.en is on disk; never downloaded at run time)")


def omni_arguments(args: argparse.Namespace) -> list[str]:
    """The same options as command-line arguments, for a `serve` started by another command (the bench)."""
    return ["--backend", "omni", "--omni-model", args.omni_model, "--omni-device", args.omni_device,
            "--omni-quantization", args.omni_quantization, "--omni-speaker", args.omni_speaker,
            "--omni-max-tokens", str(args.omni_max_tokens), "--omni-max-speech-s", str(args.omni_max_speech_s),
            "--omni-transcribe" if args.omni_transcribe else "--no-omni-transcribe"]


def omni_settings(args: argparse.Namespace):
    from engine.backends.omni.settings import OmniSettings

    return OmniSettings(model=args.omni_model, device=args.omni_device, quantization=args.omni_quantization,
                        speaker=args.omni_speaker, max_reply_tokens=args.omni_max_tokens,
                        max_speech_s=args.omni_max_speech_s, transcribe=args.omni_transcribe,
                        seed=getattr(args, "seed", None))


def run(args: argparse.Namespace) -> int:
    try:
        token = args.token or load_or_create_token(args.token_file)
    except TokenFileError as error:
        print(f"confide-engine: {error}", file=sys.stderr)
        return 1
    try:
        return asyncio.run(_serve(args, token))
    except KeyboardInterrupt:
        return 0


async def _serve(args: argparse.Namespace, token: str) -> int:
    from engine.assembly import build_engine
    from engine.backends.omni.settings import OmniLoadError
    from engine.models.store import ModelUnavailable
    from engine.realtime.server import REALTIME_PATH, RealtimeServer

    try:
        engine = await asyncio.to_thread(build_engine, args.backend, args.llm, True, None, args.seed,
                                         omni_settings(args))
    except (ModelUnavailable, ValueError, OmniLoadError) as error:
        print(f"confide-engine: {error}", file=sys.stderr)
        return 1
    server = RealtimeServer(engine.backend, engine.detector_factory, token, args.allow_origin)
    port = await server.start(args.host, args.port)
    url = f"ws://{args.host}:{port}{REALTIME_PATH}"
    # One machine-readable line on stdout: supervisors (the app, the benchmark) wait for it.
    print(json.dumps({"event": "ready", "url": url, "model": engine.backend.model,
                      "load_seconds": round(engine.load_seconds, 2)}), flush=True)
    log.info("serving %s on %s (token from %s)", engine.backend.model, url,
             "--token" if args.token else (args.token_file or default_token_path()))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    if args.parent_pid:
        loop.create_task(_stop_when_gone(args.parent_pid, stop))
    await stop.wait()
    await server.stop()
    await asyncio.to_thread(engine.backend.close)
    return 0


async def _stop_when_gone(pid: int, stop: asyncio.Event) -> None:
    while not stop.is_set():
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            log.info("parent process %d is gone: stopping", pid)
            stop.set()
            return
        except PermissionError:
            pass  # alive, owned by someone else
        await asyncio.sleep(1.0)
