"""A fake Hugging Face Hub on 127.0.0.1 for tests: tiny repositories served in the shape huggingface_hub 2.4.0
asks for, with knobs to make the network misbehave.

Endpoints (what huggingface_hub's HfApi and file_download request):
- GET /api/models/{owner}/{name}[/revision/{rev}][?blobs=true]: model info (sha, gated, siblings with size,
  blobId and lfs {sha256, size, pointerSize} when blobs=true);
- GET /api/models/{repo}/tree/{rev}[/{folder}]: list_repo_tree; POST /api/models/{repo}/paths-info/{rev}:
  get_paths_info;
- HEAD and GET /{repo}/resolve/{rev}/{path}: X-Repo-Commit, ETag (the git blob sha1, or the sha256 of an LFS
  file), Accept-Ranges, Content-Length; an LFS file answers 302 to /cdn/{sha256} with X-Linked-Size and
  X-Linked-Etag, as the Hub redirects to its CDN; Range: bytes=N- (or N-M) answers 206 with Content-Range;
- errors with the X-Error-Code header huggingface_hub maps to its exceptions: RepoNotFound, RevisionNotFound,
  EntryNotFound, GatedRepo (401 without a token, 403 with a token the repo does not accept).

Knobs (attributes of FakeHub, changed by a test at any time):
- `served`: file bytes sent (bodies of resolve/cdn GETs), `served_by_file` per repo path, `requests` (method,
  path) and `authorizations` (the Authorization headers received);
- `drop(after=N, times=1)`: the next `times` file bodies are cut (connection closed) after N bytes;
- `corrupt`: {"owner/name/path", ...} served with one byte flipped (sizes stay right, hashes do not);
- `delay` seconds after each `chunk` bytes of a file body (slow serving, for stop and kill tests).

`fake_hub` is the pytest fixture (import it into a test module): a started FakeHub, with HF_ENDPOINT set to it
for child processes (huggingface_hub reads HF_ENDPOINT at import, so run the code under test in a subprocess),
HF_HOME in a fresh folder (no stored token) and HF_TOKEN unset.
"""
from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

import pytest

LFS_SUFFIXES = (".safetensors", ".onnx", ".bin", ".ckpt", ".pt", ".pth", ".h5", ".msgpack")
REPO = r"(?P<repo>[^/]+/[^/]+)"
ROUTES = [  # (method(s), pattern, handler name)
    (("GET",), re.compile(rf"/api/models/{REPO}(?:/revision/(?P<rev>[^/]+))?"), "model_info"),
    (("GET",), re.compile(rf"/api/models/{REPO}/tree/(?P<rev>[^/]+)(?:/(?P<path>.*))?"), "tree"),
    (("POST",), re.compile(rf"/api/models/{REPO}/paths-info/(?P<rev>[^/]+)"), "paths_info"),
    (("GET", "HEAD"), re.compile(rf"/{REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)"), "resolve"),
    (("GET", "HEAD"), re.compile(rf"/cdn/{REPO}/(?P<sha>[0-9a-f]{{64}})/(?P<path>.+)"), "cdn"),
]


def git_blob_sha1(data: bytes) -> str:
    """The git object id of a file (what the Hub calls its blobId / oid)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class FakeRepo:
    files: dict[str, bytes]
    gated: bool = False
    tokens: frozenset[str] = frozenset()  # tokens that have accepted a gated repo's licence

    @property
    def commit(self) -> str:
        digest = hashlib.sha1()
        for path in sorted(self.files):
            digest.update(f"{path}\0{git_blob_sha1(self.files[path])}\n".encode())
        return digest.hexdigest()

    def entry(self, path: str) -> dict:
        """One file as the tree and paths-info APIs list it."""
        data = self.files[path]
        item = {"type": "file", "oid": git_blob_sha1(data), "size": len(data), "path": path}
        if path.endswith(LFS_SUFFIXES):
            item["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
        return item

    def sibling(self, path: str) -> dict:
        """One file as model info lists it with blobs=true."""
        item = self.entry(path)
        lfs = item.get("lfs")
        return {"rfilename": path, "size": item["size"], "blobId": item["oid"],
                **({"lfs": {"sha256": lfs["oid"], "size": lfs["size"], "pointerSize": lfs["pointerSize"]}}
                   if lfs else {})}


@dataclass
class FakeHub:
    repos: dict[str, FakeRepo] = field(default_factory=dict)
    served: int = 0
    served_by_file: Counter = field(default_factory=Counter)
    requests: list[tuple[str, str]] = field(default_factory=list)
    authorizations: list[str] = field(default_factory=list)
    corrupt: set[str] = field(default_factory=set)
    delay: float = 0.0
    chunk: int = 64 * 1024
    drop_after: int | None = None
    drops_left: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    server: ThreadingHTTPServer | None = None

    def add_repo(self, repo_id: str, files: dict[str, bytes], gated: bool = False,
                 tokens: tuple[str, ...] = ()) -> FakeRepo:
        self.repos[repo_id] = FakeRepo(dict(files), gated, frozenset(tokens))
        return self.repos[repo_id]

    def drop(self, after: int, times: int = 1) -> None:
        """Cut the next `times` file bodies after `after` bytes (the client sees the connection drop)."""
        with self.lock:
            self.drop_after, self.drops_left = after, times

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FakeHub:
        hub = self

        class Handler(HubHandler):
            pass
        Handler.hub = hub
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server:
            self.server.shutdown()
            self.server.server_close()

    def _take_drop(self) -> int | None:
        with self.lock:
            if self.drops_left <= 0:
                return None
            self.drops_left -= 1
            return self.drop_after


class HubHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    hub: FakeHub

    def log_message(self, format, *args) -> None:  # quiet: tests read hub.requests instead
        pass

    def do_GET(self) -> None:
        self._route("GET")

    def do_HEAD(self) -> None:
        self._route("HEAD")

    def do_POST(self) -> None:
        self._route("POST")

    def _route(self, method: str) -> None:
        url = urlsplit(self.path)
        path, self.query = unquote(url.path), parse_qs(url.query)
        with self.hub.lock:
            self.hub.requests.append((method, path))
            if auth := self.headers.get("Authorization"):
                self.hub.authorizations.append(auth)
        for methods, pattern, name in ROUTES:
            if method in methods and (match := pattern.fullmatch(path)):
                return getattr(self, name)(method, **match.groupdict())
        self._error(404, "", f"no route {path}")

    # --- answers ---

    def _send(self, status: int, body: bytes = b"", headers: dict | None = None, method: str = "GET") -> None:
        self.send_response(status)
        for key, value in {"Content-Length": str(len(body)), **(headers or {})}.items():
            self.send_header(key, value)
        self.end_headers()
        if method != "HEAD":
            self.wfile.write(body)

    def _json(self, obj) -> None:
        self._send(200, json.dumps(obj).encode(), {"Content-Type": "application/json"})

    def _error(self, status: int, code: str, message: str, method: str = "GET") -> None:
        headers = {"Content-Type": "application/json", "X-Error-Message": message}
        if code:
            headers["X-Error-Code"] = code
        self._send(status, json.dumps({"error": message}).encode(), headers, method)

    def _repo(self, repo_id: str, rev: str | None, method: str = "GET") -> FakeRepo | None:
        repo = self.hub.repos.get(repo_id)
        if repo is None:
            self._error(404, "RepoNotFound", f"Repository {repo_id} not found", method)
        elif rev not in (None, "main", repo.commit):
            self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}", method)
        else:
            return repo
        return None

    def model_info(self, method: str, repo: str, rev: str | None) -> None:
        if (found := self._repo(repo, rev)) is None:
            return
        blobs = self.query.get("blobs") == ["true"]
        siblings = [found.sibling(p) if blobs else {"rfilename": p} for p in sorted(found.files)]
        self._json({"id": repo, "modelId": repo, "sha": found.commit, "private": False,
                    "gated": "manual" if found.gated else False, "disabled": False, "siblings": siblings})

    def tree(self, method: str, repo: str, rev: str, path: str | None) -> None:
        if (found := self._repo(repo, rev)) is None:
            return
        prefix = f"{path.strip('/')}/" if path else ""
        recursive = self.query.get("recursive") == ["true"]
        folders, files = set(), []
        for name in sorted(n for n in found.files if n.startswith(prefix)):
            parts = name[len(prefix):].split("/")
            if recursive:
                folders.update(prefix + "/".join(parts[:i]) for i in range(1, len(parts)))
                files.append(name)
            elif len(parts) > 1:
                folders.add(prefix + parts[0])
            else:
                files.append(name)
        self._json([{"type": "directory", "oid": "0" * 40, "size": 0, "path": f} for f in sorted(folders)]
                   + [found.entry(name) for name in files])

    def paths_info(self, method: str, repo: str, rev: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        form = parse_qs(self.rfile.read(length).decode())
        if (found := self._repo(repo, rev)) is None:
            return
        self._json([found.entry(p) for p in form.get("paths", []) if p in found.files])

    def resolve(self, method: str, repo: str, rev: str, path: str) -> None:
        if (found := self._repo(repo, rev, method)) is None:
            return
        if path not in found.files:
            return self._error(404, "EntryNotFound", f"{path} does not exist on {rev}", method)
        if found.gated:
            token = (self.headers.get("Authorization") or "").removeprefix("Bearer ")
            if token not in found.tokens:
                return self._error(403 if token else 401, "GatedRepo",
                                   f"Access to model {repo} is restricted and you are not in the authorized list. "
                                   f"Visit https://huggingface.co/{repo} to ask for access.", method)
        entry = found.entry(path)
        headers = {"X-Repo-Commit": found.commit, "Accept-Ranges": "bytes"}
        if "lfs" in entry:
            sha = entry["lfs"]["oid"]
            headers.update({"X-Linked-Size": str(entry["size"]), "X-Linked-Etag": f'"{sha}"', "ETag": f'"{sha}"',
                            "Location": f"{self.hub.url}/cdn/{repo}/{sha}/{path}"})
            return self._send(302, b"", headers, method)
        headers["ETag"] = f'"{entry["oid"]}"'
        self._file(method, repo, path, found, headers)

    def cdn(self, method: str, repo: str, sha: str, path: str) -> None:
        found = self.hub.repos.get(repo)
        if found is None or path not in found.files or found.entry(path).get("lfs", {}).get("oid") != sha:
            return self._error(404, "", "no such object", method)
        self._file(method, repo, path, found, {"ETag": f'"{sha}"', "X-Repo-Commit": found.commit,
                                                "Accept-Ranges": "bytes"})

    def _file(self, method: str, repo: str, path: str, found: FakeRepo, headers: dict) -> None:
        """A file's bytes, whole or from a Range; with the test's knobs (corrupt, drop, delay)."""
        data = found.files[path]
        if f"{repo}/{path}" in self.hub.corrupt:
            middle = len(data) // 2
            data = data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1:]
        start, end, status = 0, len(data), 200
        if match := re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range") or ""):
            start, end, status = int(match[1]), int(match[2]) + 1 if match[2] else len(data), 206
            if start >= len(data):
                return self._send(416, b"", {"Content-Range": f"bytes */{len(data)}"}, method)
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{len(data)}"
        body = data[start:end]
        self.send_response(status)
        for key, value in {**headers, "Content-Length": str(len(body))}.items():
            self.send_header(key, value)
        self.end_headers()
        if method == "HEAD":
            return
        cut = self.hub._take_drop()
        sent = 0
        for offset in range(0, len(body), self.hub.chunk):
            piece = body[offset:offset + self.hub.chunk]
            if cut is not None and sent + len(piece) > cut:
                piece = piece[:cut - sent]
            try:
                self.wfile.write(piece)
                self.wfile.flush()
            except OSError:  # the client went away (stopped, killed)
                self.close_connection = True
                return
            sent += len(piece)
            with self.hub.lock:
                self.hub.served += len(piece)
                self.hub.served_by_file[path] += len(piece)
            if cut is not None and sent >= cut:
                self.close_connection = True
                return
            if self.hub.delay:
                time.sleep(self.hub.delay)


@pytest.fixture
def fake_hub(tmp_path, monkeypatch):
    """A started FakeHub (stopped after the test); HF_ENDPOINT points at it, HF_HOME is a fresh folder and
    HF_TOKEN is unset, for the processes the test starts."""
    hub = FakeHub().start()
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    yield hub
    hub.stop()
