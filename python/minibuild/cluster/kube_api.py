"""A thin layer over the kubernetes Python client's ApiClient: server-side apply, get, list, delete, logs.

We talk to the REST paths directly (JSON dicts in, JSON dicts out) rather than through the generated
typed models: rendered manifests are plain dicts, the waiter reads plain dicts, and server-side apply
(PATCH application/apply-patch+yaml, fieldManager, force) has no typed wrapper. Authentication,
TLS and the kubeconfig / in-cluster config stay the client's job.
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlencode

KINDS: dict[str, tuple[str, str]] = {   # kind -> (API prefix, plural)
    "Deployment": ("/apis/apps/v1", "deployments"),
    "ReplicaSet": ("/apis/apps/v1", "replicasets"),
    "Service": ("/api/v1", "services"),
    "PersistentVolumeClaim": ("/api/v1", "persistentvolumeclaims"),
    "Pod": ("/api/v1", "pods"),
    "Event": ("/api/v1", "events"),
    "ConfigMap": ("/api/v1", "configmaps"),
    "HorizontalPodAutoscaler": ("/apis/autoscaling/v2", "horizontalpodautoscalers"),
    "PodMonitor": ("/apis/monitoring.coreos.com/v1", "podmonitors"),            # kube-prometheus-stack
    "ServiceMonitor": ("/apis/monitoring.coreos.com/v1", "servicemonitors"),
    "ScaledObject": ("/apis/keda.sh/v1alpha1", "scaledobjects"),                # KEDA
    "NodePool": ("/apis/karpenter.sh/v1", "nodepools"),                         # Karpenter (cluster-scoped)
    "EC2NodeClass": ("/apis/karpenter.k8s.aws/v1", "ec2nodeclasses"),
    "StatefulSet": ("/apis/apps/v1", "statefulsets"),
    "ServiceAccount": ("/api/v1", "serviceaccounts"),
    "Role": ("/apis/rbac.authorization.k8s.io/v1", "roles"),
    "RoleBinding": ("/apis/rbac.authorization.k8s.io/v1", "rolebindings"),
}
CLUSTER_SCOPED = {"NodePool", "EC2NodeClass"}


class ClusterUnreachable(RuntimeError):
    """No kubeconfig / in-cluster config, or the API server does not answer."""


class ApiError(RuntimeError):
    def __init__(self, status: int, body: str):
        self.status = status
        try:
            msg = json.loads(body).get("message", body)
        except ValueError:
            msg = body
        super().__init__(f"HTTP {status}: {msg}")


class Kube:
    """One API server connection (from $KUBECONFIG / ~/.kube/config, else in-cluster)."""

    def __init__(self, api_client: Any | None = None):
        from kubernetes import client, config

        if api_client is None:
            conf = client.Configuration()
            try:   # $KUBECONFIG read now (the client reads it once at import otherwise)
                config.load_kube_config(config_file=os.environ.get("KUBECONFIG") or None, client_configuration=conf)
            except Exception as kube_exc:   # no kubeconfig: maybe we run inside a pod
                try:
                    config.load_incluster_config(client_configuration=conf)
                except Exception:
                    raise ClusterUnreachable(f"no Kubernetes configuration ({kube_exc})") from kube_exc
            conf.retries = 1
            api_client = client.ApiClient(conf)
        self.api = api_client
        self.core = client.CoreV1Api(api_client)

    def path(self, kind: str, namespace: str, name: str | None = None, sub: str | None = None) -> str:
        prefix, plural = KINDS[kind]
        p = f"{prefix}/{plural}" if kind in CLUSTER_SCOPED else f"{prefix}/namespaces/{namespace}/{plural}"
        return p + (f"/{name}" if name else "") + (f"/{sub}" if sub else "")

    def _call(self, method: str, path: str, query: dict[str, Any] | None, body: Any, content_type: str,
              timeout: Any) -> Any:
        """One API call; the response unread (its .response streams)."""
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        headers = {"Accept": "application/json", "Content-Type": content_type}
        _, url, headers, _, _ = self.api.param_serialize(method, path, header_params=headers,
                                                         auth_settings=["BearerToken"])
        if query:
            url += "?" + urlencode(query)
        data = json.dumps(body) if body is not None else None
        try:
            return self.api.call_api(method, url, header_params=headers, body=data, _request_timeout=timeout)
        except ApiException as exc:
            raise ApiError(exc.status, exc.body or str(exc.reason)) from exc
        except (HTTPError, OSError) as exc:
            raise ClusterUnreachable(f"API server {self.api.configuration.host} unreachable: {exc}") from exc

    def request(self, method: str, path: str, query: dict[str, Any] | None = None, body: Any = None,
                content_type: str = "application/json", raw: bool = False) -> Any:
        from urllib3.exceptions import HTTPError

        resp = self._call(method, path, query, body, content_type, 30)
        try:
            resp.read()
        except (HTTPError, OSError) as exc:
            raise ClusterUnreachable(f"API server {self.api.configuration.host} unreachable: {exc}") from exc
        if resp.status >= 400:
            raise ApiError(resp.status, resp.data.decode(errors="replace"))
        text = resp.data.decode(errors="replace")
        return text if raw else (json.loads(text) if text else None)

    def ping(self) -> str:
        """The server's version (raises ClusterUnreachable)."""
        try:
            return self.request("GET", "/version").get("gitVersion", "?")
        except ApiError as exc:
            raise ClusterUnreachable(str(exc)) from exc

    def apply(self, obj: dict[str, Any], field_manager: str) -> dict[str, Any]:
        """Server-side apply: the server merges our fields, owned by `field_manager`, taking conflicts."""
        meta = obj["metadata"]
        return self.request("PATCH", self.path(obj["kind"], meta.get("namespace", ""), meta["name"]),
                            {"fieldManager": field_manager, "force": "true"}, obj,
                            content_type="application/apply-patch+yaml")

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return self.request("GET", self.path(kind, namespace, name))
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise

    def list(self, kind: str, namespace: str, selector: str | None = None,
             fields: str | None = None) -> list[dict[str, Any]]:
        query = {k: v for k, v in (("labelSelector", selector), ("fieldSelector", fields)) if v}
        return self.request("GET", self.path(kind, namespace), query or None).get("items") or []

    def delete(self, kind: str, namespace: str, name: str) -> None:
        try:
            self.request("DELETE", self.path(kind, namespace, name), body={"propagationPolicy": "Background"})
        except ApiError as exc:
            if exc.status != 404:
                raise

    def pod_logs(self, namespace: str, pod: str, tail: int, previous: bool = False) -> list[str]:
        """The last lines of a pod's server container ([] when there are none yet)."""
        query = {"container": "server", "tailLines": str(tail)}
        if previous:
            query["previous"] = "true"
        try:
            return self.request("GET", self.path("Pod", namespace, pod, "log"), query, raw=True).splitlines()
        except ApiError:
            return []

    def follow_logs(self, namespace: str, pod: str, tail: int) -> Iterator[str]:
        """`kubectl logs -f`: the last `tail` lines, then each new line until the container stops."""
        query = {"container": "server", "tailLines": str(tail), "follow": "true"}
        resp = self._call("GET", self.path("Pod", namespace, pod, "log"), query, None, "application/json", (10, None))
        if resp.status >= 400:
            raise ApiError(resp.status, resp.read().decode(errors="replace"))
        pending = b""
        try:
            for chunk in resp.response.stream(4096, decode_content=True):
                pending += chunk
                *whole, pending = pending.split(b"\n")
                for line in whole:
                    yield line.decode(errors="replace")
        finally:
            resp.response.release_conn()
        if pending:
            yield pending.decode(errors="replace")
