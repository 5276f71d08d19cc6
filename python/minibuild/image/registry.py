"""A small OCI distribution client: requests with auth and retries, blobs, manifests.

Why our own (nix2container's idea): pushing a rebuilt server image should cost the bytes of the one
layer that changed, and pushing gigabytes over a real link must survive a dropped connection or a
registry's 503. This module is the request layer: every request goes through `request`, which answers
the registry's 401 challenge (Basic or bearer, auth.py) and retries transient failures - connection
errors, 408/429/5xx - with exponential backoff and jitter (`Retry`). Uploads (resumable chunks,
upload.py) and the push plan (push.py) sit on top. Secrets never appear in messages.
"""
from __future__ import annotations

import random
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import httpx

from .auth import AuthError, Credentials, credentials_for, parse_challenge
from .oci import MT_MANIFEST

TRANSIENT_STATUS = (408, 429, 500, 502, 503, 504)


class RegistryError(RuntimeError):
    """The registry answered something we cannot accept; the message has method, URL and status."""


class TransientError(RegistryError):
    """A failure worth retrying (dropped connection, 5xx); raised when retries are used up."""


@dataclass(frozen=True)
class Reference:
    host: str
    repo: str
    tag: str | None = None
    digest: str | None = None

    @classmethod
    def parse(cls, ref: str) -> "Reference":
        m = re.match(r"^(?P<host>[^/]+)/(?P<repo>[a-z0-9][a-z0-9._/-]*?)(?::(?P<tag>[\w][\w.-]{0,127}))?"
                     r"(?:@(?P<digest>sha256:[0-9a-f]{64}))?$", ref)
        if not m or ("." not in m["host"] and ":" not in m["host"] and m["host"] != "localhost"):
            raise ValueError(f"{ref!r} is not REGISTRY/REPO[:TAG][@sha256:...] (the registry host is required)")
        return cls(m["host"], m["repo"], m["tag"], m["digest"])

    def by_digest(self, digest: str) -> str:
        return f"{self.host}/{self.repo}@sha256:{digest}"


@dataclass(frozen=True)
class Retry:
    """How often and how patiently to retry a transient failure."""

    attempts: int = 6            # retries after the first try
    backoff: float = 1.0         # first wait (s); doubles per retry, with +-25 % jitter
    backoff_max: float = 30.0

    def wait(self, attempt: int) -> float:
        return min(self.backoff * 2 ** attempt, self.backoff_max) * random.uniform(0.75, 1.25)


@dataclass
class PushStats:
    requests: int = 0
    retries: int = 0
    blobs_present: int = 0
    blobs_mounted: int = 0
    blobs_uploaded: int = 0
    bytes_uploaded: int = 0      # bytes that reached the registry in accepted requests (resends counted once)
    bytes_sent: int = 0          # every byte put on the wire, failed attempts included
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, **kw: int) -> None:
        with self._lock:
            for k, v in kw.items():
                setattr(self, k, getattr(self, k) + v)

    def as_dict(self) -> dict[str, int]:
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_")}


@dataclass
class RegistryClient:
    host: str
    credentials: Credentials | None = None
    insecure: bool | None = None          # None: plain HTTP for 127.0.0.1/localhost only
    stats: PushStats = field(default_factory=PushStats)
    timeout: float = 300.0
    retry: Retry = field(default_factory=Retry)
    sleep: Callable[[float], None] = time.sleep

    def __post_init__(self) -> None:
        local = self.host.split(":")[0] in ("127.0.0.1", "localhost", "::1")
        scheme = "http" if (self.insecure if self.insecure is not None else local) else "https"
        self.base = f"{scheme}://{self.host}"
        self._http = httpx.Client(timeout=httpx.Timeout(self.timeout, connect=30.0), follow_redirects=True,
                                  limits=httpx.Limits(max_connections=32, max_keepalive_connections=16))
        self._auth: dict[str, str] = {}     # scope -> Authorization header value
        self._auth_lock = threading.Lock()

    @classmethod
    def for_host(cls, host: str, **kw: Any) -> "RegistryClient":
        return cls(host, credentials=credentials_for(host), **kw)

    def close(self) -> None:
        self._http.close()

    def url(self, path_or_url: str) -> str:
        return path_or_url if "://" in path_or_url else self.base + path_or_url

    # ---- requests with auth and retries ---------------------------------------------------------
    def send(self, method: str, url: str, scope: str, **kw: Any) -> httpx.Response:
        """One request (answering a 401 challenge once); transport errors propagate as httpx errors."""
        url = self.url(url)
        headers = dict(kw.pop("headers", {}) or {})
        for attempt in range(2):
            h = dict(headers)
            if scope in self._auth:
                h["Authorization"] = self._auth[scope]
            self.stats.add(requests=1)
            resp = self._http.request(method, url, headers=h, **kw)
            if resp.status_code != 401 or attempt == 1:
                break
            with self._auth_lock:
                self._authenticate(resp.headers.get("www-authenticate", ""), scope)
        if resp.status_code == 401:
            who = f"credentials from {self.credentials.source}" if self.credentials else "no credentials"
            raise AuthError(f"{self.host} refused {method} {httpx.URL(url).path} with {who} (401 unauthorized)")
        if resp.status_code == 403:
            raise AuthError(f"{self.host} denied {method} {httpx.URL(url).path} (403 forbidden)")
        return resp

    def request(self, method: str, url: str, scope: str, **kw: Any) -> httpx.Response:
        """send() with retries on dropped connections and 408/429/5xx (the body must be re-sendable)."""
        for attempt in range(self.retry.attempts + 1):
            try:
                resp = self.send(method, url, scope, **kw)
                if resp.status_code not in TRANSIENT_STATUS:
                    return resp
                why = f"{resp.status_code} {resp.text[:120]}"
            except httpx.TransportError as exc:
                why = f"{type(exc).__name__}: {exc}"
            if attempt == self.retry.attempts:
                raise TransientError(f"{self.host}: {method} {httpx.URL(self.url(url)).path} failed after "
                                     f"{attempt + 1} attempts (last: {why})")
            self.stats.add(retries=1)
            self.sleep(self.retry.wait(attempt))
        raise AssertionError("unreachable")

    def _authenticate(self, challenge: str, scope: str) -> None:
        scheme, params = parse_challenge(challenge)
        if scheme == "basic":
            if not self.credentials:
                raise AuthError(f"{self.host} requires credentials (Basic realm={params.get('realm', '?')}); "
                                f"none found for it (docker config.json auths, or ECR for ECR hosts)")
            self._auth[scope] = self.credentials.basic_header()
        elif scheme == "bearer":
            q = [("service", params.get("service", ""))] + [("scope", sc) for sc in scope.split(" ")]
            hdr = {"Authorization": self.credentials.basic_header()} if self.credentials else {}
            self.stats.add(requests=1)
            try:
                r = self._http.get(params["realm"], params=q, headers=hdr)
            except httpx.HTTPError as exc:
                raise AuthError(f"token endpoint {params['realm']} unreachable: {exc}") from exc
            if r.status_code != 200:
                raise AuthError(f"token endpoint {params['realm']} answered {r.status_code} for scope {scope}")
            body = r.json()
            token = body.get("token") or body.get("access_token")
            if not token:
                raise AuthError(f"token endpoint {params['realm']} returned no token")
            self._auth[scope] = f"Bearer {token}"
        else:
            raise AuthError(f"{self.host}: unsupported auth challenge {challenge!r}")

    @staticmethod
    def scope(repo: str, extra: str | None = None) -> str:
        return f"repository:{repo}:pull,push" + (f" repository:{extra}:pull" if extra else "")

    @staticmethod
    def check(resp: httpx.Response, ok: tuple[int, ...], what: str) -> httpx.Response:
        if resp.status_code not in ok:
            raise RegistryError(f"{what}: {resp.request.method} {resp.request.url.path} -> "
                                f"{resp.status_code} {resp.text[:300]}")
        return resp

    # ---- blobs and manifests -----------------------------------------------------------------------
    def has_blob(self, repo: str, digest: str) -> bool:
        r = self.request("HEAD", f"/v2/{repo}/blobs/sha256:{digest}", self.scope(repo))
        return r.status_code == 200

    def get_blob(self, repo: str, digest: str) -> bytes:
        return self.check(self.request("GET", f"/v2/{repo}/blobs/sha256:{digest}", self.scope(repo)),
                          (200,), f"blob {digest[:12]}").content

    def put_manifest(self, repo: str, tag_or_digest: str, manifest: bytes, digest: str) -> None:
        r = self.request("PUT", f"/v2/{repo}/manifests/{tag_or_digest}", self.scope(repo),
                         content=manifest, headers={"Content-Type": MT_MANIFEST})
        if r.status_code == 400 and "ImageTagAlreadyExists" in r.text:
            raise RegistryError(f"{self.host}/{repo}:{tag_or_digest} already names another image and the repository's "
                                "tags are immutable; push under a new tag (--push REGISTRY/NAMESPACE:TAG)")
        self.check(r, (201,), "manifest upload")
        got = r.headers.get("docker-content-digest")
        if got and got != f"sha256:{digest}":
            raise RegistryError(f"registry stored the manifest as {got}, expected sha256:{digest}")

    def get_manifest(self, repo: str, ref: str, accept: str = MT_MANIFEST) -> tuple[bytes, str]:
        r = self.check(self.request("GET", f"/v2/{repo}/manifests/{ref}", self.scope(repo),
                                    headers={"Accept": accept}), (200,), f"manifest {ref}")
        return r.content, r.headers.get("docker-content-digest", "")
