"""`models fetch` of an omni checkpoint the catalog cannot pin: pinned from the hub's listing of one commit.

Against tests/harness/hub_emulator.py, a real HTTP server on 127.0.0.1 that answers the hub's listing API and
`resolve/` downloads (with Range), reached through CONFIDE_HUB_URL. The checkpoint is the catalog's real
`qwen2.5-omni-3b` entry with small fake files: the shards and spk_dict.pt are LFS files (pinned by SHA-256),
the JSON files are plain git files (pinned by their git blob id).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from engine.models.catalog import HubRepo, ModelFile, ModelSpec
from engine.models.download import ChecksumMismatch, DownloadInterrupted, git_blob_sha1
from engine.models.hub_manifest import MANIFEST_NAME, ManifestError
from engine.models.store import ModelStore, ModelUnavailable
from tests.harness.hub_emulator import HubEmulator, git_blob_id
from tests.harness.model_mirror import ModelMirror, flip_a_byte

REPO_ROOT = Path(__file__).resolve().parents[2]
MODEL = "qwen2.5-omni-3b"
HUB_REPO = "Qwen/Qwen2.5-Omni-3B"
SHARD = "model-00001-of-00003.safetensors"


def checkpoint(version: int = 0) -> dict[str, bytes]:
    """The catalog's files for the 3B model, as small real bytes; `version` changes the config and shard 2."""
    rng = random.Random(5)
    return {
        "config.json": json.dumps({"model_type": "qwen2_5_omni", "version": version}).encode(),
        "preprocessor_config.json": b'{"sampling_rate": 16000}',
        "tokenizer_config.json": b'{"model_max_length": 32768}',
        "tokenizer.json": json.dumps({"vocab": [f"t{i}" for i in range(2000)]}).encode(),
        "spk_dict.pt": rng.randbytes(5_000),
        "model.safetensors.index.json": b'{"weight_map": {}}',
        SHARD: rng.randbytes(300_000),
        "model-00002-of-00003.safetensors": rng.randbytes(120_000) + bytes(version),
        "model-00003-of-00003.safetensors": rng.randbytes(80_000),
    }


FILES = checkpoint()


@pytest.fixture
def hub(monkeypatch):
    monkeypatch.delenv("CONFIDE_MODELS_MIRROR", raising=False)  # the hub, not a mirror, unless a test says so
    emulator = HubEmulator()
    emulator.commit(HUB_REPO, FILES)
    with emulator:
        yield emulator


def store_for(hub: HubEmulator, cache: Path, **kwargs) -> ModelStore:
    return ModelStore(cache_dir=cache, hub_url=hub.url, **kwargs)


def downloads(hub: HubEmulator) -> list[tuple[str, str | None]]:
    return [(path, header) for path, header in hub.requests if "/resolve/" in path]


def resolve_path(commit: str, name: str) -> str:
    return f"/{HUB_REPO}/resolve/{commit}/{name}"


def test_the_cli_fetch_pins_every_file_to_one_commit_and_verify_reports_them_ok(hub, tmp_path):
    commit = hub.refs[HUB_REPO, "main"]
    env = {**os.environ, "CONFIDE_MODELS_DIR": str(tmp_path), "CONFIDE_HUB_URL": hub.url}

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "engine", "models", *args], cwd=REPO_ROOT, env=env,
                              capture_output=True, text=True, timeout=120)

    fetched = cli("fetch", MODEL, "--quiet")

    assert fetched.returncode == 0, fetched.stderr
    assert hub.requests[0] == (f"/api/models/{HUB_REPO}/revision/main?blobs=true", None)
    assert sorted(downloads(hub)) == sorted((resolve_path(commit, name), None) for name in FILES)
    for name, data in FILES.items():
        assert (tmp_path / MODEL / name).read_bytes() == data
    recorded = json.loads((tmp_path / MODEL / MANIFEST_NAME).read_text())
    assert recorded["commit"] == commit and recorded["repo"] == HUB_REPO
    assert recorded["files"][SHARD] == {"size": len(FILES[SHARD]), "sha256": hashlib.sha256(FILES[SHARD]).hexdigest()}
    assert recorded["files"]["tokenizer.json"] == {"size": len(FILES["tokenizer.json"]),
                                                   "blob_id": git_blob_id(FILES["tokenizer.json"])}

    requests_before = len(hub.requests)
    verified = cli("verify", MODEL)

    assert verified.returncode == 0, verified.stdout + verified.stderr
    rows = [line.split(maxsplit=4) for line in verified.stdout.splitlines()]
    assert len(rows) == len(FILES)
    assert all(row[0] == "ok" and row[3] == "cache" and row[4] == f"pinned at fetch, commit {commit}" for row in rows)
    resolved = store_for(hub, tmp_path).resolve(MODEL)
    assert set(resolved.sources.values()) == {"cache"}
    assert len(hub.requests) == requests_before  # verify and resolve never reach the network


def test_a_flipped_byte_on_the_server_is_refused_and_leaves_no_model(hub, tmp_path):
    hub.corrupt.add(SHARD)
    store = store_for(hub, tmp_path)

    with pytest.raises(ChecksumMismatch, match=f"{SHARD} has SHA-256 .* expected "
                                               f"{hashlib.sha256(FILES[SHARD]).hexdigest()}; the bad file was removed"):
        store.fetch(MODEL, progress=False)

    assert not (tmp_path / MODEL / SHARD).exists() and not (tmp_path / MODEL / f"{SHARD}.part").exists()
    with pytest.raises(ModelUnavailable):
        store.resolve(MODEL)
    assert {check.name: check.status for check in store.verify(MODEL)}[SHARD] == "missing"


def test_a_small_file_with_a_wrong_blob_id_is_refused(hub, tmp_path):
    hub.wrong_blob_id.add("tokenizer.json")
    store = store_for(hub, tmp_path)

    with pytest.raises(ChecksumMismatch, match="tokenizer.json has git blob id .* the bad file was removed"):
        store.fetch(MODEL, progress=False)

    assert not (tmp_path / MODEL / "tokenizer.json").exists()
    with pytest.raises(ModelUnavailable):
        store.resolve(MODEL)


def test_a_cut_download_resumes_with_a_range_request_at_the_same_commit(hub, tmp_path):
    commit = hub.refs[HUB_REPO, "main"]
    hub.cut_after[SHARD] = 100_000
    store = store_for(hub, tmp_path)

    with pytest.raises(DownloadInterrupted):
        store.fetch(MODEL, progress=False)
    assert (tmp_path / MODEL / f"{SHARD}.part").stat().st_size == 100_000

    store.fetch(MODEL, progress=False)

    assert (resolve_path(commit, SHARD), "bytes=100000-") in hub.requests
    assert (tmp_path / MODEL / SHARD).read_bytes() == FILES[SHARD]
    assert all(check.status == "ok" for check in store.verify(MODEL))


def test_main_moving_during_the_fetch_does_not_mix_snapshots(hub, tmp_path):
    first = hub.refs[HUB_REPO, "main"]
    newer = checkpoint(version=1)

    def move_main_at_the_first_download(path: str) -> None:
        if "/resolve/" in path and hub.refs[HUB_REPO, "main"] == first:
            hub.commit(HUB_REPO, newer)

    hub.on_request = move_main_at_the_first_download
    store = store_for(hub, tmp_path)

    store.fetch(MODEL, progress=False)

    second = hub.refs[HUB_REPO, "main"]
    assert second != first
    assert {path.split("/")[4] for path, _ in downloads(hub)} == {first}
    for name, data in FILES.items():
        assert (tmp_path / MODEL / name).read_bytes() == data
    assert store.recorded(MODEL).commit == first

    hub.requests.clear()
    store.fetch(MODEL, progress=False)  # now main is the newer commit: only what changed downloads

    changed = {"config.json", "model-00002-of-00003.safetensors"}
    assert sorted(downloads(hub)) == sorted((resolve_path(second, name), None) for name in changed)
    assert store.recorded(MODEL).commit == second
    assert all((tmp_path / MODEL / name).read_bytes() == data for name, data in newer.items())
    assert all(check.status == "ok" for check in store.verify(MODEL))


def test_a_part_begun_at_another_commit_is_not_resumed(hub, tmp_path):
    changed = "model-00002-of-00003.safetensors"
    hub.cut_after[changed] = 50_000
    store = store_for(hub, tmp_path)
    with pytest.raises(DownloadInterrupted):
        store.fetch(MODEL, progress=False)
    newer = checkpoint(version=1)
    second = hub.commit(HUB_REPO, newer)
    hub.requests.clear()

    store.fetch(MODEL, progress=False)

    assert (resolve_path(second, changed), None) in downloads(hub)
    assert not any(header for _, header in downloads(hub))
    assert (tmp_path / MODEL / changed).read_bytes() == newer[changed]


def test_a_catalog_file_missing_from_the_listing_is_a_clear_error(hub, tmp_path):
    hub.commit(HUB_REPO, {name: data for name, data in FILES.items() if name != "spk_dict.pt"})
    store = store_for(hub, tmp_path)

    with pytest.raises(ManifestError, match=f"{HUB_REPO} at commit [0-9a-f]{{40}} has no spk_dict.pt, which the "
                                            "catalog lists; nothing was downloaded"):
        store.fetch(MODEL, progress=False)

    assert downloads(hub) == []
    assert not (tmp_path / MODEL).exists()


def test_a_repository_the_hub_does_not_list_is_a_clear_error(hub, tmp_path):
    gone = ModelSpec(id="gone", role="omni", description="test", licence="MIT", origin="tests",
                     hub=HubRepo("Nobody/Nothing", "main"), files=(ModelFile("config.json", "", 0),))

    with pytest.raises(ManifestError, match="HTTP 404: the hub does not list Nobody/Nothing at 'main'"):
        store_for(hub, tmp_path, catalog=[gone]).fetch("gone", progress=False)

    assert downloads(hub) == []


def test_files_changed_on_disk_after_the_fetch_are_reported(hub, tmp_path):
    store = store_for(hub, tmp_path)
    store.fetch(MODEL, progress=False)
    flip_a_byte(tmp_path / MODEL / SHARD, 1234)
    (tmp_path / MODEL / "config.json").write_bytes(b'{"model_type": "other"}')

    checks = {check.name: check for check in store.verify(MODEL)}

    assert checks[SHARD].status == "mismatch"
    assert f"expected {hashlib.sha256(FILES[SHARD]).hexdigest()}; pinned at fetch, commit" in checks[SHARD].detail
    assert checks["config.json"].status == "mismatch" and "is 23 bytes" in checks["config.json"].detail
    assert {name for name, check in checks.items() if check.status == "ok"} == set(FILES) - {SHARD, "config.json"}
    with pytest.raises(ChecksumMismatch, match="confide-engine models fetch qwen2.5-omni-3b"):
        store.resolve(MODEL)

    config = tmp_path / MODEL / "config.json"  # same size, other bytes: only the blob id tells
    config.write_bytes(bytes(len(FILES["config.json"])))
    assert git_blob_sha1(config) != git_blob_id(FILES["config.json"])
    check = next(check for check in store.verify(MODEL) if check.name == "config.json")
    assert check.status == "mismatch" and f"expected {git_blob_id(FILES['config.json'])}" in check.detail


def test_catalog_checksums_win_over_the_listing(hub, tmp_path):
    pinned = ModelSpec(id="pinned-here", role="omni", description="test", licence="MIT", origin="tests",
                       hub=HubRepo(HUB_REPO, "main"),
                       files=(ModelFile("config.json", hashlib.sha256(b"another file").hexdigest(), 12),
                              ModelFile(SHARD, "", 0)))
    store = store_for(hub, tmp_path, catalog=[pinned])

    with pytest.raises(ChecksumMismatch, match="config.json has SHA-256"):
        store.fetch("pinned-here", progress=False)

    assert not (tmp_path / "pinned-here" / "config.json").exists()
    assert store.recorded("pinned-here").files.keys() == {SHARD}  # the listing pins only what the catalog does not


def test_a_served_cache_carries_its_record_to_a_mirror_fetch(hub, tmp_path):
    served = tmp_path / "served"
    store_for(hub, served).fetch(MODEL, progress=False)
    commit = hub.refs[HUB_REPO, "main"]
    hub.requests.clear()

    with ModelMirror(served) as mirror:
        mirrored = store_for(hub, tmp_path / "here", mirror=mirror.url)
        mirrored.fetch(MODEL, progress=False)
        assert hub.requests == []  # all from the mirror, listing included
        assert (f"/{MODEL}/{MANIFEST_NAME}", None) in mirror.requests
        assert {check.detail for check in mirrored.verify(MODEL)} == {f"pinned at fetch, commit {commit}"}

        flip_a_byte(served / MODEL / SHARD, 10)
        (tmp_path / "here" / MODEL / SHARD).unlink()
        with pytest.raises(ChecksumMismatch, match=f"{SHARD} has SHA-256"):
            mirrored.fetch(MODEL, progress=False)

        (served / MODEL / MANIFEST_NAME).unlink()  # a mirror without a record: today's unverified download
        unpinned = store_for(hub, tmp_path / "elsewhere", mirror=mirror.url)
        unpinned.fetch(MODEL, progress=False)
        assert {check.status for check in unpinned.verify(MODEL)} == {"unpinned"}
