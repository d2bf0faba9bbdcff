"""Loopback HTTP server that serves model files to the real download code in tests.

It speaks just enough of the Hugging Face Hub protocol for huggingface_hub 2.4
(``hf_hub_download``, ``snapshot_download``, ``HfApi.list_repo_files``,
``HfApi.model_info``) and serves plain release files with ``Range`` support. Stdlib only.

Recipe: huggingface_hub copies its env vars into ``huggingface_hub.constants`` at import,
so in-process tests must patch the constants (a subprocess only needs the env vars
HF_ENDPOINT, HF_HOME, HF_HUB_DISABLE_TELEMETRY=1 and, for offline, HF_HUB_OFFLINE=1):
``ENDPOINT`` (HfApi, repo_info, list_repo_*), ``HUGGINGFACE_CO_URL_TEMPLATE`` =
url + "/{repo_id}/resolve/{revision}/{filename}" (hf_hub_download), ``HF_HUB_CACHE``
(default cache_dir), ``HF_TOKEN_PATH`` (no real token), ``HF_HUB_DISABLE_TELEMETRY`` = True
(no /api/agent-harnesses request) and ``HF_HUB_OFFLINE`` (True: no request at all, cached
files only; read on every call, so it may be flipped mid-test). ``patch_hub`` does all that.
"""

from __future__ import annotations

import hashlib
import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit


def patch_hub(monkeypatch: Any, url: str, home: Any, offline: bool = False) -> None:
    """Point huggingface_hub (env and already-imported constants) at ``url``, cache in ``home``."""
    import huggingface_hub.constants as hf

    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    env = {
        "HF_ENDPOINT": url,
        "HF_HOME": str(home),
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_OFFLINE": "1" if offline else "0",
    }
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    monkeypatch.setattr(hf, "ENDPOINT", url)
    monkeypatch.setattr(hf, "HUGGINGFACE_CO_URL_TEMPLATE", url + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(hf, "HF_HUB_CACHE", f"{home}/hub")
    monkeypatch.setattr(hf, "HF_TOKEN_PATH", f"{home}/token")
    monkeypatch.setattr(hf, "HF_HUB_DISABLE_TELEMETRY", True)
    monkeypatch.setattr(hf, "HF_HUB_OFFLINE", offline)


class _Handler(BaseHTTPRequestHandler):
    """Routes requests to the owning FakeServer."""

    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        """Stay quiet."""

    def do_HEAD(self) -> None:
        self.server.owner._handle(self, "HEAD")

    def do_GET(self) -> None:
        self.server.owner._handle(self, "GET")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    owner: FakeServer

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Clients hanging up (and deliberate aborts) are expected: stay quiet."""


class FakeServer:
    """Fake Hub + release file host on 127.0.0.1."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str]] = []
        self.fail_after_bytes: dict[str, int] = {}
        self._repos: dict[str, dict[str, dict[str, bytes]]] = {}  # repo -> revision -> file -> data
        self._release: dict[str, bytes] = {}  # unquoted path -> data
        self._lock = threading.Lock()
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> FakeServer:
        """Bind an ephemeral port and serve in a daemon thread."""
        self._httpd = _Server(("127.0.0.1", 0), _Handler)
        self._httpd.owner = self
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Shut the server down and release the port."""
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:PORT``."""
        assert self._httpd is not None, "server not started"
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    @staticmethod
    def commit_for(repo_id: str, revision: str) -> str:
        """The stable 40-hex commit sha of ``repo_id`` at ``revision``."""
        return hashlib.sha1(f"{repo_id}@{revision}".encode()).hexdigest()

    def add_hub_file(self, repo_id: str, filename: str, data: bytes, revision: str = "main") -> str:
        """Register a file in a model repo; return the repo's commit sha."""
        with self._lock:
            self._repos.setdefault(repo_id, {}).setdefault(revision, {})[filename] = bytes(data)
        return self.commit_for(repo_id, revision)

    def add_release_file(self, path: str, data: bytes) -> str:
        """Serve ``data`` at ``url/path`` (matched raw or percent-decoded); return that URL."""
        with self._lock:
            self._release[unquote(path.lstrip("/"))] = bytes(data)
        return f"{self.url}/{path.lstrip('/')}"

    def count(self, method: str | None = None, contains: str = "") -> int:
        """Number of requests with this method (any if None) whose raw path contains ``contains``."""
        with self._lock:
            return sum(1 for m, p in self.requests if (method is None or m == method) and contains in p)

    def _handle(self, h: _Handler, method: str) -> None:
        with self._lock:
            self.requests.append((method, h.path))
        raw = urlsplit(h.path)
        path, query = raw.path, parse_qs(raw.query)
        try:
            if path.startswith("/api/models/"):
                self._api(h, method, path[len("/api/models/") :], query)
            elif path.startswith("/api/"):
                self._send_json(h, method, 404, {"error": "not found"})
            elif "/resolve/" in path:
                self._resolve(h, method, path)
            else:
                self._serve_release(h, method, unquote(path.lstrip("/")))
        except (TimeoutError, ConnectionError):
            h.close_connection = True

    def _find(self, repo_id: str, revision: str) -> tuple[str, dict[str, bytes]] | None:
        """Look up a revision by name or commit sha; return (commit, files)."""
        with self._lock:
            for rev, files in self._repos.get(repo_id, {}).items():
                if revision in (rev, self.commit_for(repo_id, rev)):
                    return self.commit_for(repo_id, rev), dict(files)
        return None

    def _resolve(self, h: _Handler, method: str, path: str) -> None:
        repo_part, _, rest = path.lstrip("/").partition("/resolve/")
        repo_id = unquote(repo_part)
        rev_raw, _, file_raw = rest.partition("/")
        if repo_id not in self._repos:
            return self._error(h, 401, "RepoNotFound", "Repository not found")
        found = self._find(repo_id, unquote(rev_raw))
        if found is None:
            return self._error(h, 404, "RevisionNotFound", "Invalid rev id")
        commit, files = found
        data = files.get(unquote(file_raw))
        if data is None:
            return self._error(h, 404, "EntryNotFound", "Entry not found", {"X-Repo-Commit": commit})
        headers = {"ETag": f'"{hashlib.sha256(data).hexdigest()}"', "X-Repo-Commit": commit}
        self._send_bytes(h, method, data, headers, None)

    def _api(self, h: _Handler, method: str, rest: str, query: dict[str, list[str]]) -> None:
        parts = rest.split("/")
        repo_id, tail = "/".join(parts[:2]), parts[2:]
        if repo_id not in self._repos:
            return self._error(h, 401, "RepoNotFound", "Repository not found")
        if not tail or (tail[0] == "revision" and len(tail) == 2):
            revision = unquote(tail[1]) if tail else "main"
            found = self._find(repo_id, revision)
            if found is None:
                return self._error(h, 404, "RevisionNotFound", "Invalid rev id")
            commit, files = found
            body: Any = {
                "id": repo_id,
                "modelId": repo_id,
                "sha": commit,
                "private": False,
                "siblings": [{"rfilename": name} for name in sorted(files)],
            }
        elif tail[0] == "tree" and len(tail) >= 2:
            found = self._find(repo_id, unquote(tail[1]))
            if found is None:
                return self._error(h, 404, "RevisionNotFound", "Invalid rev id")
            body = self._tree(found[1], unquote("/".join(tail[2:])), query)
        else:
            return self._error(h, 404, None, "not found")
        self._send_json(h, method, 200, body)

    @staticmethod
    def _tree(files: dict[str, bytes], prefix: str, query: dict[str, list[str]]) -> list[dict[str, Any]]:
        """Tree listing under ``prefix``, recursive or one level deep (with folders)."""
        recursive = query.get("recursive", ["false"])[0].lower() == "true"
        base = prefix.strip("/") + "/" if prefix.strip("/") else ""
        out: list[dict[str, Any]] = []
        folders: set[str] = set()
        for name in sorted(files):
            if not name.startswith(base):
                continue
            sub = name[len(base) :]
            if not recursive and "/" in sub:
                folders.add(base + sub.split("/")[0])
                continue
            data = files[name]
            blob = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
            sha256 = hashlib.sha256(data).hexdigest()
            out.append(
                {
                    "type": "file",
                    "path": name,
                    "size": len(data),
                    "oid": blob,
                    "lfs": {"oid": sha256, "size": len(data), "pointerSize": 134},
                }
            )
        for folder in sorted(folders):
            out.append({"type": "directory", "path": folder, "oid": hashlib.sha1(folder.encode()).hexdigest()})
        return out

    def _serve_release(self, h: _Handler, method: str, path: str) -> None:
        with self._lock:
            data = self._release.get(path)
        if data is None:
            return self._send_json(h, method, 404, {"error": "not found"})
        self._send_bytes(h, method, data, {"ETag": f'"{hashlib.sha256(data).hexdigest()}"'}, path)

    def _send_bytes(self, h: _Handler, method: str, data: bytes, headers: dict[str, str], fail_key: str | None) -> None:
        """Send ``data`` honouring ``Range: bytes=N-[M]``; abort early if asked to."""
        start, end, status = 0, len(data) - 1, 200
        rng = h.headers.get("Range", "")
        if rng.startswith("bytes="):
            first, _, last = rng[len("bytes=") :].split(",")[0].partition("-")
            start = int(first) if first else max(len(data) - int(last or 0), 0)
            end = min(int(last), len(data) - 1) if first and last else len(data) - 1
            if start >= len(data) > 0:
                return self._send_json(h, method, 416, {}, {"Content-Range": f"bytes */{len(data)}"})
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
        body = data[start : end + 1]
        h.send_response(status)
        for k, v in {
            **headers,
            "Accept-Ranges": "bytes",
            "Content-Length": str(len(body)),
            "Content-Type": "application/octet-stream",
        }.items():
            h.send_header(k, v)
        h.end_headers()
        if method == "HEAD":
            return
        limit: int | None = None
        if fail_key is not None:
            with self._lock:
                for key in list(self.fail_after_bytes):
                    if unquote(key.lstrip("/")) == fail_key:
                        limit = self.fail_after_bytes.pop(key)
                        break
        if limit is not None and limit < len(body):
            h.wfile.write(body[:limit])
            h.wfile.flush()
            h.close_connection = True
            h.connection.shutdown(socket.SHUT_RDWR)
            return
        h.wfile.write(body)

    @staticmethod
    def _error(h: _Handler, status: int, code: str | None, message: str, extra: dict[str, str] | None = None) -> None:
        headers = {"X-Error-Message": message, **({"X-Error-Code": code} if code else {}), **(extra or {})}
        FakeServer._send_json(h, h.command, status, {"error": message if code else "not found"}, headers)

    @staticmethod
    def _send_json(h: _Handler, method: str, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        raw = json.dumps(body).encode()
        h.send_response(status)
        for k, v in {**(headers or {}), "Content-Type": "application/json", "Content-Length": str(len(raw))}.items():
            h.send_header(k, v)
        h.end_headers()
        if method != "HEAD":
            h.wfile.write(raw)
