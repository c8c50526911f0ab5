"""A real HTTP server on 127.0.0.1 that answers as the Hugging Face hub does for downloads.

Two routes, shaped as the hub's (and huggingface_hub's `model_info(..., files_metadata=True)` reads them):
`GET /api/models/<owner>/<name>/revision/<revision>?blobs=true` answers `{"id", "sha": <commit>, "siblings":
[{"rfilename", "size", "blobId", "lfs": {"sha256", "size", "pointerSize"}}]}` (`lfs` only for LFS files, whose
`blobId` is then the blob of their pointer file), and `GET /<owner>/<name>/resolve/<revision>/<file>` serves
the file, with `Range: bytes=N-` answered by 206 as the hub's CDN does. A revision is a branch (`refs`) or a
commit id. Faults a test can script: `corrupt` (serve a file with one byte flipped, the listing unchanged),
`wrong_blob_id` (list a wrong blob id), `cut_after` (hang up after N bytes of one answer, once), and
`on_request` (called with each path before it is answered, e.g. to move a branch mid-fetch).

    hub = HubEmulator()
    commit = hub.commit("Org/Model", {"config.json": b"{}", "model.safetensors": weights})  # main -> it
    with hub:
        hub.url, hub.requests    # the base URL (CONFIDE_HUB_URL); [(path, Range header or None), ...]
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from urllib.parse import unquote, urlsplit

from tests.harness.http_files import FileHandler, LoopbackServer

LFS_SUFFIXES = (".safetensors", ".pt", ".bin")  # stored in LFS, as the hub's default .gitattributes has them


def git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(data: bytes) -> bytes:
    return (f"version https://git-lfs.github.com/spec/v1\noid sha256:{hashlib.sha256(data).hexdigest()}\n"
            f"size {len(data)}\n").encode()


class HubEmulator(LoopbackServer):
    def __init__(self):
        self.commits: dict[str, dict[str, bytes]] = {}  # commit id -> {file name: bytes}
        self.refs: dict[tuple[str, str], str] = {}  # (repo, branch) -> commit id
        self.corrupt: set[str] = set()  # file names served with their last byte flipped
        self.wrong_blob_id: set[str] = set()  # file names listed with a blob id that is not theirs
        self.cut_after: dict[str, int] = {}  # file name -> bytes sent before hanging up, once
        self.on_request: Callable[[str], None] | None = None
        self.requests: list[tuple[str, str | None]] = []
        super().__init__(_Handler, "hub-emulator")

    def commit(self, repo: str, files: dict[str, bytes], branch: str = "main") -> str:
        """Store a snapshot of `repo` and point `branch` at it; returns its commit id."""
        commit = hashlib.sha1(repo.encode() + json.dumps(sorted((n, git_blob_id(b)) for n, b in files.items()))
                              .encode() + str(len(self.commits)).encode()).hexdigest()
        self.commits[commit] = dict(files)
        self.refs[repo, branch] = commit
        return commit

    def listing(self, repo: str, commit: str) -> dict:
        siblings = []
        for name, data in self.commits[commit].items():
            if name.endswith(LFS_SUFFIXES):
                pointer = lfs_pointer(data)
                entry = {"rfilename": name, "size": len(data), "blobId": git_blob_id(pointer),
                         "lfs": {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data),
                                 "pointerSize": len(pointer)}}
            else:
                entry = {"rfilename": name, "size": len(data), "blobId": git_blob_id(data)}
            if name in self.wrong_blob_id:
                entry["blobId"] = git_blob_id(data + b"\n")
            siblings.append(entry)
        return {"id": repo, "modelId": repo, "sha": commit, "private": False, "siblings": siblings}

    def _commit_of(self, repo: str, revision: str) -> str | None:
        if revision in self.commits:
            return revision
        return self.refs.get((repo, revision))


class _Handler(FileHandler):
    def do_GET(self) -> None:
        hub: HubEmulator = self.owner
        range_header = self.record()
        if hub.on_request is not None:
            hub.on_request(self.path)
        url = urlsplit(self.path)
        parts = [unquote(part) for part in url.path.strip("/").split("/")]
        if parts[:2] == ["api", "models"] and len(parts) == 6 and parts[4] == "revision":
            self._listing(hub, f"{parts[2]}/{parts[3]}", parts[5], url.query)
        elif len(parts) >= 5 and parts[2] == "resolve":
            self._file(hub, f"{parts[0]}/{parts[1]}", parts[3], "/".join(parts[4:]), range_header)
        else:
            self._answer(404, b'{"error": "not found"}')

    def _listing(self, hub: HubEmulator, repo: str, revision: str, query: str) -> None:
        commit = hub._commit_of(repo, revision)
        if commit is None:
            self._answer(404, b'{"error": "Revision Not Found"}')
            return
        listing = hub.listing(repo, commit)
        if query != "blobs=true":  # without it the hub lists names only
            listing["siblings"] = [{"rfilename": entry["rfilename"]} for entry in listing["siblings"]]
        self._answer(200, json.dumps(listing).encode(), "application/json")

    def _file(self, hub: HubEmulator, repo: str, revision: str, name: str, range_header: str | None) -> None:
        commit = hub._commit_of(repo, revision)
        data = hub.commits.get(commit, {}).get(name) if commit else None
        if data is None:
            self._answer(404, b"Entry not found")
            return
        if name in hub.corrupt:
            data = data[:-1] + bytes([data[-1] ^ 0xFF])
        start = self.start_range_answer(len(data), range_header, {"X-Repo-Commit": commit})
        if start is None:
            return
        body = data[start:]
        cut = hub.cut_after.pop(name, None)
        try:
            self.wfile.write(body if cut is None else body[:cut])
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            return
        if cut is not None:
            self.close_connection = True  # fewer bytes than Content-Length: the client sees the cut

    def _answer(self, status: int, body: bytes, content_type: str = "text/plain") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
