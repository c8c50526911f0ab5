"""The engine killed (SIGKILL) mid-reply, again and again, under the whole app: the supervisor brings it back,
the conversation history stays whole (on disk and in the new engine session) and the next question is
answered. The engine is the tone engine (tests/harness/tone_engine.py): the real Realtime server in its own
process, started in about a second, so that 20 crashes fit in a test; the real engine's crash path is in
test_supervisor.py and test_app_end_to_end.py.
"""

from __future__ import annotations

import json
import os
import random
import signal
import statistics
import time

from app.state import AppState
from tests.app.test_supervisor import Recorded, is_gone, wait_until
from tests.harness.pulse import pulse_audio, report  # noqa: F401 (a fixture)
from tests.harness.tone_app import READY_TIMEOUT_S, Seen, ToneEngineSupervisor, answer, pump, tone_app

KILLS = 20
SEED = 11
ENGINE_ARGS = ["--phrases", "3", "--phrase-ms", "200", "--step-ms", "20"]
# The supervisor's crash-loop guard counts only crashes within stable_after_s of the engine getting ready.
# Here each engine serves that long before it is killed (scaled down from the default 30 s to fit a test).
STABLE_AFTER_S = 1.0


def saved_turns(app) -> list[dict] | None:
    """The history file as a program other than the app reads it (never half-written: it must parse)."""
    try:
        raw = app.history.path.read_bytes()
    except FileNotFoundError:
        return None
    document = json.loads(raw)
    assert document["version"] == 1
    return document["turns"]


def assert_history_whole(qtbot, app, answered: list[int], asked: list[int], killed: list[int]) -> None:
    """Every question once; every reply heard to its end once; a reply cut by a kill at most once (whether
    it is there depends on whether the engine had finished writing it before it died)."""
    turns = app.history.turns
    assert len({t.item_id for t in turns}) == len(turns), "a turn was recorded twice"
    assert [t.text for t in turns if t.role == "user"] == [f"question {q}" for q in asked]
    replies = [t.text for t in turns if t.role == "assistant"]
    assert [r for r in replies if not r.startswith("Answer to question")] == []
    numbers = [int(r.split()[3].rstrip(".")) for r in replies]
    assert len(set(numbers)) == len(numbers) and set(answered) <= set(numbers) <= set(answered) | set(killed)
    pump(qtbot, lambda: [(t["role"], t["text"], t["item_id"]) for t in saved_turns(app) or []]
         == [(t.role, t.text, t.item_id) for t in turns], 5, "the history file to hold every turn")


def test_twenty_kills_mid_reply_over_a_conversation(pulse_audio, qtbot, tmp_path, monkeypatch):
    rng = random.Random(SEED)
    with tone_app(qtbot, tmp_path, monkeypatch, ENGINE_ARGS, stable_after_s=STABLE_AFTER_S) as app:
        seen = Seen(app)
        ready_at: list[float] = [time.monotonic()]
        app.bridge.engine_ready.connect(lambda url, token: ready_at.append(time.monotonic()))
        supervisor = app._supervisor
        asked, answered, killed, recover_s = [], [], [], []
        q = 0
        for kill in range(1, KILLS + 1):
            q += 1
            answer(qtbot, app, f"question {q}")  # this engine answers: the conversation goes on
            asked.append(q)
            answered.append(q)
            q += 1
            app.controller.submit_text(f"question {q}")
            asked.append(q)
            killed.append(q)
            pump(qtbot, lambda: app.controller.state is AppState.SPEAKING, 10, "the reply to play")
            qtbot.wait(rng.randrange(20, 400))  # somewhere in the middle of the reply
            pump(qtbot, lambda: time.monotonic() - ready_at[-1] >= STABLE_AFTER_S, 5, "the engine to serve a while")
            pid = supervisor.pid
            killed_at = time.monotonic()
            os.kill(pid, signal.SIGKILL)
            pump(qtbot, lambda: app.controller.state is AppState.CONNECTING, 10, "the app to notice the crash")
            pump(qtbot, lambda: app.controller.state is AppState.LISTENING, READY_TIMEOUT_S,
                 f"the engine to come back after kill {kill}")
            recover_s.append(time.monotonic() - killed_at)
            assert supervisor.pid not in (None, pid) and is_gone(pid)
            assert_history_whole(qtbot, app, answered, asked, killed)
            # The new engine session holds the conversation so far: every turn was seeded into it.
            pump(qtbot, lambda: {t.item_id for t in app.history.turns}
                 <= {item for at, item in seen.items if at > killed_at}, 5, "the new session to be seeded")
        q += 1
        answer(qtbot, app, f"question {q}")  # the last engine answers too
        asked.append(q)
        answered.append(q)
        assert_history_whole(qtbot, app, answered, asked, killed)
        assert not supervisor.gave_up
        assert app.controller.state is AppState.LISTENING
        log = supervisor.log_path.read_text(encoding="utf-8")
        assert log.count("--- engine exited (killed by SIGKILL)") == KILLS
        lost = seen.said("lost the engine")
        assert len(lost) == KILLS, lost

    recover_s.sort()
    figures = {"kills": KILLS, "restarts": KILLS, "gave_up": False, "history_intact": True,
               "kill_to_listening_s_p50": round(statistics.median(recover_s), 2),
               "kill_to_listening_s_p95": round(recover_s[int(0.95 * (len(recover_s) - 1))], 2),
               "kill_to_listening_s_max": round(recover_s[-1], 2)}
    report("crash recovery", json.dumps(figures))


def test_rapid_crashes_still_stop_the_restarts_and_a_stable_run_resets_the_count(tmp_path):
    """The crash-loop guard counts only crashes soon after a start: a long-serving engine killed now and
    then is restarted every time, an engine that dies as soon as it is up is given up on."""
    recorded = Recorded()
    supervisor = ToneEngineSupervisor([], tmp_path / "engine-token", recorded.on_ready, recorded.on_crash,
                                      recorded.on_status, log_dir=tmp_path / "logs", max_crashes=2,
                                      crash_window_s=300, stable_after_s=1.5)
    try:
        supervisor.start()
        for ready, rest_s in ((1, 0.0), (2, 2.0), (3, 0.0)):  # rapid, after a stable run, rapid
            wait_until(lambda: len(recorded.ready) == ready, READY_TIMEOUT_S, f"engine #{ready}")
            time.sleep(rest_s)
            os.kill(supervisor.pid, signal.SIGKILL)
            wait_until(lambda: len(recorded.crashes) == ready, 10, f"crash #{ready}")
        wait_until(lambda: len(recorded.ready) == 4, READY_TIMEOUT_S, "engine #4: two rapid crashes, but not in a row")
        assert not supervisor.gave_up
        os.kill(supervisor.pid, signal.SIGKILL)  # the second rapid one since the stable run
        wait_until(lambda: recorded.status("not restarting"), 10, "giving up")
        assert recorded.status("the engine crashed 2 times in 300 s; not restarting it again (killed by SIGKILL")
        assert supervisor.gave_up and supervisor.pid is None
    finally:
        supervisor.stop()
