"""The port-forward listener and byte pump, against a real local HTTP server as the 'pod'."""
from __future__ import annotations

import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx

from minibuild.cluster.portforward import LocalForwarder, ready_pod


class _Echo(BaseHTTPRequestHandler):
    def log_message(self, *a):
        pass

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def test_forwarder_pumps_requests_both_ways():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Echo)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    opened = []

    def connect():
        opened.append(1)
        return socket.create_connection(srv.server_address)

    try:
        with LocalForwarder(connect) as fwd:
            payload = bytes(range(256)) * 4096          # 1 MiB, more than one buffer each way
            for _ in range(3):
                r = httpx.post(f"http://127.0.0.1:{fwd.port}/", content=payload, timeout=10,
                               headers={"Connection": "close"})
                assert r.status_code == 200 and r.content == payload
        assert len(opened) == 3                          # one stream per connection, like kubectl
    finally:
        srv.shutdown()
        srv.server_close()


def test_failed_stream_drops_only_that_connection():
    calls = []

    def connect():
        calls.append(1)
        raise OSError("upgrade request failed: 403")

    with LocalForwarder(connect) as fwd:
        for _ in range(2):
            try:
                httpx.get(f"http://127.0.0.1:{fwd.port}/", timeout=5)
            except httpx.HTTPError:
                pass
    assert len(calls) == 2


def test_ready_pod_choice():
    pods = [{"metadata": {"name": "a"}, "status": {"phase": "Pending"}},
            {"metadata": {"name": "b"}, "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "False"}]}},
            {"metadata": {"name": "c"}, "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}}]
    assert ready_pod(pods) == "c" and ready_pod(pods[:2]) is None
