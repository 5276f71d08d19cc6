"""Reach a pod's port from this machine, like `kubectl port-forward`, with the kubernetes client only.

A local listener on 127.0.0.1 accepts connections; each one gets its own port-forward stream to the
pod (kubernetes.stream.portforward, a websocket through the API server) and bytes are pumped both
ways until either side closes. The listener and pump take any `connect()` factory, so they are
tested against a plain TCP server; the websocket stream itself is the client library's.
"""
from __future__ import annotations

import contextlib
import select
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

from minibuild.cluster.settings import Plan, RolloutError
from minibuild.config import Config


def pump(a: Any, b: Any, bufsize: int = 65536) -> None:
    """Copy bytes between two connected sockets until one side closes."""
    try:
        while True:
            readable, _, _ = select.select([a, b], [], [], 60)
            if not readable:
                continue
            for src in readable:
                data = src.recv(bufsize)
                if not data:
                    return
                (b if src is a else a).sendall(data)
    except OSError:
        return
    finally:
        for s in (a, b):
            with contextlib.suppress(OSError):
                s.close()


class LocalForwarder:
    """127.0.0.1:<free port> -> connect() per accepted connection."""

    def __init__(self, connect: Callable[[], Any]):
        self.connect = connect
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.port = self.listener.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="port-forward", daemon=True)

    def __enter__(self) -> "LocalForwarder":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)   # wakes the blocked accept()
        with contextlib.suppress(OSError):
            self.listener.close()
        self._thread.join(timeout=5)

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                remote = self.connect()
            except Exception:   # the stream could not open: drop this connection, keep listening
                client.close()
                continue
            threading.Thread(target=pump, args=(client, remote), daemon=True).start()


def ready_pod(pods: list[dict[str, Any]]) -> str | None:
    """A Running pod whose Ready condition is True."""
    for p in pods:
        st = p.get("status") or {}
        if st.get("phase") == "Running" and any(c.get("type") == "Ready" and c.get("status") == "True"
                                                for c in st.get("conditions") or []):
            return p["metadata"]["name"]
    return None


@contextlib.contextmanager
def forward_to_deployment(cfg: Config, plan: Plan) -> Iterator[str]:
    """http://127.0.0.1:<port> forwarded to a ready pod of the plan's Deployment."""
    from kubernetes.stream import portforward

    from minibuild.cluster.kube_api import Kube

    kube = Kube()
    pod = ready_pod(kube.list("Pod", plan.namespace, f"app={plan.name}"))
    if pod is None:
        raise RolloutError(f"no ready pod of {plan.name} in {plan.namespace}: "
                           f"`invoke status --target {plan.target}`")

    def connect() -> Any:
        pf = portforward(kube.core.connect_get_namespaced_pod_portforward, pod, plan.namespace,
                         ports=str(plan.port))
        return pf.socket(plan.port)

    with LocalForwarder(connect) as fwd:
        yield f"http://127.0.0.1:{fwd.port}"
