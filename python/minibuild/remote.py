"""Remote cache and remote source objects on S3 (boto3), shared by the store and source fetching.

Why a separate module: boto3 takes ~0.3 s to import, so nothing imports it unless a remote is
configured. Layout under s3://bucket/prefix: `blobs/sha256/<hex>` and `ac/<key>.json`, mirroring the
local store. The store verifies everything it downloads; this module only moves bytes.
The endpoint comes from AWS_ENDPOINT_URL (boto3 reads it), which the tests point at moto's server;
AWS itself is not reached by any test.
"""
from __future__ import annotations

import os
from typing import Any
from urllib.parse import urlparse


def split_s3_url(url: str) -> tuple[str, str]:
    """'s3://bucket/some/key' -> ('bucket', 'some/key')."""
    u = urlparse(url)
    if u.scheme != "s3" or not u.netloc:
        raise ValueError(f"not an s3:// URL: {url!r}")
    return u.netloc, u.path.lstrip("/")


def s3_client() -> Any:
    import boto3

    kwargs: dict[str, Any] = {}
    if os.environ.get("AWS_ENDPOINT_URL"):
        kwargs["endpoint_url"] = os.environ["AWS_ENDPOINT_URL"]
    return boto3.client("s3", **kwargs)


def _is_missing(exc: Exception) -> bool:
    code = str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))
    return code in {"404", "NoSuchKey", "NotFound"}


class S3Remote:
    """Read-through / write-through cache in an S3 bucket."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.bucket, prefix = split_s3_url(url)
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self._client: Any = None

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = s3_client()
        return self._client

    def _blob_key(self, digest: str) -> str:
        return f"{self.prefix}blobs/sha256/{digest}"

    def _ac_key(self, key: str) -> str:
        return f"{self.prefix}ac/{key}.json"

    def get_blob(self, digest: str, dest: str) -> bool:
        try:
            self.client.download_file(self.bucket, self._blob_key(digest), dest)
            return True
        except Exception as exc:
            if _is_missing(exc):
                return False
            raise

    def put_blob(self, digest: str, path: os.PathLike[str] | str) -> None:
        key = self._blob_key(digest)
        try:
            self.client.head_object(Bucket=self.bucket, Key=key)
            return  # content-addressed: already there means identical
        except Exception as exc:
            if not _is_missing(exc):
                raise
        self.client.upload_file(os.fspath(path), self.bucket, key)

    def get_action(self, key: str) -> bytes | None:
        try:
            return self.client.get_object(Bucket=self.bucket, Key=self._ac_key(key))["Body"].read()
        except Exception as exc:
            if _is_missing(exc):
                return None
            raise

    def put_action(self, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=self._ac_key(key), Body=data)


def remote_from_url(url: str) -> S3Remote:
    if url.startswith("s3://"):
        return S3Remote(url)
    raise ValueError(f"store.remote: unsupported remote cache URL {url!r} (only s3://bucket/prefix)")


def open_s3_object(url: str) -> Any:
    """s3://bucket/key as a readable stream (source tarball mirrors: extracted as it arrives)."""
    bucket, key = split_s3_url(url)
    return s3_client().get_object(Bucket=bucket, Key=key)["Body"]
