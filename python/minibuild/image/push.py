"""Pushing images: each stage to its own repository, each blob only where it is missing.

Why this plan: the stages share their lower layers, so pushing bottom-up - essentials to
`{registry}/{prefix}essentials`, then cuda, then server - lets every upper stage *mount* the layers
its parent's repository already holds (a cross-repository mount moves no bytes) and upload only its
own. For each blob: HEAD (present? skip), else mount from a repository of the same registry the store
remembers holding it (`meta/registry-blobs/<host>`, written after every push), else upload
(upload.py: resumable chunks, retries). Uploads run `rules.parallel` at a time under one progress bar
(bytes, bytes/s, ETA). The manifest goes last, so a reader never sees a manifest whose blobs are
missing; the registry's Docker-Content-Digest must equal ours.
"""
from __future__ import annotations

import json
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from .. import ui
from ..store import Store
from .oci import Layout
from .registry import PushStats, Reference, RegistryClient, RegistryError
from .upload import BlobUpload, UploadRules, mount_or_session


@dataclass(frozen=True)
class PushTarget:
    """Where stages go: `host/namespace/{prefix}{stage}:tag`."""

    host: str
    namespace: str
    tag: str
    prefix: str = ""

    def reference(self, stage: str) -> Reference:
        repo = f"{self.namespace}/{self.prefix}{stage}" if self.namespace else f"{self.prefix}{stage}"
        return Reference(self.host, repo, self.tag)


def parse_target(text: str, default_registry: str, prefix: str, default_tag: str) -> PushTarget:
    """`REGISTRY[/NAMESPACE][:TAG]` or `default[:TAG]` (build_config registry.default) -> PushTarget."""
    base, tag = text, default_tag
    head, _, tail = text.rpartition("/")
    if head and ":" in tail:                       # a tag after the last path segment
        base, tag = f"{head}/{tail.split(':', 1)[0]}", tail.split(":", 1)[1]
    elif text.startswith("default:"):
        base, tag = "default", text.split(":", 1)[1]
    if base == "default":
        if not default_registry:
            raise ValueError("--push default: build_config.yaml registry.default is empty")
        base = default_registry
    host, _, namespace = base.partition("/")
    if not namespace and ("." not in host and ":" not in host and host != "localhost"):
        raise ValueError(f"--push {text!r}: expected REGISTRY[/NAMESPACE][:TAG] (e.g. "
                         "123456789012.dkr.ecr.eu-west-2.amazonaws.com/engineering/inference:v1) or 'default'")
    ref = Reference.parse(f"{host}/{namespace + '/' if namespace else ''}{prefix}x:{tag}")   # validates names
    return PushTarget(ref.host, namespace.strip("/"), tag, prefix)


def _run_parallel(jobs: Iterable[Callable[[], Any]], parallel: int) -> list[Any]:
    """Run the jobs `parallel` at a time; the first failure is raised once the running ones end."""
    with ThreadPoolExecutor(max_workers=parallel, thread_name_prefix="push") as pool:
        futures: list[Future[Any]] = [pool.submit(j) for j in jobs]
        try:
            return [f.result() for f in as_completed(futures)]
        except BaseException:
            for f in futures:
                f.cancel()
            raise


def push_image(layout: Layout, ref_name: str, target: Reference, client: RegistryClient, rules: UploadRules,
               mount_from: dict[str, str] | None = None) -> str:
    """Push the layout's image `ref_name` to target; returns the manifest digest (hex)."""
    desc = layout.resolve(ref_name)
    if desc is None:
        raise RegistryError(f"{layout.root} has no image named {ref_name!r}")
    digest = desc["digest"].split(":", 1)[1]
    manifest = layout.blob(digest).read_bytes()
    doc = json.loads(manifest)
    blobs = [(d["digest"].split(":", 1)[1], int(d["size"])) for d in doc["layers"] + [doc["config"]]]
    mount_from = mount_from or {}

    def probe(b: str) -> tuple[str, str | None] | None:
        """None when the repository has it (or a mount linked it), else (digest, upload session or None)."""
        if client.has_blob(target.repo, b):
            client.stats.add(blobs_present=1)
            return None
        src = mount_from.get(b)
        if src and src != target.repo:
            linked, session = mount_or_session(client, target.repo, b, src)
            if linked:
                client.stats.add(blobs_mounted=1)
                return None
            return b, session
        return b, None

    probes = _run_parallel([lambda b=b: probe(b) for b, _ in blobs], rules.parallel)
    todo = sorted((p for p in probes if p), key=lambda p: -layout.blob(p[0]).stat().st_size)
    total = sum(layout.blob(b).stat().st_size for b, _ in todo)
    if todo:
        with ui.transfer(f"push {target.repo}: {len(todo)} blobs", total) as bar:
            _run_parallel([lambda b=b, s=s: BlobUpload(client, target.repo, b, layout.blob(b), rules, bar, s).run()
                           for b, s in todo], rules.parallel)
    client.put_manifest(target.repo, target.tag or f"sha256:{digest}", manifest, digest)
    return digest


def push_stage(store: Store, layout: Layout, name: str, target: Reference, client: RegistryClient | None = None,
               rules: UploadRules | None = None) -> PushStats:
    """Push one stage of the layout; remember which repository holds each blob (for later mounts)."""
    own = client is None
    client = client or RegistryClient.for_host(target.host)
    rules = rules or UploadRules.for_host(target.host, None)
    known: dict[str, str] = store.get_meta("registry-blobs", target.host) or {}
    try:
        digest = push_image(layout, name, target, client, rules, mount_from=known)
    finally:
        if own:
            client.close()
    doc = layout.read_json(digest)
    known = store.get_meta("registry-blobs", target.host) or {}
    for d in doc["layers"] + [doc["config"]]:
        known[d["digest"].split(":", 1)[1]] = target.repo
    store.put_meta("registry-blobs", target.host, known)
    s = client.stats
    ui.info(f"pushed {name} to {target.host}/{target.repo}:{target.tag}: {s.blobs_uploaded} blobs uploaded "
            f"({s.bytes_uploaded / 1e6:,.1f} MB), {s.blobs_mounted} mounted, {s.blobs_present} already there"
            + (f", {s.retries} retries" if s.retries else ""))
    return s
