"""A fake Hugging Face Hub on 127.0.0.1 for the Hub tests: no internet, every request logged.

It speaks what huggingface_hub's client expects (see ``file_download.py``, ``hf_api.py`` and
``utils/_http.py`` of huggingface_hub):

* ``GET /api/models/{repo}[/revision/{rev}]``: model info JSON (``id``, ``sha``, ``siblings``);
* ``HEAD``/``GET /{repo}/resolve/{rev}/{file}``: ``X-Repo-Commit``, ``ETag``, ``Content-Length``,
  ``Accept-Ranges``; ``Range: bytes=a-b`` / ``a-`` / ``-n`` answered with 206 and
  ``Content-Range: bytes a-b/total`` (416 when unsatisfiable);
* errors carry the ``X-Error-Code`` header that decides huggingface_hub's exception type:
  ``RepoNotFound`` (401: missing, or private without the right token), ``GatedRepo``
  (401 without a token, 403 with one), ``RevisionNotFound`` (404), ``EntryNotFound`` (404);
* with ``cdn=True`` a repo's ``.safetensors`` files answer 302 to a second server (another
  origin, like the Hub's LFS CDN) with ``X-Linked-Etag`` / ``X-Linked-Size``;
* failure modes, per ``"org/name/file"`` key: ``interrupt`` (``"once"``: the first download
  sends half the bytes then closes the connection; ``"always"``: later attempts send no body
  at all), ``short`` (the download answers fewer bytes than the HEAD announced, with a
  matching Content-Length) and ``stall`` (seconds to sleep before answering a path that
  contains the given text), ``no_ranges`` (GETs of that file ignore ``Range``: 200, full body).

Every response closes its connection, so no idle keep-alive socket outlives a request.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

SHA_A = "0123456789abcdef0123456789abcdef01234567"
SHA_B = "89abcdef0123456789abcdef0123456789abcdef"


@dataclass
class FakeRepo:
    """One repo at one commit; ``refs`` maps branch and tag names to that commit."""

    files: dict[str, bytes]
    sha: str = SHA_A
    refs: dict[str, str] = field(default_factory=dict)
    gated: bool = False
    token: str | None = None
    """When set, the repo is private: only ``Authorization: Bearer <token>`` sees it."""
    cdn: bool = False
    siblings: list[str] | None = None
    """The file list announced by model info (default: ``files``)."""

    def resolve(self, rev: str) -> str | None:
        if rev == self.sha:
            return self.sha
        return self.refs.get(rev, self.sha if rev == "main" else None)

    def etag(self, name: str) -> str:
        return hashlib.sha256(self.files[name]).hexdigest()


@dataclass
class Logged:
    """One request as the server saw it."""

    method: str
    path: str
    range: str | None
    authorization: str | None
    status: int = 0
    sent: int = 0
    """Body bytes written."""
    start: float = 0.0
    end: float = 0.0


def repo_from_dir(folder: Path, **kwargs: object) -> FakeRepo:
    """A repo holding every file of a local checkpoint directory."""
    files = {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}
    return FakeRepo(files=files, **kwargs)  # type: ignore[arg-type]


_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


class FakeHub:
    """The fake Hub (and its CDN): ``start()``, ``url``, ``log``, ``stop()``."""

    def __init__(self) -> None:
        self.repos: dict[str, FakeRepo] = {}
        self.log: list[Logged] = []
        self.interrupt: dict[str, str] = {}
        self.short: set[str] = set()
        self.stall: dict[str, float] = {}
        self.no_ranges: set[str] = set()
        """Keys (``org/name/file``) whose GETs ignore ``Range`` and answer 200 in full."""
        self._attempts: dict[str, int] = {}
        self._lock = threading.Lock()
        self._servers: list[ThreadingHTTPServer] = []
        self.url = ""
        self.cdn_url = ""

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> FakeHub:
        for _ in range(2):
            server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
            server.daemon_threads = True
            threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True).start()
            self._servers.append(server)
        self.url = f"http://127.0.0.1:{self._servers[0].server_address[1]}"
        self.cdn_url = f"http://127.0.0.1:{self._servers[1].server_address[1]}"
        return self

    def stop(self) -> None:
        for server in self._servers:
            server.shutdown()
            server.server_close()
        self._servers = []

    # -- what the tests look at --------------------------------------------------------------

    def requests(self, method: str | None = None, contains: str = "") -> list[Logged]:
        return [
            r
            for r in list(self.log)
            if (method is None or r.method == method) and contains in r.path
        ]

    def downloads(self, suffix: str = ".safetensors") -> list[Logged]:
        """GETs of files ending in ``suffix`` (range reads included)."""
        return [
            r
            for r in self.requests("GET")
            if r.path.endswith(suffix) and ("/resolve/" in r.path or r.path.startswith("/cdn/"))
        ]

    # -- the handler -------------------------------------------------------------------------

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            timeout = 10

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                pass

            def do_GET(self) -> None:
                hub._serve(self, head=False)

            def do_HEAD(self) -> None:
                hub._serve(self, head=True)

        return Handler

    def _serve(self, h: BaseHTTPRequestHandler, head: bool) -> None:
        h.close_connection = True
        entry = Logged(
            "HEAD" if head else "GET",
            urlsplit(h.path).path,
            h.headers.get("Range"),
            h.headers.get("Authorization"),
            start=time.monotonic(),
        )
        self.log.append(entry)
        try:
            for text, seconds in self.stall.items():
                if text in entry.path:
                    time.sleep(seconds)
            self._route(h, head, entry)
        except (BrokenPipeError, ConnectionResetError):
            pass
        finally:
            entry.end = time.monotonic()

    def _route(self, h: BaseHTTPRequestHandler, head: bool, entry: Logged) -> None:
        path = entry.path
        parts = [unquote(p) for p in path.strip("/").split("/")]
        if path.startswith("/api/models/"):
            # /api/models/{org}/{name}[/revision/{rev}]
            repo_id = "/".join(parts[2:4])
            rev = parts[5] if len(parts) > 5 and parts[4] == "revision" else "main"
            repo = self._access(h, entry, repo_id)
            if repo is None:
                return
            sha = repo.resolve(rev)
            if sha is None:
                self._error(h, entry, 404, "RevisionNotFound", f"Invalid rev id: {rev}")
                return
            names = repo.siblings if repo.siblings is not None else sorted(repo.files)
            body = json.dumps(
                {
                    "id": repo_id,
                    "modelId": repo_id,
                    "sha": sha,
                    "private": repo.token is not None,
                    "gated": "auto" if repo.gated else False,
                    "siblings": [{"rfilename": n} for n in names],
                }
            ).encode()
            self._send(h, entry, 200, {"Content-Type": "application/json"}, body, head)
            return
        if path.startswith("/cdn/"):
            # /cdn/{org}/{name}/{sha}/{file}: no auth, like a signed CDN url
            repo = self.repos.get("/".join(parts[1:3]))
            name = "/".join(parts[4:])
            if repo is None or name not in repo.files:
                self._send(h, entry, 404, {}, b"not found", head)
                return
            key = "/".join(parts[1:3]) + "/" + name
            self._file(h, entry, repo, key, name, head, {"ETag": f'"{repo.etag(name)}"'})
            return
        if len(parts) >= 5 and parts[2] == "resolve":
            # /{org}/{name}/resolve/{rev}/{file...}
            repo_id, rev, name = "/".join(parts[:2]), parts[3], "/".join(parts[4:])
            repo = self._access(h, entry, repo_id)
            if repo is None:
                return
            sha = repo.resolve(rev)
            if sha is None:
                self._error(h, entry, 404, "RevisionNotFound", f"Invalid rev id: {rev}")
                return
            if name not in repo.files:
                self._error(
                    h, entry, 404, "EntryNotFound", "Entry not found", {"X-Repo-Commit": sha}
                )
                return
            etag = repo.etag(name)
            headers = {"X-Repo-Commit": sha}
            if repo.cdn and name.endswith(".safetensors"):
                headers.update(
                    {
                        "Location": f"{self.cdn_url}/cdn/{repo_id}/{sha}/{name}",
                        "X-Linked-Etag": f'"{etag}"',
                        "X-Linked-Size": str(len(repo.files[name])),
                        "ETag": '"pointer-etag"',
                    }
                )
                self._send(h, entry, 302, headers, b"", head)
                return
            headers["ETag"] = f'"{etag}"'
            self._file(h, entry, repo, f"{repo_id}/{name}", name, head, headers)
            return
        self._send(h, entry, 404, {}, b"no such route", head)

    def _access(self, h: BaseHTTPRequestHandler, entry: Logged, repo_id: str) -> FakeRepo | None:
        repo = self.repos.get(repo_id)
        auth = h.headers.get("Authorization")
        if repo is None or (repo.token is not None and auth != f"Bearer {repo.token}"):
            self._error(h, entry, 401, "RepoNotFound", "Repository not found")
            return None
        if repo.gated:
            status = 403 if auth else 401
            self._error(h, entry, status, "GatedRepo", "Access to this model is restricted")
            return None
        return repo

    def _file(
        self,
        h: BaseHTTPRequestHandler,
        entry: Logged,
        repo: FakeRepo,
        key: str,
        name: str,
        head: bool,
        headers: dict[str, str],
    ) -> None:
        data = repo.files[name]
        total = len(data)
        headers = {**headers, "Accept-Ranges": "bytes", "Content-Type": "application/octet-stream"}
        first, last = 0, total - 1
        status = 200
        if entry.range and not head and key not in self.no_ranges:
            match = _RANGE.match(entry.range.strip())
            if match is None:
                self._send(h, entry, 400, {}, b"bad range", head)
                return
            a, b = match.groups()
            if a == "":
                first, last = max(total - int(b or 0), 0), total - 1
            else:
                first, last = int(a), min(int(b), total - 1) if b else total - 1
            if first >= total or first > last:
                self._send(h, entry, 416, {"Content-Range": f"bytes */{total}"}, b"", head)
                return
            status = 206
            headers["Content-Range"] = f"bytes {first}-{last}/{total}"
        body = data[first : last + 1]
        if head:
            self._send(h, entry, 200, headers, data, head)
            return
        download = entry.range is None or entry.range.endswith("-")
        mode = self.interrupt.get(key) if download else None
        if mode is not None:
            with self._lock:
                attempt = self._attempts.get(key, 0)
                self._attempts[key] = attempt + 1
            if attempt == 0:
                self._send(h, entry, status, headers, body, head, send=len(body) // 2)
                return
            if mode == "always":
                self._send(h, entry, status, headers, body, head, send=0)
                return
        if key in self.short and download:
            body = body[: len(body) // 2]
            headers.pop("Content-Range", None)
            status = 200
        self._send(h, entry, status, headers, body, head)

    def _error(
        self,
        h: BaseHTTPRequestHandler,
        entry: Logged,
        status: int,
        code: str,
        message: str,
        extra: dict[str, str] | None = None,
    ) -> None:
        body = json.dumps({"error": message}).encode()
        headers = {
            "X-Error-Code": code,
            "X-Error-Message": message,
            "Content-Type": "application/json",
            **(extra or {}),
        }
        self._send(h, entry, status, headers, body, head=entry.method == "HEAD")

    def _send(
        self,
        h: BaseHTTPRequestHandler,
        entry: Logged,
        status: int,
        headers: dict[str, str],
        body: bytes,
        head: bool,
        send: int | None = None,
    ) -> None:
        """Answer with ``body`` (its full length announced); ``send`` bytes cut it short."""
        entry.status = status
        h.send_response(status)
        for key, value in headers.items():
            h.send_header(key, value)
        h.send_header("Content-Length", str(len(body)))
        h.send_header("Connection", "close")
        h.end_headers()
        if head:
            return
        chunk = body if send is None else body[:send]
        h.wfile.write(chunk)
        h.wfile.flush()
        entry.sent = len(chunk)
