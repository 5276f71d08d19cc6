"""A local HTTP server speaking the Hugging Face hub's routes for model downloads (a test helper).

It serves one or more repositories from local directories the way `huggingface_hub` reads them:
`GET /api/models/{repo}/revision/{rev}` (repo info with the commit sha), `GET /api/models/{repo}/tree/{rev}`
(the file listing), `HEAD`/`GET /{repo}/resolve/{rev}/{path}` (metadata headers, bytes, `Range` for
resumed downloads). It records every request with its Authorization header, and can cut a file's first
download after N bytes (headers promise the whole file, N bytes are sent, the connection closes), so a test
sees the client resume with a Range request. (huggingface_hub writes in 10 MiB chunks: a cut before the
first full chunk makes it start that file over, a later cut makes it resume from the last whole chunk.)
"""
from __future__ import annotations

import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse


@dataclass
class Seen:
    method: str
    path: str
    authorization: str | None
    range: str | None


@dataclass
class FakeHub:
    repos: dict[str, Path]                         # "org/name" -> directory whose files the repo holds
    sha: str = "0123456789abcdef0123456789abcdef01234567"
    cut_once: dict[str, int] = field(default_factory=dict)   # file path -> bytes its first GET sends
    seen: list[Seen] = field(default_factory=list)
    url: str = ""
    _server: ThreadingHTTPServer | None = None

    def files(self, repo: str) -> dict[str, Path]:
        root = self.repos[repo]
        return {p.relative_to(root).as_posix(): p for p in sorted(root.rglob("*")) if p.is_file()}

    def start(self) -> "FakeHub":
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:   # quiet
                pass

            def do_HEAD(self) -> None:
                hub._handle(self, head=True)

            def do_GET(self) -> None:
                hub._handle(self, head=False)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    # ---- routes --------------------------------------------------------------------------------
    def _handle(self, h: BaseHTTPRequestHandler, head: bool) -> None:
        path = unquote(urlparse(h.path).path)
        self.seen.append(Seen(h.command, path, h.headers.get("Authorization"), h.headers.get("Range")))
        m = re.fullmatch(r"/api/models/([^/]+/[^/]+)/revision/([^/]+)", path)
        if m and m.group(1) in self.repos:
            files = self.files(m.group(1))
            return self._json(h, {"id": m.group(1), "modelId": m.group(1), "sha": self.sha, "private": False,
                                  "siblings": [{"rfilename": f} for f in files]})
        m = re.fullmatch(r"/api/models/([^/]+/[^/]+)/tree/([^/]+)(?:/.*)?", path)
        if m and m.group(1) in self.repos:
            return self._json(h, [{"type": "file", "oid": _oid(p), "size": p.stat().st_size, "path": f}
                                  for f, p in self.files(m.group(1)).items()])
        m = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
        if m and m.group(1) in self.repos and m.group(3) in self.files(m.group(1)):
            return self._file(h, self.files(m.group(1))[m.group(3)], m.group(3), head)
        self._json(h, {"error": "Repository not found"}, 404, {"X-Error-Code": "RepoNotFound"})

    def _json(self, h: BaseHTTPRequestHandler, body: object, status: int = 200, extra: dict | None = None) -> None:
        data = json.dumps(body).encode()
        h.send_response(status)
        for k, v in {"Content-Type": "application/json", "Content-Length": str(len(data)), **(extra or {})}.items():
            h.send_header(k, v)
        h.end_headers()
        h.wfile.write(data)

    def _file(self, h: BaseHTTPRequestHandler, p: Path, rel: str, head: bool) -> None:
        data = p.read_bytes()
        start = 0
        rng = h.headers.get("Range")
        if rng and (m := re.fullmatch(r"bytes=(\d+)-", rng.strip())):
            start = int(m.group(1))
        body = data[start:]
        h.send_response(206 if start else 200)
        h.send_header("Content-Length", str(len(body)))
        h.send_header("ETag", f'"{_oid(p)}"')
        h.send_header("X-Repo-Commit", self.sha)
        h.send_header("Accept-Ranges", "bytes")
        if start:
            h.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        h.end_headers()
        if head:
            return
        if rel in self.cut_once:
            h.wfile.write(body[:self.cut_once.pop(rel)])
            h.wfile.flush()
            h.close_connection = True
            h.connection.shutdown(2)
            return
        h.wfile.write(body)


def _oid(p: Path) -> str:
    return hashlib.sha1(p.read_bytes()).hexdigest()


def populate_cache(hub_dir: Path, repo: str, files: dict[str, Path], sha: str, revision: str = "main") -> Path:
    """Lay out `files` as a downloaded hub cache (`hub_dir/models--ORG--NAME/{blobs,snapshots,refs}`), as
    huggingface_hub writes it on any machine; returns the snapshot directory."""
    base = hub_dir / ("models--" + repo.replace("/", "--"))
    snap = base / "snapshots" / sha
    for rel, src in files.items():
        blob = base / "blobs" / _oid(src)
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(src.read_bytes())
        link = snap / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(Path("../" * (len(Path(rel).parts) + 1), "blobs", blob.name))
    (base / "refs").mkdir(parents=True, exist_ok=True)
    (base / "refs" / revision).write_text(sha)
    return snap
