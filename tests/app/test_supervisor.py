"""EngineSupervisor with the real engine (`python -m engine serve`, the tiny SmolLM2 model): start, crash
and restart, the conversation going on across a crash, clean stops with no process left behind, and
engines that cannot start."""

from __future__ import annotations

import json
import os
import signal
import stat
import threading
import time
from pathlib import Path

import pytest
from websockets.sync.client import connect

from app.engine_link.client import CONNECTED, RealtimeLink
from app.engine_link.supervisor import EngineSupervisor
from app.history import ConversationHistory

TINY_LLM = ["--llm", "smollm2-135m-instruct"]
READY_TIMEOUT = 180  # a cold start on a busy 2-core machine


class Recorded:
    """What the supervisor's callbacks reported, from its threads."""

    def __init__(self):
        self.ready: list[tuple[str, str]] = []
        self.crashes: list[tuple[int, str]] = []
        self.statuses: list[str] = []
        self.threads: set[str] = set()

    def on_ready(self, url: str, token: str) -> None:
        self.threads.add(threading.current_thread().name)
        self.ready.append((url, token))

    def on_crash(self, exit_code: int, stderr_tail: str) -> None:
        self.crashes.append((exit_code, stderr_tail))

    def on_status(self, text: str) -> None:
        self.statuses.append(text)

    def status(self, containing: str) -> str | None:
        return next((s for s in self.statuses if containing in s), None)


def wait_until(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def session_created(url: str, token: str) -> dict:
    with connect(url, additional_headers={"Authorization": f"Bearer {token}"}, open_timeout=10) as websocket:
        return json.loads(websocket.recv(timeout=10))


def processes_in_session(session_id: int) -> list[int]:
    """Every live process whose session is `session_id`: the engine runs in a session of its own."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[3]) == session_id and fields[0] != "Z":
                found.append(int(entry.name))
    return found


def is_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.fixture
def recorded():
    return Recorded()


@pytest.fixture
def make_supervisor(tmp_path, recorded):
    supervisors = []

    def make(extra_args=TINY_LLM, on_ready=recorded.on_ready, **options) -> EngineSupervisor:
        supervisor = EngineSupervisor(extra_args, tmp_path / "config" / "engine-token", on_ready,
                                      recorded.on_crash, recorded.on_status, log_dir=tmp_path / "logs", **options)
        supervisors.append(supervisor)
        return supervisor

    yield make
    for supervisor in supervisors:
        supervisor.stop()


def test_default_folders_are_the_platform_ones(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    supervisor = EngineSupervisor()
    assert supervisor.log_path == tmp_path / "state" / "confide" / "log" / "engine.log"
    assert supervisor.token_file == tmp_path / "config" / "confide" / "engine-token"  # where the engine looks too
    assert supervisor.command[1:] == ["-m", "engine", "serve", "--port", "0", "--token-file",
                                      str(supervisor.token_file), "--parent-pid", str(os.getpid())]


def test_start_crash_restart_and_a_clean_stop(make_supervisor, recorded, tmp_path):
    supervisor = make_supervisor()
    started = time.monotonic()
    supervisor.start()
    wait_until(lambda: recorded.ready, READY_TIMEOUT, "the engine to be ready")
    print(f"\nengine ready in {time.monotonic() - started:.1f} s")
    url, token = recorded.ready[0]
    token_file = tmp_path / "config" / "engine-token"
    assert url.startswith("ws://127.0.0.1:") and url.endswith("/v1/realtime")
    assert token == token_file.read_text().strip() and len(token) >= 32
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert session_created(url, token)["type"] == "session.created"
    assert (supervisor.url, supervisor.token) == (url, token)
    assert recorded.threads and all(name.startswith("engine-watch-") for name in recorded.threads)

    first_pid = supervisor.pid
    killed_at = time.monotonic()
    os.kill(first_pid, signal.SIGKILL)
    wait_until(lambda: len(recorded.ready) == 2, READY_TIMEOUT, "the restarted engine")
    print(f"crash → new engine ready in {time.monotonic() - killed_at:.1f} s")
    assert len(recorded.crashes) == 1
    exit_code, tail = recorded.crashes[0]
    assert exit_code == -signal.SIGKILL
    assert "serving confide-embedded/smollm2-135m-instruct" in tail  # the engine's own stderr, kept in memory
    assert recorded.status("stopped unexpectedly (killed by SIGKILL); restarting it in")
    new_url, new_token = recorded.ready[1]
    assert supervisor.pid != first_pid and is_gone(first_pid)
    assert new_url != url and new_token == token  # a new port; the same install token
    assert session_created(new_url, new_token)["type"] == "session.created"

    second_pid = supervisor.pid
    supervisor.restart()  # on purpose: no crash reported
    wait_until(lambda: len(recorded.ready) == 3, READY_TIMEOUT, "the engine after restart()")
    assert len(recorded.crashes) == 1 and is_gone(second_pid)

    last_pid = supervisor.pid
    stopped_at = time.monotonic()
    supervisor.stop()
    print(f"stop() took {time.monotonic() - stopped_at:.2f} s")
    assert is_gone(last_pid) and processes_in_session(last_pid) == []  # nothing left behind
    assert supervisor.pid is None and supervisor.url is None
    assert recorded.statuses[-1] == "engine stopped"
    assert len(recorded.crashes) == 1  # a stop is not a crash

    log = (tmp_path / "logs" / "engine.log").read_text(encoding="utf-8")
    assert log.count("--- engine started (pid ") == 3
    assert log.count("serving confide-embedded/smollm2-135m-instruct") == 3
    assert "--- engine exited (killed by SIGKILL)" in log


def test_the_conversation_goes_on_after_a_crash(make_supervisor, recorded, tmp_path):
    """The app's wiring in small: the link follows the supervisor to each new engine, and each new session
    is re-seeded from the history so the engine knows what was said before the crash."""
    history = ConversationHistory(tmp_path / "history.json")
    history.append("user", "My name is Ada and I keep bees.", item_id="item_user_1")
    history.append("assistant", "Nice to meet you, Ada.", item_id="item_reply_1")
    events: list[dict] = []
    links: list[RealtimeLink] = []

    def reseed(state: str, reason: str) -> None:
        if state == CONNECTED:
            for event in history.as_conversation_items():
                links[0].send(event)
            links[0].send({"type": "conversation.item.retrieve", "item_id": "item_user_1"})

    link = RealtimeLink(events.append, reseed)
    links.append(link)

    def follow(url: str, token: str) -> None:
        recorded.on_ready(url, token)
        link.connect(url, token)

    supervisor = make_supervisor(on_ready=follow)
    try:
        supervisor.start()

        def retrieved() -> list[dict]:
            return [e for e in list(events) if e["type"] == "conversation.item.retrieved"]

        wait_until(lambda: len(retrieved()) == 1, READY_TIMEOUT, "the first session to be seeded")
        os.kill(supervisor.pid, signal.SIGKILL)
        killed_at = time.monotonic()
        wait_until(lambda: len(retrieved()) == 2, READY_TIMEOUT, "the new session to be seeded")
        print(f"\ncrash → conversation restored in a new engine in {time.monotonic() - killed_at:.1f} s")
        item = retrieved()[1]["item"]
        assert item["content"][0]["text"] == "My name is Ada and I keep bees."
        assert len(recorded.ready) == 2 and link.url == recorded.ready[1][0]
        assert not [e for e in events if e["type"] == "error"]
    finally:
        link.close()


def test_an_engine_that_cannot_start_is_reported_once_and_not_restarted(make_supervisor, recorded, tmp_path):
    empty_cache = tmp_path / "no-models"
    empty_cache.mkdir()
    supervisor = make_supervisor(["--llm", "qwen2.5-coder-1.5b-instruct"],
                                 env={**os.environ, "CONFIDE_MODELS_DIR": str(empty_cache)})
    supervisor.start()
    wait_until(lambda: recorded.status("could not start"), 120, "the failure")
    failure = recorded.status("could not start")
    print(f"\n{failure[:160]}…")
    assert failure.startswith("the engine could not start: model 'qwen2.5-coder-1.5b-instruct' is not available")
    time.sleep(3)  # time enough for a restart storm to show
    assert recorded.statuses.count("starting the engine") == 1
    assert recorded.crashes == [] and recorded.ready == []
    assert supervisor.pid is None


def test_repeated_crashes_stop_the_restarts_with_a_clear_status(make_supervisor, recorded):
    supervisor = make_supervisor(max_crashes=2, crash_window_s=300)
    supervisor.start()
    for crash in (1, 2):
        wait_until(lambda: len(recorded.ready) == crash, READY_TIMEOUT, f"engine #{crash}")
        pid = supervisor.pid
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: len(recorded.crashes) == crash, 30, f"crash #{crash}")
    wait_until(lambda: recorded.status("not restarting"), 10, "giving up")
    gave_up = recorded.status("not restarting")
    assert gave_up.startswith("the engine crashed 2 times in 300 s; not restarting it again (killed by SIGKILL")
    time.sleep(2)
    assert len(recorded.ready) == 2 and supervisor.pid is None and is_gone(pid)
    supervisor.start()  # the person can still ask for it again
    wait_until(lambda: len(recorded.ready) == 3, READY_TIMEOUT, "a fresh start after giving up")


def test_an_engine_too_slow_to_start_is_stopped_and_reported(make_supervisor, recorded):
    supervisor = make_supervisor(start_timeout_s=1.0)
    supervisor.start()
    pid = supervisor.pid
    wait_until(lambda: recorded.status("did not get ready"), 30, "the start timeout")
    assert recorded.status("the engine did not get ready within 1 s and was stopped")
    wait_until(lambda: is_gone(pid), 10, "the engine to be gone")
    assert processes_in_session(pid) == []
    time.sleep(2)
    assert recorded.statuses.count("starting the engine") == 1 and recorded.ready == []


def test_stop_while_starting_leaves_nothing_behind(make_supervisor, recorded):
    supervisor = make_supervisor()
    supervisor.start()
    pid = supervisor.pid
    time.sleep(0.5)  # the engine is loading its models
    supervisor.stop()
    assert is_gone(pid) and processes_in_session(pid) == []
    time.sleep(1)
    assert recorded.ready == [] and recorded.crashes == []
    assert recorded.statuses == ["starting the engine", "engine stopped"]
