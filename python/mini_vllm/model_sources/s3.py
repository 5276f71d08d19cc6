"""s3://bucket/prefix through boto3 (for clusters without the S3 CSI mount), into a local directory.

Credentials and the endpoint come from boto3's default chain (instance/pod role, AWS_* variables,
AWS_ENDPOINT_URL[_S3]); nothing is logged but bucket, keys and sizes. Each object lands in a temporary
file renamed into place when complete, so an interrupted fetch never leaves a truncated weight file; a
restart fetches only what is missing or changed (size and ETag recorded in a manifest). Once every
object is in, the manifest is marked complete: if S3 cannot be reached later (a restarted pod on the same
volume), that completed copy is used with a warning instead of failing the start.
"""
from __future__ import annotations

import fnmatch
import json
import logging
import os
import sys
from pathlib import Path, PurePosixPath

from mini_vllm.model_sources import IGNORE_PATTERNS, ModelSourceError

log = logging.getLogger(__name__)
MANIFEST = ".mini-vllm-s3.json"
DEFAULT_DIR = Path("~/.cache/mini-vllm/s3")


def split_uri(uri: str) -> tuple[str, str]:
    rest = uri[len("s3://"):]
    bucket, _, prefix = rest.partition("/")
    if not bucket:
        raise ModelSourceError(f"{uri}: expected s3://bucket/prefix")
    return bucket, prefix.strip("/")


def wanted(rel: str, patterns: tuple[str, ...]) -> bool:
    name = PurePosixPath(rel)
    if any(fnmatch.fnmatch(rel, p) for p in IGNORE_PATTERNS):
        return False
    return any(fnmatch.fnmatch(name.name, p) or fnmatch.fnmatch(rel, p) for p in patterns)


def fetch_s3(uri: str, download_dir: str | None, patterns: tuple[str, ...]) -> Path:
    bucket, prefix = split_uri(uri)
    dest = Path(download_dir or DEFAULT_DIR).expanduser() / bucket / prefix
    manifest_path = dest / MANIFEST
    try:
        import boto3
        from botocore.exceptions import BotoCoreError, ClientError
    except ImportError:
        raise ModelSourceError(f"{uri}: boto3 is not installed (pip install boto3)") from None
    try:
        objects = _list(boto3.client("s3"), bucket, prefix, patterns)
    except (BotoCoreError, ClientError) as e:
        if _complete(manifest_path):
            log.warning("%s cannot be listed (%s): using the completed copy at %s", uri, e, dest)
            return dest
        raise ModelSourceError(f"{uri}: cannot list the objects ({e}); check the bucket, the credentials "
                               "(boto3's default chain) and AWS_ENDPOINT_URL") from None
    if not objects:
        raise ModelSourceError(f"{uri}: no model files under this prefix (config.json, *.safetensors, tokenizer.json)")
    dest.mkdir(parents=True, exist_ok=True)
    manifest = _read(manifest_path)
    have = manifest.get("objects", {})
    todo = [(rel, size, etag) for rel, (size, etag) in objects.items()
            if have.get(rel) != [size, etag] or not _size_ok(dest / rel, size)]
    total = sum(size for _, size, _ in todo)
    log.info("fetching %s into %s: %d of %d files to download (%.1f MB)", uri, dest, len(todo), len(objects), total / 1e6)
    client = boto3.client("s3")
    try:
        for i, (rel, size, etag) in enumerate(todo, 1):
            _download(client, bucket, f"{prefix}/{rel}" if prefix else rel, dest / rel, size, f"[{i}/{len(todo)}] {rel}")
            have[rel] = [size, etag]
            _write(manifest_path, {"uri": uri, "complete": False, "objects": have})
    except (BotoCoreError, ClientError, OSError) as e:
        raise ModelSourceError(f"{uri}: download failed ({e}); run again to fetch what is missing") from None
    _write(manifest_path, {"uri": uri, "complete": True, "objects": {r: have[r] for r in objects}})
    return dest


def _list(client, bucket: str, prefix: str, patterns: tuple[str, ...]) -> dict[str, tuple[int, str]]:
    out: dict[str, tuple[int, str]] = {}
    base = f"{prefix}/" if prefix else ""
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=base):
        for obj in page.get("Contents", []):
            rel = obj["Key"][len(base):]
            if rel and not rel.endswith("/") and ".." not in PurePosixPath(rel).parts and wanted(rel, patterns):
                out[rel] = (int(obj["Size"]), str(obj.get("ETag", "")).strip('"'))
    return out


def _download(client, bucket: str, key: str, target: Path, size: int, label: str) -> None:
    from tqdm.auto import tqdm

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.part")
    with tqdm(total=size, unit="B", unit_scale=True, desc=label, file=sys.stderr, leave=False) as bar:
        client.download_file(bucket, key, str(tmp), Callback=bar.update)
    if tmp.stat().st_size != size:
        raise OSError(f"{key}: got {tmp.stat().st_size} bytes, expected {size}")
    os.replace(tmp, target)
    log.info("%s: %.1f MB", label, size / 1e6)


def _size_ok(path: Path, size: int) -> bool:
    try:
        return path.stat().st_size == size
    except FileNotFoundError:
        return False


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return {}


def _complete(path: Path) -> bool:
    m = _read(path)
    return bool(m.get("complete")) and all(_size_ok(path.parent / r, s) for r, (s, _) in m.get("objects", {}).items())


def _write(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    os.replace(tmp, path)
