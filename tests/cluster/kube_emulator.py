"""A small Kubernetes API server emulator over real HTTP, for the rollout client's tests.

No real API server (kind, k3s, kube-apiserver) can run on these machines. This speaks the REST shapes
the client uses - server-side apply (PATCH application/apply-patch+yaml with fieldManager; creates
missing objects and bumps metadata.generation when the spec changes), get, list with label selectors,
delete, pod logs, /version - with Kubernetes' Status errors, and checks the bearer token. There are
no controllers: a test plays the Deployment controller / scheduler / kubelet through `on_poll`, which
runs before each GET of a Deployment. kmock (PyPI) was tried first: its pytest plugin imports
pytest_asyncio at collection (breaking suites without it) and it answers 404 to server-side apply of
a new object, so it could not exercise the apply path.
"""
from __future__ import annotations

import copy
import json
import threading
import time
import uuid
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import yaml

Key = tuple[str, str, str]   # (plural, namespace, name)


def _status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code}


def _matches(obj: dict[str, Any], selector: str | None) -> bool:
    labels = (obj.get("metadata") or {}).get("labels") or {}
    for term in (selector or "").split(","):
        if term:
            k, _, v = term.partition("=")
            if labels.get(k) != v:
                return False
    return True


class KubeEmulator:
    def __init__(self, token: str = "test-token"):
        self.token = token
        self.objects: dict[Key, dict[str, Any]] = {}
        self.logs: dict[tuple[str, str], list[str]] = {}     # (namespace, pod) -> lines
        self.ended: set[tuple[str, str]] = set()             # containers that stopped: `follow` streams end
        self.requests: list[dict[str, Any]] = []
        self.on_poll: Callable[["KubeEmulator"], None] | None = None
        self.missing: set[str] = set()     # resource plurals this "cluster" does not serve (CRD not installed)
        self.lock = threading.RLock()
        self._version = 0
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> "KubeEmulator":
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()

    def kubeconfig(self, path: Path) -> Path:
        path.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "emu",
            "clusters": [{"name": "emu", "cluster": {"server": self.url}}],
            "users": [{"name": "u", "user": {"token": self.token}}],
            "contexts": [{"name": "emu", "context": {"cluster": "emu", "user": "u"}}]}))
        return path

    def put(self, plural: str, obj: dict[str, Any]) -> None:
        """Create or replace an object as a controller would (no generation bump)."""
        with self.lock:
            meta = obj["metadata"]
            self.objects[(plural, meta["namespace"], meta["name"])] = copy.deepcopy(obj)

    def get(self, plural: str, namespace: str, name: str) -> dict[str, Any] | None:
        with self.lock:
            return copy.deepcopy(self.objects.get((plural, namespace, name)))

    # --- the HTTP side ------------------------------------------------------------------------------
    def _apply(self, key: Key, body: dict[str, Any], manager: str) -> tuple[int, dict[str, Any]]:
        self._version += 1
        live = self.objects.get(key)
        if live is None:
            obj = copy.deepcopy(body)
            obj["metadata"].update(uid=str(uuid.uuid4()), generation=1, creationTimestamp="2026-11-23T10:00:00Z")
            code = 201
        else:
            obj = copy.deepcopy(live)
            if body.get("spec") != live.get("spec"):
                obj["metadata"]["generation"] = live["metadata"].get("generation", 1) + 1
            obj["spec"] = copy.deepcopy(body.get("spec"))
            for field in ("labels", "annotations"):
                obj["metadata"][field] = {**(live["metadata"].get(field) or {}), **(body["metadata"].get(field) or {})}
            code = 200
        obj["metadata"]["resourceVersion"] = str(self._version)
        obj["metadata"]["managedFields"] = [{"manager": manager, "operation": "Apply"}]
        self.objects[key] = obj
        return code, obj

    def _handler(self):
        emu = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, code: int, payload: Any, text: bool = False) -> None:
                data = payload.encode() if text else json.dumps(payload).encode()
                self.send_response(code)
                self.send_header("Content-Type", "text/plain" if text else "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _route(self, method: str) -> None:
                url = urlparse(self.path)
                query = {k: v[0] for k, v in parse_qs(url.query).items()}
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                ctype = self.headers.get("Content-Type", "")
                emu.requests.append({"method": method, "path": url.path, "query": query, "content_type": ctype})
                if self.headers.get("Authorization") != f"Bearer {emu.token}":
                    return self._send(401, _status(401, "Unauthorized", "Unauthorized"))
                if url.path == "/version":
                    return self._send(200, {"major": "1", "minor": "33", "gitVersion": "v1.33.0-emulated"})
                parts = url.path.strip("/").split("/")
                base = 2 if parts[0] == "api" else 3
                if len(parts) > base and parts[base] != "namespaces":   # cluster-scoped: .../PLURAL[/NAME]
                    parts = parts[:base] + ["namespaces", ""] + parts[base:]
                if len(parts) < base + 3 or parts[base + 2] in emu.missing:
                    return self._send(404, _status(404, "NotFound", "the server could not find the requested resource"))
                ns, plural = parts[base + 1], parts[base + 2]
                name = parts[base + 3] if len(parts) > base + 3 else None
                sub = parts[base + 4] if len(parts) > base + 4 else None
                if method == "GET" and sub == "log" and query.get("follow") == "true":
                    return self._follow(ns, name, int(query.get("tailLines", 10 ** 9)))
                with emu.lock:
                    if method == "GET" and plural == "deployments" and name and emu.on_poll:
                        emu.on_poll(emu)
                    key = (plural, ns, name or "")
                    if method == "GET" and sub == "log":
                        lines = emu.logs.get((ns, name))
                        if lines is None:
                            return self._send(400, _status(400, "BadRequest", f'container "server" in pod "{name}" has no logs'))
                        tail = int(query.get("tailLines", len(lines)))
                        return self._send(200, "\n".join(lines[-tail:]) + "\n", text=True)
                    if method == "GET" and name:
                        obj = emu.objects.get(key)
                        return self._send(200, obj) if obj else self._send(
                            404, _status(404, "NotFound", f'{plural} "{name}" not found'))
                    if method == "GET":
                        items = [o for (p, n, _), o in sorted(emu.objects.items())
                                 if p == plural and n == ns and _matches(o, query.get("labelSelector"))]
                        return self._send(200, {"kind": "List", "apiVersion": "v1", "items": items})
                    if method == "PATCH":
                        if ctype != "application/apply-patch+yaml":
                            return self._send(415, _status(415, "UnsupportedMediaType", f"only server-side apply here, got {ctype}"))
                        if not query.get("fieldManager"):
                            return self._send(422, _status(422, "Invalid", "PATCH apply requires fieldManager"))
                        body = yaml.safe_load(raw)
                        if body["metadata"]["name"] != name:
                            return self._send(400, _status(400, "BadRequest", "the name of the object does not match the URL"))
                        code, obj = emu._apply(key, body, query["fieldManager"])
                        return self._send(code, obj)
                    if method == "DELETE" and name:
                        if emu.objects.pop(key, None) is None:
                            return self._send(404, _status(404, "NotFound", f'{plural} "{name}" not found'))
                        return self._send(200, {"kind": "Status", "apiVersion": "v1", "status": "Success"})
                return self._send(405, _status(405, "MethodNotAllowed", method))

            def _follow(self, ns: str, pod: str, tail: int) -> None:
                """`logs?follow=true`: the last lines, then new ones as they are appended, until the container
                ends or the pod goes (the body ends when the connection closes, HTTP/1.0)."""
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.end_headers()
                with emu.lock:
                    lines = emu.logs.get((ns, pod)) or []
                    sent = len(lines)
                    self.wfile.write("".join(f"{x}\n" for x in (lines[-tail:] if tail else [])).encode())
                self.wfile.flush()
                while True:
                    with emu.lock:
                        lines = emu.logs.get((ns, pod)) or []
                        new, sent = lines[sent:], len(lines)
                        done = (ns, pod) in emu.ended or ("pods", ns, pod) not in emu.objects
                    if new:
                        self.wfile.write("".join(f"{x}\n" for x in new).encode())
                        self.wfile.flush()
                    elif done:
                        return
                    time.sleep(0.05)

            def do_GET(self) -> None:
                self._route("GET")

            def do_PATCH(self) -> None:
                self._route("PATCH")

            def do_DELETE(self) -> None:
                self._route("DELETE")

        return Handler
