"""One instance per person, and commands from later launches (`confide --toggle`), across real processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from PySide6.QtNetwork import QLocalSocket

from app.instance import COMMANDS, SingleInstance, default_server_name, send_command
from tests.harness.xdo import run_python, wait_until

# The display fixtures come as a plugin, so every module shares one X server (and Qt stays on it).
pytestmark = pytest.mark.usefixtures("x_display")

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def server_name() -> str:
    # Short and unique: Unix socket paths are limited to ~100 bytes.
    return f"/tmp/confide-test-{uuid.uuid4().hex[:10]}.sock"


@pytest.fixture
def instance(qapp, server_name):
    instance = SingleInstance(server_name)
    yield instance
    instance.release()
    for leftover in (server_name, server_name + ".lock"):
        if os.path.exists(leftover):
            os.unlink(leftover)


def python_process(code: str) -> subprocess.Popen:
    """A separate interpreter with no QApplication, like `confide --toggle` would be."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen([sys.executable, "-c", code], env=env, cwd=ROOT, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(process: subprocess.Popen, timeout: float = 30) -> str:
    """Let `process` run to the end while this process's event loop keeps serving it."""
    wait_until(lambda: process.poll() is not None, timeout=timeout, interval=0.001, what="the subprocess to finish")
    out, err = process.communicate()
    assert process.returncode == 0, err
    return out


def test_second_claim_fails_while_the_first_holds(instance, server_name):
    assert instance.claim() is True and instance.claimed
    rival = SingleInstance(server_name)
    assert rival.claim() is False
    assert instance.claimed  # the rival did not take the socket over either
    got = []
    instance.command_received.connect(got.append)
    process = python_process(f"from app.instance import send_command; print(send_command({server_name!r}, 'show'))")
    assert finish(process).strip() == "True"
    assert got == ["show"]


def test_second_claim_fails_from_another_process(instance, server_name):
    assert instance.claim()
    process = python_process(
        "from PySide6.QtCore import QCoreApplication\n"
        "app = QCoreApplication([])\n"
        "from app.instance import SingleInstance\n"
        f"print(SingleInstance({server_name!r}).claim())")
    assert finish(process).strip() == "False"


def test_release_lets_the_next_instance_claim(instance, server_name):
    assert instance.claim()
    instance.release()
    successor = SingleInstance(server_name)
    try:
        assert successor.claim() is True
    finally:
        successor.release()


CRASHING_INSTANCE = """
import os, signal, sys
from PySide6.QtCore import QCoreApplication
app = QCoreApplication([])
from app.instance import SingleInstance
instance = SingleInstance(sys.argv[1])
assert instance.claim()
print(instance.full_server_name(), flush=True)
os.kill(os.getpid(), signal.SIGKILL)  # a crash: nothing gets cleaned up
"""


def test_stale_socket_of_a_crashed_instance_is_recovered(qapp, server_name, qtbot):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    crashed = subprocess.run([sys.executable, "-c", CRASHING_INSTANCE, server_name], env=env, cwd=ROOT,
                             capture_output=True, text=True, timeout=30)
    assert crashed.returncode == -signal.SIGKILL
    socket_path = crashed.stdout.strip()
    assert socket_path == server_name and os.path.exists(socket_path)  # left behind
    assert send_command(server_name, "show", timeout_ms=500) is False  # nobody home

    started = time.perf_counter()
    instance = SingleInstance(server_name)
    try:
        assert instance.claim() is True
        print(f"\nclaim over a crashed instance's socket: {(time.perf_counter() - started) * 1000:.1f} ms")
        got = []
        instance.command_received.connect(got.append)
        process = python_process(
            f"from app.instance import send_command; print(send_command({server_name!r}, 'toggle'))")
        assert finish(process).strip() == "True"
        assert got == ["toggle"]
    finally:
        instance.release()


SENDER = """
import sys, time
from PySide6.QtCore import QCoreApplication
assert QCoreApplication.instance() is None  # like `confide --toggle`: no Qt application at all
from app.instance import send_command
for command in sys.argv[2:]:
    started = time.perf_counter()
    print(command, send_command(sys.argv[1], command), round((time.perf_counter() - started) * 1000, 1))
"""


def test_commands_from_a_subprocess_arrive_in_order(instance, server_name):
    assert instance.claim()
    got = []
    instance.command_received.connect(got.append)
    commands = ["toggle", "ask-screen", "stop", "show", "quit"]
    assert set(commands) == COMMANDS
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    process = subprocess.Popen([sys.executable, "-c", SENDER, server_name, *commands], env=env, cwd=ROOT,
                               stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = finish(process).splitlines()
    assert [line.split()[:2] for line in lines] == [[command, "True"] for command in commands]
    assert got == commands
    print("\nsend_command round trips (ms): " + ", ".join(f"{line.split()[0]} {line.split()[2]}" for line in lines))


def test_send_command_returns_false_when_nobody_listens(server_name):
    started = time.perf_counter()
    assert send_command(server_name, "toggle", timeout_ms=2000) is False
    assert time.perf_counter() - started < 2.5
    result = run_python(f"from app.instance import send_command; print(send_command({server_name!r}, 'show'))",
                        os.environ)
    assert result.stdout.strip() == "False", result.stderr


def test_unknown_commands_are_refused(instance, server_name, qtbot):
    assert instance.claim()
    with pytest.raises(ValueError):
        send_command(server_name, "format-disk")
    got = []
    instance.command_received.connect(got.append)
    raw = QLocalSocket()
    raw.connectToServer(server_name)
    assert raw.waitForConnected(2000)
    raw.write(b"format-disk\n")
    raw.flush()
    wait_until(raw.canReadLine, timeout=5, what="the instance to answer")
    assert bytes(raw.readLine()) == b"unknown\n"
    raw.abort()
    assert got == []


def test_default_server_name_is_private_to_the_user(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    assert default_server_name() == str(tmp_path / "confide.sock")
    monkeypatch.delenv("XDG_RUNTIME_DIR")
    assert default_server_name() == f"confide-{os.getuid()}"
