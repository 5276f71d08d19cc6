"""A small OCI distribution client: push an image from a layout, uploading only what is missing.

Why our own (nix2container's idea): pushing a rebuilt server image should cost the bytes of the one
layer that changed. For each blob the client asks the registry first (HEAD), then tries a
cross-repository mount from a repository of the same registry it pushed the blob to before (no bytes
move), and only then uploads (POST + monolithic PUT with the digest). The manifest goes last, so a
reader never sees a manifest whose blobs are missing, and the registry's Docker-Content-Digest must
match ours. `stats` counts requests and bytes so tests and the bench can prove a second push
uploads nothing. Auth (Basic, bearer token) comes from auth.py; secrets never appear in messages.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import httpx

from .auth import AuthError, Credentials, credentials_for, parse_challenge
from .oci import MT_MANIFEST, Layout

CHUNK = 1 << 20


class RegistryError(RuntimeError):
    """The registry answered something we cannot accept; the message has method, URL and status."""


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


@dataclass
class PushStats:
    requests: int = 0
    blobs_present: int = 0
    blobs_mounted: int = 0
    blobs_uploaded: int = 0
    bytes_uploaded: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


@dataclass
class RegistryClient:
    host: str
    credentials: Credentials | None = None
    insecure: bool | None = None          # None: plain HTTP for 127.0.0.1/localhost only
    stats: PushStats = field(default_factory=PushStats)
    timeout: float = 300.0

    def __post_init__(self) -> None:
        local = self.host.split(":")[0] in ("127.0.0.1", "localhost", "::1")
        scheme = "http" if (self.insecure if self.insecure is not None else local) else "https"
        self.base = f"{scheme}://{self.host}"
        self._http = httpx.Client(timeout=self.timeout, follow_redirects=True)
        self._auth: dict[str, str] = {}     # scope -> Authorization header value

    @classmethod
    def for_host(cls, host: str, **kw: Any) -> "RegistryClient":
        return cls(host, credentials=credentials_for(host), **kw)

    def close(self) -> None:
        self._http.close()

    # ---- requests with auth ------------------------------------------------------------------
    def _request(self, method: str, url: str, scope: str, **kw: Any) -> httpx.Response:
        if url.startswith("/"):
            url = self.base + url
        for attempt in range(2):
            headers = dict(kw.pop("headers", {}) or {})
            if scope in self._auth:
                headers["Authorization"] = self._auth[scope]
            self.stats.requests += 1
            try:
                resp = self._http.request(method, url, headers=headers, **kw)
            except httpx.HTTPError as exc:
                raise RegistryError(f"{self.host}: {method} {httpx.URL(url).path} failed: {exc}") from exc
            kw["headers"] = {k: v for k, v in headers.items() if k != "Authorization"}
            if resp.status_code != 401 or attempt == 1:
                break
            self._authenticate(resp.headers.get("www-authenticate", ""), scope)
        if resp.status_code == 401:
            who = f"credentials from {self.credentials.source}" if self.credentials else "no credentials"
            raise AuthError(f"{self.host} refused {method} {httpx.URL(url).path} with {who} (401 unauthorized)")
        if resp.status_code == 403:
            raise AuthError(f"{self.host} denied {method} {httpx.URL(url).path} (403 forbidden)")
        return resp

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
            self.stats.requests += 1
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
    def _scope(repo: str, extra: str | None = None) -> str:
        return f"repository:{repo}:pull,push" + (f" repository:{extra}:pull" if extra else "")

    def _check(self, resp: httpx.Response, ok: tuple[int, ...], what: str) -> httpx.Response:
        if resp.status_code not in ok:
            raise RegistryError(f"{what}: {resp.request.method} {resp.request.url.path} -> "
                                f"{resp.status_code} {resp.text[:300]}")
        return resp

    # ---- blobs ---------------------------------------------------------------------------------
    def has_blob(self, repo: str, digest: str) -> bool:
        r = self._request("HEAD", f"/v2/{repo}/blobs/sha256:{digest}", self._scope(repo))
        return r.status_code == 200

    def mount_blob(self, repo: str, digest: str, from_repo: str) -> bool:
        """Cross-repository mount; True if the registry linked it (201), False if it declined."""
        r = self._request("POST", f"/v2/{repo}/blobs/uploads/", self._scope(repo, from_repo),
                          params={"mount": f"sha256:{digest}", "from": from_repo})
        if r.status_code == 201:
            return True
        self._check(r, (202,), f"mount of {digest[:12]} from {from_repo}")
        loc = r.headers.get("location")
        if loc:  # the registry opened an upload instead; cancel it, we upload ourselves
            self._request("DELETE", loc if "://" in loc else self.base + loc, self._scope(repo))
        return False

    def upload_blob(self, repo: str, digest: str, path: Path) -> None:
        r = self._check(self._request("POST", f"/v2/{repo}/blobs/uploads/", self._scope(repo)),
                        (202,), f"upload start for {digest[:12]}")
        loc = r.headers["location"]
        url = loc if "://" in loc else self.base + loc
        size = path.stat().st_size

        def chunks() -> Iterator[bytes]:
            with open(path, "rb") as f:
                while data := f.read(CHUNK):
                    yield data

        url += ("&" if "?" in url else "?") + f"digest=sha256:{digest}"   # keep the upload's own query
        self._check(self._request("PUT", url, self._scope(repo), content=chunks(), headers={"Content-Type": "application/octet-stream",
                                                             "Content-Length": str(size)}),
                    (201,), f"upload of {digest[:12]}")
        self.stats.blobs_uploaded += 1
        self.stats.bytes_uploaded += size

    def get_blob(self, repo: str, digest: str) -> bytes:
        return self._check(self._request("GET", f"/v2/{repo}/blobs/sha256:{digest}", self._scope(repo)),
                           (200,), f"blob {digest[:12]}").content

    # ---- manifests -----------------------------------------------------------------------------
    def put_manifest(self, repo: str, tag_or_digest: str, manifest: bytes, digest: str) -> None:
        r = self._check(self._request("PUT", f"/v2/{repo}/manifests/{tag_or_digest}", self._scope(repo),
                                      content=manifest, headers={"Content-Type": MT_MANIFEST}),
                        (201,), "manifest upload")
        got = r.headers.get("docker-content-digest")
        if got and got != f"sha256:{digest}":
            raise RegistryError(f"registry stored the manifest as {got}, expected sha256:{digest}")

    def get_manifest(self, repo: str, ref: str, accept: str = MT_MANIFEST) -> tuple[bytes, str]:
        r = self._check(self._request("GET", f"/v2/{repo}/manifests/{ref}", self._scope(repo),
                                      headers={"Accept": accept}), (200,), f"manifest {ref}")
        return r.content, r.headers.get("docker-content-digest", "")


def push_image(layout: Layout, ref_name: str, target: Reference, client: RegistryClient,
               mount_from: dict[str, str] | None = None) -> str:
    """Push the layout's image `ref_name` to target; returns the manifest digest (hex).

    mount_from maps blob digest -> a repository of the same registry known to hold it.
    """
    desc = layout.resolve(ref_name)
    if desc is None:
        raise RegistryError(f"{layout.root} has no image named {ref_name!r}")
    digest = desc["digest"].split(":", 1)[1]
    manifest = layout.blob(digest).read_bytes()
    doc = json.loads(manifest)
    blobs = [d["digest"].split(":", 1)[1] for d in doc["layers"]] + [doc["config"]["digest"].split(":", 1)[1]]
    for b in blobs:
        if client.has_blob(target.repo, b):
            client.stats.blobs_present += 1
            continue
        src = (mount_from or {}).get(b)
        if src and src != target.repo and client.mount_blob(target.repo, b, src):
            client.stats.blobs_mounted += 1
            continue
        client.upload_blob(target.repo, b, layout.blob(b))
    client.put_manifest(target.repo, target.tag or f"sha256:{digest}", manifest, digest)
    return digest
