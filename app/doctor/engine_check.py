"""The engine: it starts (as the app starts it) and answers one Realtime round trip with audio.

A text turn ("Say hello.") goes in over the WebSocket with the engine's token; the check passes when
`response.done` arrives completed with audio deltas. With an engine URL in the settings, that server is
checked instead of starting one.
"""

from __future__ import annotations

import json
import threading
import time

from app.doctor.result import Check, fail, ok

START_TIMEOUT_S = 180.0
REPLY_TIMEOUT_S = 60.0


def check_engine(llm: str = "", url: str = "", token: str = "") -> list[Check]:
    if url:
        return [_round_trip(url, token, started_in=None)]
    from app.engine_link.supervisor import EngineSupervisor

    ready = threading.Event()
    statuses: list[str] = []
    supervisor = EngineSupervisor(["--llm", llm] if llm else [], on_ready=lambda *_: ready.set(),
                                  on_status=statuses.append, start_timeout_s=START_TIMEOUT_S, max_crashes=1)
    started = time.monotonic()
    supervisor.start()
    try:
        while not ready.wait(0.1):
            if supervisor.gave_up or time.monotonic() - started > START_TIMEOUT_S + 5:
                reason = statuses[-1] if statuses else "no answer"
                return [fail("engine", f"the engine did not start: {reason}",
                             f"Read the engine's log, {supervisor.log_path}, for the cause; "
                             "`confide doctor --check models` finds damaged or missing models.")]
        start_s = time.monotonic() - started
        return [ok("engine", f"started in {start_s:.1f} s at {supervisor.url}"),
                _round_trip(supervisor.url, supervisor.token, started_in=start_s)]
    finally:
        supervisor.stop()


def _round_trip(url: str, token: str, started_in: float | None) -> Check:
    from websockets.sync.client import connect

    began = time.monotonic()
    try:
        with connect(url, additional_headers={"Authorization": f"Bearer {token}"}, max_size=None,
                     open_timeout=10) as websocket:
            websocket.send(json.dumps({"type": "session.update", "session": {
                "type": "realtime", "instructions": "Answer in one short sentence."}}))
            websocket.send(json.dumps({"type": "conversation.item.create", "item": {
                "type": "message", "role": "user", "content": [{"type": "input_text", "text": "Say hello."}]}}))
            websocket.send(json.dumps({"type": "response.create"}))
            audio_bytes, first_audio_s, done = 0, None, None
            deadline = began + REPLY_TIMEOUT_S
            while done is None:
                event = json.loads(websocket.recv(timeout=max(0.1, deadline - time.monotonic())))
                kind = event.get("type", "")
                if kind in ("response.output_audio.delta", "response.audio.delta"):
                    audio_bytes += len(event.get("delta", "")) * 3 // 4
                    first_audio_s = first_audio_s or time.monotonic() - began
                elif kind == "response.done":
                    done = event
                elif kind == "error":
                    return fail("round trip", f"the engine answered with an error: {event.get('error', {}).get('message')}",
                                "Read the engine's log for the cause (Confide's log folder, engine.log).")
    except TimeoutError:
        return fail("round trip", f"no complete reply within {REPLY_TIMEOUT_S:.0f} s",
                    "The machine may be overloaded: close heavy programs and run `confide doctor --check engine` again.")
    except Exception as error:
        where = "the configured engine URL" if started_in is None else "the engine"
        return fail("round trip", f"could not talk to {where} at {url}: {error}",
                    "Check the engine URL and token in Settings (Engine), or clear the URL so Confide starts its own engine."
                    if started_in is None else "Read the engine's log (engine.log in Confide's log folder).")
    status = done.get("response", {}).get("status")
    if status != "completed" or not audio_bytes:
        return fail("round trip", f"the reply ended {status} with {audio_bytes} bytes of audio",
                    "Read the engine's log (engine.log in Confide's log folder) for the cause.")
    return ok("round trip", f"a spoken reply: first audio after {first_audio_s * 1000:.0f} ms, "
                            f"{audio_bytes / 48_000:.1f} s of speech")
