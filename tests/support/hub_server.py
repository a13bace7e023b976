"""A local stand-in for ModelScope and Hugging Face, serving model folders over real HTTP on 127.0.0.1.

It answers the endpoints the real clients call (modelscope_hub 0.5 / modelscope 1.40, huggingface_hub
2.4), with HTTP Range, and has knobs for what goes wrong in the field:

- ``cut_after[path] = n``: the next full download of `path` sends `n` bytes, then drops the connection.
- ``stall_after[path] = n``: the next download sends `n` bytes, then hangs until ``release()`` (for Ctrl-C).
- ``corrupt``: paths served with wrong bytes of the right length.
- ``corrupt_times[path] = n``: the next `n` downloads of `path` get wrong bytes of the right length, later ones
  the right bytes (a flaky mirror that a retry gets past).
- ``token``: every request without ``Authorization: Bearer <token>`` gets 401.
Unknown repositories get 404 the way each hub says it. Every request is logged in ``requests``.

ModelScope:  GET /api/v1/models/{org}/{name}/repo/files?Revision=..&Recursive=..   (file list, sha256)
             GET /api/v1/models/{org}/{name}/repo?Revision=..&FilePath=..           (file bytes)
             GET /api/v1/models/{org}/{name}                                        (repo info)
Hugging Face: GET /api/models/{org}/{name}/revision/{rev}?blobs=true               (siblings, sizes, LFS)
             GET|HEAD /{org}/{name}/resolve/{rev}/{path}                            (file bytes)
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

LFS_SUFFIXES = (".safetensors", ".bin")
CHUNK = 256 * 1024
INVERT = bytes(255 - i for i in range(256))  # wrong bytes, same length


@dataclass
class Served:
    """One request as the server saw it."""

    method: str
    path: str
    range: str | None
    sent: int = 0


@dataclass
class Repo:
    folder: Path
    files: dict[str, Path] = field(default_factory=dict)
    sha256: dict[str, str] = field(default_factory=dict)
    git_sha1: dict[str, str] = field(default_factory=dict)
    commit: str = ""

    @classmethod
    def load(cls, folder: Path) -> Repo:
        repo = cls(folder)
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            rel = path.relative_to(folder).as_posix()
            data = path.read_bytes()
            repo.files[rel] = path
            repo.sha256[rel] = hashlib.sha256(data).hexdigest()
            repo.git_sha1[rel] = hashlib.sha1(f"blob {len(data)}\0".encode() + data).hexdigest()
        repo.commit = hashlib.sha1("".join(repo.sha256.values()).encode()).hexdigest()
        return repo


class QuietServer(ThreadingHTTPServer):
    """Clients that hang up mid-transfer are what the tests do on purpose: no tracebacks for those."""

    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        import sys

        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            super().handle_error(request, client_address)


class FakeHub:
    """Both hubs on one loopback port; start with ``with FakeHub(...) as hub``."""

    def __init__(self, repos: dict[str, Path]) -> None:
        loaded: dict[Path, Repo] = {}  # hash each folder once, however many ids serve it
        self.repos: dict[str, Repo] = {}
        for repo_id, folder in repos.items():
            if folder not in loaded:
                loaded[folder] = Repo.load(folder)
            self.repos[repo_id.lower()] = loaded[folder]
        self.cut_after: dict[str, int] = {}
        self.stall_after: dict[str, int] = {}
        self.corrupt: set[str] = set()
        self.corrupt_times: dict[str, int] = {}
        self.token: str | None = None
        self.requests: list[Served] = []
        self.stalled = threading.Event()  # set once a stalled transfer has sent its bytes
        self._release = threading.Event()
        self._lock = threading.Lock()
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            timeout = 30  # a client that vanishes cannot hold a thread for long

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                hub._handle(self, head=False)

            def do_HEAD(self) -> None:
                hub._handle(self, head=True)

        self.server = QuietServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, name="fake-hub", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> FakeHub:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)

    def release(self) -> None:
        """Let a stalled transfer end (its connection is dropped)."""
        self._release.set()

    def downloads_of(self, path: str) -> list[Served]:
        """The byte requests (not listings) for one file."""
        return [r for r in self.requests if r.path == path]

    def reset(self) -> None:
        """Back to a healthy hub with an empty log (between tests)."""
        self.cut_after.clear()
        self.stall_after.clear()
        self.corrupt.clear()
        self.corrupt_times.clear()
        self.token = None
        self.requests.clear()
        self.stalled.clear()
        self._release.clear()

    # ------------------------------------------------------------------------------------------

    def _take_corrupt_turn(self, rel: str) -> bool:
        """Whether this download of `rel` is one of the wrong ones counted in ``corrupt_times`` (under the lock)."""
        left = self.corrupt_times.get(rel, 0)
        if left:
            self.corrupt_times[rel] = left - 1
        return left > 0

    def _handle(self, request: BaseHTTPRequestHandler, head: bool) -> None:
        url = urlsplit(request.path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        if self.token and request.headers.get("Authorization") != f"Bearer {self.token}":
            return self._json(request, 401, {"Code": 401, "Message": "Unauthorized: login required"}, head)
        if match := re.fullmatch(r"/api/v1/models/([^/]+)/([^/]+)(/repo/files|/repo)?", url.path):
            return self._modelscope(request, match, query, head)
        if match := re.fullmatch(r"/api/models/([^/]+)/([^/]+)/revision/([^/]+)", url.path):
            return self._hf_info(request, match, head)
        if match := re.fullmatch(r"/([^/]+)/([^/]+)/resolve/([^/]+)/(.+)", url.path):
            return self._hf_file(request, match, head)
        return self._json(request, 404, {"Code": 404, "Message": f"no route {url.path}"}, head)

    def _repo(self, org: str, name: str) -> Repo | None:
        return self.repos.get(f"{unquote(org)}/{unquote(name)}".lower())

    def _modelscope(self, request, match: re.Match, query: dict[str, str], head: bool) -> None:
        repo = self._repo(match[1], match[2])
        if repo is None:
            body = {"Code": 10010205001, "Message": "model does not exist", "Success": False}
            return self._json(request, 404, body, head)
        if match[3] == "/repo/files":
            files = [
                {
                    "Name": Path(rel).name,
                    "Path": rel,
                    "Type": "blob",
                    "Size": path.stat().st_size,
                    "Sha256": repo.sha256[rel],
                    "Revision": repo.commit,
                    "IsLFS": rel.endswith(LFS_SUFFIXES),
                }
                for rel, path in repo.files.items()
            ]
            return self._json(request, 200, {"Code": 200, "Data": {"Files": files}, "Success": True}, head)
        if match[3] == "/repo":
            return self._file(request, repo, query.get("FilePath", ""), head)
        info = {"Code": 200, "Data": {"Name": match[2], "Path": match[1], "Revision": repo.commit}, "Success": True}
        return self._json(request, 200, info, head)

    def _hf_info(self, request, match: re.Match, head: bool) -> None:
        repo = self._repo(match[1], match[2])
        if repo is None:
            return self._json(request, 404, {"error": "Repository not found"}, head, {"X-Error-Code": "RepoNotFound"})
        siblings = []
        for rel, path in repo.files.items():
            size = path.stat().st_size
            sibling = {"rfilename": rel, "size": size, "blobId": repo.git_sha1[rel]}
            if rel.endswith(LFS_SUFFIXES):
                sibling["lfs"] = {"sha256": repo.sha256[rel], "size": size, "pointerSize": 134}
            siblings.append(sibling)
        model_id = f"{unquote(match[1])}/{unquote(match[2])}"
        info = {"id": model_id, "modelId": model_id, "sha": repo.commit, "private": False, "siblings": siblings}
        return self._json(request, 200, info, head)

    def _hf_file(self, request, match: re.Match, head: bool) -> None:
        repo = self._repo(match[1], match[2])
        if repo is None:
            return self._json(request, 404, {"error": "Repository not found"}, head, {"X-Error-Code": "RepoNotFound"})
        rel = unquote(match[4])
        extra = {"X-Repo-Commit": repo.commit, "ETag": f'"{repo.git_sha1.get(rel, "")}"'}
        if rel.endswith(LFS_SUFFIXES) and rel in repo.files:
            size = repo.files[rel].stat().st_size
            extra.update({"X-Linked-Etag": f'"{repo.sha256[rel]}"', "X-Linked-Size": str(size)})
        return self._file(request, repo, rel, head, extra)

    def _file(self, request, repo: Repo, rel: str, head: bool, extra: dict[str, str] | None = None) -> None:
        path = repo.files.get(rel)
        if path is None:
            headers = {"X-Error-Code": "EntryNotFound", **(extra or {})}
            return self._json(request, 404, {"Code": 404, "Message": "file not found"}, head, headers)
        size = path.stat().st_size
        start, status = 0, 200
        wanted = request.headers.get("Range")
        if wanted and (found := re.fullmatch(r"bytes=(\d+)-(\d*)", wanted.strip())):
            start, status = int(found[1]), 206
            if start >= size:
                return self._json(request, 416, {"Message": "range"}, head, {"Content-Range": f"bytes */{size}"})
        served = Served(request.command, rel, wanted)
        with self._lock:
            self.requests.append(served)
            cut = None if head else self.cut_after.pop(rel, None)
            stall = None if head else self.stall_after.pop(rel, None)
            wrong = rel in self.corrupt or (not head and self._take_corrupt_turn(rel))
        request.send_response(status)
        request.send_header("Content-Type", "application/octet-stream")
        request.send_header("Content-Length", str(size - start))
        request.send_header("Accept-Ranges", "bytes")
        if status == 206:
            request.send_header("Content-Range", f"bytes {start}-{size - 1}/{size}")
        for key, value in (extra or {}).items():
            request.send_header(key, value)
        request.end_headers()
        if head:
            return
        limit = cut if cut is not None else stall if stall is not None else None
        with path.open("rb") as handle:
            handle.seek(start)
            position = start
            while position < size:
                block = handle.read(CHUNK)
                if wrong:
                    block = block.translate(INVERT)
                if limit is not None and position + len(block) - start > limit:
                    block = block[: max(limit - (position - start), 0)]
                try:
                    request.wfile.write(block)
                    request.wfile.flush()
                except OSError:
                    return
                position += len(block)
                served.sent += len(block)
                if limit is not None and position - start >= limit:
                    break
        if stall is not None:
            self.stalled.set()
            self._release.wait(timeout=60)
        if limit is not None:
            request.close_connection = True
            with contextlib.suppress(OSError):
                request.connection.shutdown(2)

    @staticmethod
    def _json(request, status: int, body: object, head: bool, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        request.send_response(status)
        request.send_header("Content-Type", "application/json")
        request.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            request.send_header(key, value)
        request.end_headers()
        if not head:
            request.wfile.write(data)
