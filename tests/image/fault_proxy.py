"""An HTTP/1.1 proxy between the push client and a real docker-registry that injects faults on cue.

Every client request is forwarded on its own upstream connection (`Connection: close` both ways),
so faults hit exactly the request a rule names: `drop` forwards the head and the first N body bytes
to the registry and then closes both sockets (the registry sees a truncated body, the client a dead
connection - a link failing mid-blob); `503` answers without forwarding (a registry having a bad
moment). Rules are (method, nth request of that method, action); `log` records what happened.
"""
from __future__ import annotations

import socket
import threading
from dataclasses import dataclass, field

from image_helpers import free_port


@dataclass
class Rule:
    method: str
    nth: int                  # 1-based count among requests of this method
    action: str               # "drop" | "503"
    after_bytes: int = 0      # drop: body bytes forwarded before the cut


@dataclass
class FaultProxy:
    upstream: tuple[str, int]
    rules: list[Rule] = field(default_factory=list)
    log: list[tuple[str, str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        self._counts: dict[str, int] = {}
        self._lock = threading.Lock()
        self._srv = socket.create_server(("127.0.0.1", self.port))
        self._stop = False
        threading.Thread(target=self._serve, daemon=True).start()

    def close(self) -> None:
        self._stop = True
        self._srv.close()

    def faults(self, action: str) -> int:
        return sum(1 for _, _, a in self.log if a == action)

    def _serve(self) -> None:
        while not self._stop:
            try:
                conn, _ = self._srv.accept()
            except OSError:
                return
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    @staticmethod
    def _read_head(conn: socket.socket) -> tuple[bytes, bytes]:
        buf = b""
        while b"\r\n\r\n" not in buf:
            data = conn.recv(65536)
            if not data:
                raise ConnectionError("client closed")
            buf += data
        head, _, rest = buf.partition(b"\r\n\r\n")
        return head, rest

    def _one(self, conn: socket.socket) -> None:
        try:
            head, body = self._read_head(conn)
            lines = head.decode("latin-1").split("\r\n")
            method, path, _ = lines[0].split(" ", 2)
            headers = [ln for ln in lines[1:] if not ln.lower().startswith("connection:")]
            length = next((int(ln.split(":", 1)[1]) for ln in headers if ln.lower().startswith("content-length:")), 0)
            with self._lock:
                n = self._counts[method] = self._counts.get(method, 0) + 1
            rule = next((r for r in self.rules if r.method == method and r.nth == n), None)
            if rule and rule.action == "503":
                while len(body) < length:
                    body += conn.recv(1 << 20) or b""
                conn.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                self.log.append((method, path, "503"))
                return
            up = socket.create_connection(self.upstream)
            up.sendall("\r\n".join([lines[0], *headers, "Connection: close", "", ""]).encode("latin-1"))
            sent = 0
            limit = min(rule.after_bytes, length) if rule and rule.action == "drop" else length
            while sent < limit:
                if not body:
                    body = conn.recv(1 << 20)
                    if not body:
                        break
                take = body[:limit - sent]
                up.sendall(take)
                sent += len(take)
                body = body[len(take):]
            if rule and rule.action == "drop":
                self.log.append((method, path, "drop"))
                for s in (up, conn):
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")   # RST, not FIN
                    s.close()
                return
            while data := up.recv(1 << 20):
                conn.sendall(data)
            up.close()
            self.log.append((method, path, "ok"))
        except OSError:
            pass
        finally:
            try:
                conn.close()
            except OSError:
                pass
