"""OCI image documents (config, manifest) and the on-disk OCI image layout.

Why here and small: the config and manifest are the only JSON whose bytes decide an image's digest.
They are serialised one way (sorted keys, compact, UTF-8) with a fixed `created` time and
deterministic history, so the same layers and settings always give the same manifest digest. The
layout (`oci-layout`, `index.json`, `blobs/sha256/...`) is what skopeo/umoci read and what the push
client uploads from; blobs are hard-linked from the store where possible (copies otherwise).
"""
from __future__ import annotations

import datetime as dt
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..hashing import digest_bytes, normalize_digest
from ..atomic import atomic_copy, atomic_write_bytes
from ..store import Store
from .tarlayer import Layer

MT_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_INDEX = "application/vnd.oci.image.index.v1+json"
MT_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
REF_NAME = "org.opencontainers.image.ref.name"


def canonical(doc: Any) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def created_at(epoch: int) -> str:
    return dt.datetime.fromtimestamp(epoch, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class ImageSpec:
    """Everything that goes into one image's config: layers (with history) and runtime settings."""

    layers: list[Layer]
    history: list[str]                       # created_by text, one per layer
    env: dict[str, str] = field(default_factory=dict)
    entrypoint: list[str] | None = None
    cmd: list[str] | None = None
    user: str | None = None
    workdir: str | None = None
    exposed_ports: list[str] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)
    epoch: int = 0

    def config_doc(self) -> dict[str, Any]:
        when = created_at(self.epoch)
        cfg: dict[str, Any] = {"Env": [f"{k}={v}" for k, v in sorted(self.env.items())]}
        if self.entrypoint:
            cfg["Entrypoint"] = self.entrypoint
        if self.cmd:
            cfg["Cmd"] = self.cmd
        if self.user:
            cfg["User"] = self.user
        if self.workdir:
            cfg["WorkingDir"] = self.workdir
        if self.exposed_ports:
            cfg["ExposedPorts"] = {p: {} for p in sorted(self.exposed_ports)}
        if self.labels:
            cfg["Labels"] = dict(sorted(self.labels.items()))
        return {
            "architecture": "amd64", "os": "linux", "created": when, "config": cfg,
            "rootfs": {"type": "layers", "diff_ids": [f"sha256:{lay.diff_id}" for lay in self.layers]},
            "history": [{"created": when, "created_by": h} for h in self.history],
        }


def descriptor(media_type: str, data_digest: str, size: int, annotations: dict[str, str] | None = None,
               ) -> dict[str, Any]:
    d: dict[str, Any] = {"mediaType": media_type, "digest": f"sha256:{normalize_digest(data_digest)}",
                         "size": size}
    if annotations:
        d["annotations"] = dict(sorted(annotations.items()))
    return d


@dataclass(frozen=True)
class BuiltImage:
    """The serialised documents of one image (their digests are the image's identity)."""

    config: bytes
    manifest: bytes
    layers: list[Layer]

    @property
    def config_digest(self) -> str:
        return digest_bytes(self.config)

    @property
    def digest(self) -> str:
        return digest_bytes(self.manifest)

    def blob_digests(self) -> list[str]:
        return [lay.digest for lay in self.layers] + [self.config_digest]


def assemble(spec: ImageSpec, annotations: dict[str, str]) -> BuiltImage:
    config = canonical(spec.config_doc())
    manifest = canonical({
        "schemaVersion": 2, "mediaType": MT_MANIFEST,
        "config": descriptor(MT_CONFIG, digest_bytes(config), len(config)),
        "layers": [descriptor(MT_LAYER_GZIP, lay.digest, lay.size) for lay in spec.layers],
        "annotations": dict(sorted(annotations.items())),
    })
    return BuiltImage(config=config, manifest=manifest, layers=list(spec.layers))


def save_documents(store: Store, image: BuiltImage) -> None:
    """Put config and manifest into the store so that an image is complete from the store alone."""
    store.put_bytes(image.config)
    store.put_bytes(image.manifest)


class Layout:
    """An OCI image layout directory; refs are stage names (org.opencontainers.image.ref.name)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.blobs = self.root / "blobs" / "sha256"

    def blob(self, digest: str) -> Path:
        return self.blobs / normalize_digest(digest)

    def _put_blob_from(self, src: Path, digest: str) -> None:
        dest = self.blob(digest)
        if dest.is_file() and dest.stat().st_size == src.stat().st_size:
            return
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".tmp-{dest.name}")
        try:
            if tmp.exists():
                tmp.unlink()
            os.link(src, tmp)                 # same filesystem: no copy of gigabytes
            os.replace(tmp, dest)
        except OSError:
            atomic_copy(src, dest)

    def write_image(self, store: Store, image: BuiltImage, ref: str) -> None:
        """Write every blob of image (from the store) and point ref at its manifest."""
        atomic_write_bytes(self.root / "oci-layout", canonical({"imageLayoutVersion": "1.0.0"}), fsync=False)
        for d in image.blob_digests() + [image.digest]:
            self._put_blob_from(store.blob_path(d), d)
        self.set_ref(ref, descriptor(MT_MANIFEST, image.digest, len(image.manifest)))

    def index(self) -> dict[str, Any]:
        try:
            doc = json.loads((self.root / "index.json").read_bytes())
            if isinstance(doc, dict) and isinstance(doc.get("manifests"), list):
                return doc
        except (OSError, ValueError):
            pass
        return {"schemaVersion": 2, "mediaType": MT_INDEX, "manifests": []}

    def set_ref(self, ref: str, desc: dict[str, Any]) -> None:
        idx = self.index()
        kept = [m for m in idx["manifests"] if (m.get("annotations") or {}).get(REF_NAME) != ref]
        desc = dict(desc, annotations={REF_NAME: ref})
        idx["manifests"] = sorted(kept + [desc], key=lambda m: m["annotations"][REF_NAME])
        atomic_write_bytes(self.root / "index.json", canonical(idx), fsync=False)

    def resolve(self, ref: str) -> dict[str, Any] | None:
        for m in self.index()["manifests"]:
            if (m.get("annotations") or {}).get(REF_NAME) == ref:
                return m
        return None

    def read_json(self, digest: str) -> Any:
        return json.loads(self.blob(digest).read_bytes())
