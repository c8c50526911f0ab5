"""The real Realtime server on the scripted backend, in a process of its own (so tests can watch its memory and
see that it stays up): `python -m tests.engine.scripted_server --token T`. Prints the engine's ready line."""

from __future__ import annotations

import argparse
import asyncio
import json
import signal

from engine.assembly import detector_factory
from engine.models.store import ModelStore
from engine.realtime.server import REALTIME_PATH, RealtimeServer
from tests.engine.scripted_backend import ScriptedBackend


async def serve(token: str) -> None:
    server = RealtimeServer(ScriptedBackend(step_s=0.01), detector_factory(ModelStore()), token)
    port = await server.start("127.0.0.1", 0)
    print(json.dumps({"event": "ready", "url": f"ws://127.0.0.1:{port}{REALTIME_PATH}"}), flush=True)
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(signum, stop.set)
    await stop.wait()
    await server.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--token", required=True)
    asyncio.run(serve(parser.parse_args().token))
