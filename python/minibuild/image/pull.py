"""Registry bases (`base: {kind: registry}`): resolve a tag to a digest once, then pull by digest.

Why: the h100-registry profile starts from a published image (python:3.13-trixie). Like every other
input it must not float: `lock_registry_base` resolves the tag to a manifest digest into the lock
file (committed), and a build pulls exactly that digest - manifest, config and layers each verified
against their sha256 and kept in the store, so a base is downloaded once. The base's layers are
reused as they are (their compressed bytes and diff_ids come from the base's own config), its
Env/history carry over into our stages.
"""
from __future__ import annotations

import json
from pathlib import Path

from ..hashing import digest_bytes
from ..atomic import atomic_write_bytes
from ..store import Store
from .registry import Reference, RegistryClient
from .tarlayer import Layer

ACCEPT = ", ".join(["application/vnd.oci.image.index.v1+json", "application/vnd.oci.image.manifest.v1+json",
                    "application/vnd.docker.distribution.manifest.list.v2+json",
                    "application/vnd.docker.distribution.manifest.v2+json"])
DOCKER_HUB = {"docker.io": "registry-1.docker.io", "index.docker.io": "registry-1.docker.io"}


class PullError(RuntimeError):
    """A registry base cannot be pulled as pinned (unresolved lock, digest mismatch, no amd64 image)."""


def _client(ref: Reference) -> RegistryClient:
    return RegistryClient.for_host(DOCKER_HUB.get(ref.host, ref.host))


def _fetch_verified(store: Store, client: RegistryClient, repo: str, digest: str, manifest: bool) -> bytes:
    if store.has_blob(digest):
        return store.read_blob(digest)
    data = client.get_manifest(repo, f"sha256:{digest}", ACCEPT)[0] if manifest else client.get_blob(repo, digest)
    if digest_bytes(data) != digest:
        raise PullError(f"{repo}@sha256:{digest}: the registry sent other bytes; rejected")
    store.put_bytes(data)
    return data


def lock_registry_base(ref_text: str, lock_path: Path) -> str:
    """Resolve ref's tag to its manifest digest and write the lock; returns the digest (hex)."""
    ref = Reference.parse(ref_text)
    client = _client(ref)
    try:
        body, _ = client.get_manifest(ref.repo, ref.tag or "latest", ACCEPT)
    finally:
        client.close()
    digest = digest_bytes(body)
    doc = {"version": 1, "kind": "registry", "ref": ref_text, "digest": f"sha256:{digest}"}
    atomic_write_bytes(lock_path, (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode(), fsync=False)
    return digest


def pull_base(store: Store, lock_path: Path) -> tuple[list[Layer], list[str], dict[str, str], str]:
    """(layers, history, env, manifest digest) of the locked base, pulled into the store if needed."""
    try:
        lock = json.loads(lock_path.read_text())
    except (OSError, ValueError) as exc:
        raise PullError(f"{lock_path}: cannot read the base lock ({exc})") from exc
    if lock.get("status") or not str(lock.get("digest", "")).startswith("sha256:"):
        raise PullError(f"base {lock.get('ref', '?')} ({lock_path.name}) is "
                        f"{lock.get('status') or 'not pinned to a digest'}; resolve it with `invoke image --lock` "
                        "on a machine that reaches its registry - the build does not float to a tag")
    ref = Reference.parse(lock["ref"])
    digest = lock["digest"].split(":", 1)[1]
    client = _client(ref)
    try:
        doc = json.loads(_fetch_verified(store, client, ref.repo, digest, manifest=True))
        if "manifests" in doc:   # an index: the linux/amd64 image
            pick = [m for m in doc["manifests"] if (m.get("platform") or {}).get("architecture") == "amd64"
                    and (m.get("platform") or {}).get("os") == "linux"]
            if not pick:
                raise PullError(f"{lock['ref']}: no linux/amd64 image in its index")
            digest = pick[0]["digest"].split(":", 1)[1]
            doc = json.loads(_fetch_verified(store, client, ref.repo, digest, manifest=True))
        config = json.loads(_fetch_verified(store, client, ref.repo, doc["config"]["digest"].split(":", 1)[1],
                                            manifest=False))
        diff_ids = [d.split(":", 1)[1] for d in config["rootfs"]["diff_ids"]]
        layers = []
        for desc, diff_id in zip(doc["layers"], diff_ids, strict=True):
            if "gzip" not in desc["mediaType"]:
                raise PullError(f"{lock['ref']}: layer media type {desc['mediaType']} is not supported")
            d = desc["digest"].split(":", 1)[1]
            _fetch_verified(store, client, ref.repo, d, manifest=False)
            layers.append(Layer(d, int(desc["size"]), diff_id))
    finally:
        client.close()
    history = [h.get("created_by", "") for h in config.get("history", []) if not h.get("empty_layer")]
    if len(history) != len(layers):
        history = [f"{lock['ref']} layer {i}" for i in range(len(layers))]
    env = dict(e.split("=", 1) for e in (config.get("config") or {}).get("Env") or [] if "=" in e)
    return layers, history, env, digest

