"""Security, each claim proven on the real engine: loopback only, a private per-install token, no other
origins or host names, no network at run time, and screenshots and audio never written to disk.

The engine here is the one the app runs: started by the app's supervisor (app/engine_link/supervisor.py) with
the real embedded models (the smallest LLM), under a Python audit hook (tests/engine/audited_engine.py)."""

from __future__ import annotations

import base64
import http.client
import ipaddress
import json
import os
import socket
import stat
import threading
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import urlsplit

import numpy as np
import pytest
import websockets

from engine.audio.pcm import PROTOCOL_RATE
from engine.models.store import default_cache_dir
from engine.realtime.auth import TokenFileError, load_or_create_token
from engine.realtime.server import RealtimeServer
from tests.engine.audited_engine import LOG_ENV, SITECUSTOMIZE
from tests.engine.engine_process import ROOT
from tests.engine.realtime_client import RealtimeTestClient, transcript_of
from tests.engine.scripted_backend import ScriptedBackend
from tests.engine.test_realtime_end_to_end import screenshot_png
from tests.engine.test_realtime_protocol import vad_detectors  # noqa: F401
from tests.speakers import say

SILENCE = np.zeros(PROTOCOL_RATE, np.float32)
LOOPBACK_NAMES = {None, "", "localhost", b"localhost"}


def is_loopback(host) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.decode() if isinstance(host, bytes) else host).is_loopback
    except ValueError:
        return False


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    """The app's supervisor starts the engine (no --host: the default), the audit hook inside it."""
    from app.engine_link.supervisor import EngineSupervisor

    base = tmp_path_factory.mktemp("security")
    site, temp = base / "site", base / "tmp"
    site.mkdir()
    temp.mkdir()
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    audit_log = base / "audit.jsonl"
    home = base / "home"  # a fresh home and temporary folder: whatever lands there, natively or not, is seen
    env = {**os.environ, LOG_ENV: str(audit_log), "TMPDIR": str(temp), "PYTHONDONTWRITEBYTECODE": "1",
           "PYTHONPATH": os.pathsep.join([str(site), str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "HOME": str(home), "CONFIDE_MODELS_DIR": str(default_cache_dir()),
           **{f"XDG_{kind}_HOME": str(home / kind.lower()) for kind in ("CACHE", "CONFIG", "DATA", "STATE")}}
    ready = threading.Event()
    supervisor = EngineSupervisor(["--llm", "smollm2-135m-instruct", "--seed", "1"],
                                  token_file=base / "config" / "engine-token", log_dir=base / "logs", env=env,
                                  on_ready=lambda url, token: ready.set(), start_timeout_s=240)
    supervisor.start()
    try:
        assert ready.wait(240), supervisor.log_path.read_text()[-3000:]
        yield SimpleNamespace(supervisor=supervisor, url=supervisor.url, token=supervisor.token,
                              pid=supervisor.pid, audit_log=audit_log, temp=temp, home=home, base=base,
                              token_file=supervisor.token_file)
    finally:
        supervisor.stop()


def _address(hex_address: str, size: int) -> tuple[str, int]:
    raw_host, raw_port = hex_address.split(":")
    raw = bytes.fromhex(raw_host)
    words = b"".join(raw[i:i + 4][::-1] for i in range(0, size, 4))  # /proc prints host-order words
    return str(ipaddress.ip_address(words)), int(raw_port, 16)


def sockets_of(pid: int) -> list[tuple[str, tuple[str, int], tuple[str, int], str]]:
    """(table, local, remote, state) of every TCP and UDP socket process `pid` holds, from /proc: what native
    code opens is there too."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = []
    for table, size in (("tcp", 4), ("tcp6", 16), ("udp", 4), ("udp6", 16)):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[9] in inodes:
                found.append((table, _address(fields[1], size), _address(fields[2], size), fields[3]))
    return found


def off_machine(sockets) -> list:
    return [s for s in sockets if not ipaddress.ip_address(s[1][0]).is_loopback
            or not (ipaddress.ip_address(s[2][0]).is_loopback or ipaddress.ip_address(s[2][0]).is_unspecified)]


def test_the_engine_listens_on_loopback_only_by_default(engine):
    from engine.cli import build_parser

    assert build_parser().parse_args(["serve"]).host == "127.0.0.1"
    assert engine.url.startswith("ws://127.0.0.1:")
    listening = [s for s in sockets_of(engine.pid) if s[0].startswith("tcp") and s[3] == "0A"]
    assert listening and off_machine(listening) == [], listening


def test_the_token_is_generated_per_install_and_private(engine, tmp_path):
    status = engine.token_file.stat()
    assert stat.S_IMODE(status.st_mode) == 0o600 and status.st_uid == os.getuid()
    assert len(engine.token) >= 43  # 32 random bytes
    assert load_or_create_token(engine.token_file) == engine.token  # kept across starts
    assert load_or_create_token(tmp_path / "other-install") != engine.token
    cmdline = Path(f"/proc/{engine.pid}/cmdline").read_bytes().decode()
    assert engine.token not in cmdline  # `ps` shows the file's path, never the token
    assert engine.token not in engine.supervisor.log_path.read_text()  # nor the engine's log


def test_a_token_file_others_can_read_is_made_private(tmp_path):
    path = tmp_path / "engine-token"
    path.write_text("a-token-from-a-backup\n")
    path.chmod(0o644)
    assert load_or_create_token(path) == "a-token-from-a-backup"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    empty = tmp_path / "empty-token"
    empty.touch(0o666)
    os.chmod(empty, 0o666)
    load_or_create_token(empty)  # an empty file gets a new token, and private permissions
    assert stat.S_IMODE(empty.stat().st_mode) == 0o600 and empty.read_text().strip()


def test_a_token_file_another_user_owns_is_refused(tmp_path, monkeypatch):
    path = tmp_path / "engine-token"
    path.write_text("planted\n")
    monkeypatch.setattr(os, "getuid", lambda: path.stat().st_uid + 1)  # as seen by someone else
    with pytest.raises(TokenFileError, match="belongs to another user"):
        load_or_create_token(path)


@pytest.mark.parametrize("headers", [
    {}, {"Authorization": "Bearer"}, {"Authorization": "Bearer "}, {"Authorization": "Bearer wrong"},
    {"Authorization": "Basic {token}"}, {"Authorization": "Bearer {token}x"}, {"Authorization": "Bearer {cut}"},
    {"Authorization": "{token}"},
])
async def test_a_missing_or_wrong_token_is_refused(engine, headers):
    headers = {k: v.format(token=engine.token, cut=engine.token[:-1]) for k, v in headers.items()}
    with pytest.raises(websockets.InvalidStatus) as refused:
        await websockets.connect(engine.url, additional_headers=headers)
    assert refused.value.response.status_code == 401
    with pytest.raises(websockets.InvalidStatus) as refused:
        await websockets.connect(engine.url, subprotocols=["realtime", "openai-insecure-api-key.wrong"])
    assert refused.value.response.status_code == 401


@pytest.mark.parametrize("origin", ["http://evil.example", "null", "http://127.0.0.1:8000", "file://"])
async def test_a_browser_page_is_refused_even_with_the_token(engine, origin):
    """A web page in the user's browser can open a WebSocket to localhost, but the browser names the page's
    origin; none is allowed by default, whatever token the page has."""
    for auth in ({"additional_headers": {"Authorization": f"Bearer {engine.token}"}},
                 {"subprotocols": ["realtime", f"openai-insecure-api-key.{engine.token}"]}):
        with pytest.raises(websockets.InvalidStatus) as refused:
            await websockets.connect(engine.url, origin=origin, **auth)
        assert refused.value.response.status_code == 403


async def test_an_allowed_origin_connects_and_no_other(vad_detectors):
    server = RealtimeServer(ScriptedBackend(), vad_detectors, "tok", allowed_origins=["http://localhost:5173"])
    port = await server.start("127.0.0.1", 0)
    url = f"ws://127.0.0.1:{port}/v1/realtime"
    try:
        async with websockets.connect(url, origin="http://localhost:5173",
                                      subprotocols=["realtime", "openai-insecure-api-key.tok"]) as ws:
            assert json.loads(await ws.recv())["type"] == "session.created"
        with pytest.raises(websockets.InvalidStatus) as refused:
            await websockets.connect(url, origin="http://localhost:5174", subprotocols=[
                "realtime", "openai-insecure-api-key.tok"])
        assert refused.value.response.status_code == 403
    finally:
        await server.stop()


def handshake_status(port: int, host: str, token: str, path: str = "/v1/realtime") -> int:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    connection.request("GET", path, headers={
        "Host": host, "Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==", "Authorization": f"Bearer {token}"})
    status = connection.getresponse().status
    connection.close()
    return status


@pytest.mark.parametrize("host,status", [
    ("evil.example", 403), ("evil.example:{port}", 403), ("192.168.1.20:{port}", 403), ("", 403),
    ("127.0.0.1:{port}", 101), ("localhost:{port}", 101), ("[::1]:{port}", 101)])
def test_dns_rebinding_is_refused_by_host_name(engine, host, status):
    """A page whose DNS name was rebound to 127.0.0.1 still sends its own name as Host (and as Origin)."""
    port = urlsplit(engine.url).port
    assert handshake_status(port, host.format(port=port), engine.token) == status
    if status == 403:
        assert handshake_status(port, host.format(port=port), engine.token, "/healthz") == 403


async def test_no_network_and_nothing_written_while_answering_speech_and_a_screen(engine):
    """A spoken question and a screen question, end to end; the audit hook saw every address and every file
    opened for writing: loopback only, and nothing but the token file and the model cache."""
    seen: list = []
    watching = threading.Event()

    def watch_sockets() -> None:  # native code's sockets, which the audit hook cannot see
        while not watching.wait(0.02):
            seen.extend(sockets_of(engine.pid))

    watcher = threading.Thread(target=watch_sockets, daemon=True)
    watcher.start()
    client = await RealtimeTestClient.connect(engine.url, engine.token)
    await client.send("session.update", session={"type": "realtime", "instructions": "Answer in a few words."})
    await client.expect("session.updated")
    start = len(client.events)
    await client.append_audio(np.concatenate([SILENCE[:9600], say("What is two plus two?", "flite:slt"), SILENCE]))
    await client.expect("response.done", timeout=180)
    heard = [e for e in client.events[start:] if e["type"] == "conversation.item.input_audio_transcription.completed"]
    heard = heard or [await client.expect("conversation.item.input_audio_transcription.completed")]
    assert "plus" in heard[0]["transcript"].lower(), heard
    png = screenshot_png(["Dentist appointment: Thursday at 4:30 PM"])
    await client.send("conversation.item.create", item={"type": "message", "role": "user", "content": [
        {"type": "input_image", "image_url": "data:image/png;base64," + base64.b64encode(png).decode()},
        {"type": "input_text", "text": "When is my dentist appointment?"}]})
    await client.expect("conversation.item.created")
    await client.send("response.create")
    screen = await client.collect_until("response.done", timeout=180)
    assert screen[-1]["response"]["status"] == "completed" and transcript_of(screen).strip()
    await client.close()
    watching.set()
    watcher.join()
    assert seen and off_machine(seen) == [], off_machine(seen)
    engine.supervisor.stop()  # the hook's record is complete once the engine has exited

    records = [json.loads(line) for line in engine.audit_log.read_text().splitlines()]
    network = [r for r in records if r["event"].startswith("socket.")]
    assert any(r["event"] == "socket.bind" for r in network)  # the hook saw the engine's own socket
    outside = [r for r in network if not (
        r["event"] == "socket.getaddrinfo" and is_loopback(r["host"])
        or r.get("family") == socket.AF_UNIX
        or r.get("family") in (socket.AF_INET, socket.AF_INET6) and is_loopback(r["address"][0]))]
    assert outside == [], outside

    allowed = [engine.token_file.parent, default_cache_dir()]
    written = [r for r in records if r["event"] == "open"
               and not any(w.split(":")[1] == "_get_default_tempdir" for w in r["where"])]  # the stdlib's probe
    stray = [r for r in written if not any(Path(r["path"]).is_relative_to(a) for a in allowed)]
    assert stray == [], stray
    # Nothing left in the temporary folder or the home folder either, by Python or native code (ONNX
    # Runtime's telemetry wrote a session file in the one and a device id and event queue in the other).
    assert [p for folder in (engine.temp, engine.home) if folder.exists() for p in folder.rglob("*")] == []
    media = [p for p in engine.base.rglob("*") if p.suffix.lower() in (".png", ".jpg", ".wav", ".pcm", ".raw")]
    assert media == []
