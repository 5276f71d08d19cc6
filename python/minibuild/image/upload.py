"""Uploading one blob so that a multi-GB layer survives a real link.

Why chunks: a monolithic PUT of 3 GB that drops at 2.9 GB starts over. A blob larger than one chunk
goes up as PATCH requests with `Content-Range` (OCI distribution spec, chunked upload); when one
fails - the connection dropped mid-body, or the registry answered 5xx - the client asks the registry
how much it holds (`GET <upload URL>` -> `Range: 0-N`) and continues from there; if the registry lost
the session, the blob starts over in a new one. Every wait backs off exponentially (registry.Retry).
The last chunk travels with the closing `PUT ?digest=` (ECR answers an empty closing PUT with 500).

Registry rules (`UploadRules`, data in build_config.yaml images.push): ECR takes parts of 5-10 MiB
(every part but the last >= 5 MiB) and at most 4,200 of them per layer, answers PATCH with 201
instead of 202, and (with blob mounting enabled, `aws ecr put-account-setting --name BLOB_MOUNTING
--value ENABLED`) mounts only blobs a manifest in the source repository references - a declined
mount answers 202 with an upload session, which we then use rather than cancel.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import httpx

from ..config import PushConfig
from .auth import ECR_HOST
from .registry import TRANSIENT_STATUS, RegistryClient, RegistryError, TransientError

MIB = 1 << 20


@dataclass(frozen=True)
class UploadRules:
    chunk: int = 64 * MIB        # bytes per PATCH; 0 = one monolithic PUT per blob
    min_chunk: int = 0
    max_parts: int = 0           # 0 = no limit
    parallel: int = 4

    @classmethod
    def for_host(cls, host: str, push_cfg: PushConfig | None = None) -> "UploadRules":
        cfg = push_cfg or PushConfig()
        lim = cfg.ecr if ECR_HOST.match(host) else cfg.limits
        return cls(chunk=int(lim.chunk_mib * MIB), min_chunk=int(lim.min_chunk_mib * MIB), max_parts=lim.max_parts,
                   parallel=cfg.parallel)

    def chunk_for(self, size: int) -> int:
        if self.chunk <= 0 or size <= self.chunk:
            return 0
        if self.max_parts and -(-size // self.chunk) > self.max_parts:
            raise RegistryError(f"a {size / 1e9:.1f} GB blob needs more than {self.max_parts} parts of "
                                f"{self.chunk // MIB} MiB, the registry's limit; split the layer")
        return max(self.chunk, self.min_chunk)


def _file_chunks(path: Path, start: int, end: int, sent: Callable[[int], None]) -> Iterator[bytes]:
    with open(path, "rb") as f:
        f.seek(start)
        left = end - start
        while left > 0:
            data = f.read(min(MIB, left))
            if not data:
                raise RegistryError(f"{path} ended early (expected {end} bytes)")
            left -= len(data)
            sent(len(data))
            yield data


class BlobUpload:
    """One blob's upload into `repo`, resumable; `run()` returns when the registry holds it."""

    def __init__(self, client: RegistryClient, repo: str, digest: str, path: Path, rules: UploadRules,
                 progress: Any, session: str | None = None) -> None:
        self.client, self.repo, self.digest, self.path, self.rules = client, repo, digest, path, rules
        self.progress, self.session = progress, session
        self.size = path.stat().st_size
        self.shown = 0                   # bytes of this blob shown as done on the progress bar

    def _start(self) -> str:
        r = self.client.check(self.client.request("POST", f"/v2/{self.repo}/blobs/uploads/", self.client.scope(self.repo)),
                              (202,), f"upload start for {self.digest[:12]}")
        return r.headers["location"]

    def _held(self, url: str) -> int | None:
        """Bytes the registry holds for the session (from its Range header), None if it lost it."""
        try:
            r = self.client.request("GET", url, self.client.scope(self.repo))
        except TransientError:
            return None
        if r.status_code not in (200, 204):
            return None
        rng = r.headers.get("range", "")
        end = int(rng.split("-", 1)[1]) if "-" in rng else -1
        return end + 1 if end > 0 else 0          # distribution says "0-0" for an empty upload

    def _send(self, method: str, url: str, start: int, end: int, final: bool) -> httpx.Response:
        headers = {"Content-Type": "application/octet-stream", "Content-Length": str(end - start)}
        if not final:
            headers["Content-Range"] = f"{start}-{end - 1}"
        if final:
            url = self.client.url(url)
            url += ("&" if "?" in url else "?") + f"digest=sha256:{self.digest}"   # keep the upload's own query
        body = _file_chunks(self.path, start, end, self._sent)
        return self.client.send(method, url, self.client.scope(self.repo), content=body, headers=headers)

    def _sent(self, n: int) -> None:
        self.client.stats.add(bytes_sent=n)
        self.shown += n
        self.progress.advance(n)

    def _rewind(self, to: int) -> None:
        """Show `to` bytes as done (after a failure: what the registry really holds)."""
        self.progress.advance(to - self.shown)
        self.shown = to

    def run(self) -> None:
        retry = self.client.retry
        chunk = self.rules.chunk_for(self.size)
        url, offset, failures = self.session, 0, 0
        while True:
            try:
                if url is None:
                    url, offset = self._start(), 0
                    self._rewind(0)
                if chunk and self.size - offset > chunk:          # a PATCH of one chunk
                    end = offset + chunk
                    r = self._send("PATCH", url, offset, end, final=False)
                    if r.status_code in (201, 202):               # ECR answers 201
                        self.client.stats.add(bytes_uploaded=end - offset)
                        url, offset = r.headers.get("location", url), end
                        continue
                else:                                              # the rest (or all) with the closing PUT
                    r = self._send("PUT", url, offset, self.size, final=True)
                    if r.status_code == 201:
                        self.client.stats.add(bytes_uploaded=self.size - offset, blobs_uploaded=1)
                        return
                if r.status_code not in TRANSIENT_STATUS + (416,):    # 416: ask where it stands
                    raise RegistryError(f"upload of {self.digest[:12]} to {self.repo}: {r.request.method} -> "
                                        f"{r.status_code} {r.text[:300]}")
                why = f"{r.status_code}"
            except httpx.TransportError as exc:
                why = f"{type(exc).__name__}: {exc}"
            except TransientError as exc:
                why = str(exc)
            failures += 1
            if failures > retry.attempts:
                raise TransientError(f"upload of {self.digest[:12]} ({self.size / 1e6:,.1f} MB) to {self.client.host}/"
                                     f"{self.repo} failed {failures} times (last: {why})")
            self.client.stats.add(retries=1)
            self.client.sleep(retry.wait(failures - 1))
            if self.client.has_blob(self.repo, self.digest):       # the closing PUT landed after all
                self.client.stats.add(blobs_uploaded=1)
                self._rewind(self.size)
                return
            held = self._held(url) if url else None
            if held is None or held > self.size:
                url = None                                         # session lost: start the blob over
            else:
                offset = held
                self._rewind(held)


def mount_or_session(client: RegistryClient, repo: str, digest: str, from_repo: str) -> tuple[bool, str | None]:
    """Cross-repository mount: (True, None) if linked; (False, upload URL) if the registry declined
    and opened a session instead (OCI spec; ECR does so for blobs no manifest there references)."""
    r = client.request("POST", f"/v2/{repo}/blobs/uploads/", client.scope(repo, from_repo),
                       params={"mount": f"sha256:{digest}", "from": from_repo})
    if r.status_code == 201:
        return True, None
    client.check(r, (202,), f"mount of {digest[:12]} from {from_repo}")
    return False, r.headers.get("location")

