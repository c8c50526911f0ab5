"""The engine's command line, run as a user runs it: real processes, real models, real sockets."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import urllib.request
import wave
from pathlib import Path

import pytest
import websockets

from engine.audio.pcm import write_wav
from tests.engine.test_realtime_end_to_end import screenshot_png
from tests.speakers import say

ROOT = Path(__file__).resolve().parents[2]


def engine_command(*args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "engine", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})}, stdin=subprocess.DEVNULL)


@pytest.mark.slow
def test_converse_answers_a_spoken_question_about_a_screenshot_with_the_tiny_model(tmp_path):
    question, reply, screen = tmp_path / "q.wav", tmp_path / "reply.wav", tmp_path / "screen.png"
    write_wav(question, say("What is the name of the project on my screen?", "flite:awb"), 16_000)
    screen.write_bytes(screenshot_png(["Project name: Bluebird", "Owner: Dana"]))
    result = engine_command("converse", str(question), "--image", str(screen), "-o", str(reply),
                            "--llm", "smollm2-135m-instruct", "--seed", "3")
    assert result.returncode == 0, result.stderr[-2000:]
    lines = dict(line.split(": ", 1) for line in result.stdout.splitlines() if ": " in line)
    assert "project" in lines["you"].lower() and "screen" in lines["you"].lower()
    assert lines["confide"].strip()
    with wave.open(str(reply)) as wav:
        assert wav.getframerate() == 24_000 and wav.getnchannels() == 1
        assert wav.getnframes() > 24_000 // 4


def test_converse_refuses_a_corrupt_wav_clearly(tmp_path):
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF\x00\x00garbage")
    result = engine_command("converse", str(bad), timeout=60)
    assert result.returncode == 1
    assert "cannot read the question" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.slow
async def test_serve_with_a_token_file_on_loopback(tmp_path):
    token_file = tmp_path / "config" / "engine-token"
    process = subprocess.Popen(
        [sys.executable, "-m", "engine", "serve", "--port", "0", "--token-file", str(token_file),
         "--llm", "smollm2-135m-instruct"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, text=True)
    try:
        ready = json.loads(process.stdout.readline())
        assert ready["event"] == "ready" and ready["url"].startswith("ws://127.0.0.1:")
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600  # generated, readable by the user alone
        token = token_file.read_text().strip()
        assert len(token) >= 32
        health = ready["url"].replace("ws://", "http://").replace("/v1/realtime", "/healthz")
        assert urllib.request.urlopen(health, timeout=5).read() == b"ok\n"
        with pytest.raises(websockets.InvalidStatus):
            await websockets.connect(ready["url"], additional_headers={"Authorization": "Bearer nope"})
        async with websockets.connect(ready["url"], additional_headers={"Authorization": f"Bearer {token}"}) as ws:
            assert json.loads(await ws.recv())["type"] == "session.created"
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0


def test_serve_reports_a_missing_model_clearly(tmp_path):
    result = engine_command("serve", "--port", "0", "--token", "x", "--llm", "qwen2.5-coder-1.5b-instruct",
                            env={"CONFIDE_MODELS_DIR": str(tmp_path)}, timeout=120)
    if result.returncode == 0:
        pytest.fail("serve started without the model")
    assert "qwen2.5-coder-1.5b-instruct" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.slow
def test_serve_exits_when_its_parent_is_gone(tmp_path):
    parent = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    engine = subprocess.Popen(
        [sys.executable, "-m", "engine", "serve", "--port", "0", "--token", "t", "--parent-pid", str(parent.pid),
         "--llm", "smollm2-135m-instruct"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, text=True)
    try:
        assert json.loads(engine.stdout.readline())["event"] == "ready"
        parent.kill()
        parent.wait()
        assert engine.wait(15) == 0  # a clean stop, within a couple of polls
    finally:
        if engine.poll() is None:
            engine.kill()


def test_the_benchmarks_engine_takes_a_token_that_starts_with_a_dash():
    """secrets.token_urlsafe starts with "-" one time in 64: passed as a separate argument, argparse took it
    for an option and the benchmark's engine exited with a usage error (a CI run failed on it)."""
    from engine.bench.server_process import serve_arguments
    from engine.cli import build_parser

    args = build_parser().parse_args(serve_arguments("-Ab3_x", ["--backend", "omni"]))
    assert (args.token, args.port, args.backend) == ("-Ab3_x", 0, "omni")
