"""Hostile source archives (issue 11), made by the tests: link chains that climb out of the tree, then a
write named like a link, at several depths and orders, through every archive source (mirror dir, HTTP,
S3 via moto); and caps on bytes, entries and path length that stop at the first breach.

Each escape test checks that NOTHING outside the extraction root changed (a snapshot of everything
around it before and after), not just that an error was raised.
"""
from __future__ import annotations

import http.server
import io
import threading
import time
from functools import partial
from pathlib import Path
from typing import Any, Iterator

import pytest

from archive_attacks import (ORDERS, many_files, pax_bomb, regular, snapshot, tar_bytes, zero_bomb,
                             escape_entries)
from build_helpers import ROOT, config_with
from minibuild.archive import UnsafeArchive, extract_tar
from minibuild.sources import SourceError, fetch_all
from test_remote import aws, s3  # noqa: F401  (moto's S3 server on 127.0.0.1)

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _nest(tmp_path: Path, depth: int) -> Path:
    """tmp/a1/.../a{depth}/tree, with victim.txt in every ancestor up to `depth` levels above the tree."""
    d = tmp_path
    for k in range(depth, 0, -1):
        (d / "victim.txt").write_text("original\n")
        d = d / f"a{k}"
        d.mkdir()
    tree = d / "tree"
    tree.mkdir()
    return tree


@pytest.mark.parametrize("depth", [1, 2, 3])
@pytest.mark.parametrize("victim", ["victim.txt", "new.txt"])
@pytest.mark.parametrize("order", ORDERS)
def test_extraction_never_writes_outside_the_root(tmp_path: Path, depth: int, victim: str, order: str) -> None:
    tree = _nest(tmp_path, depth)
    before = snapshot(tmp_path, skip=tree)
    data = tar_bytes(escape_entries(depth, victim, order), gz=depth % 2 == 0)
    with pytest.raises(UnsafeArchive):
        extract_tar(io.BytesIO(data), tree)
    assert snapshot(tmp_path, skip=tree) == before


def test_github_style_prefix_and_subtrees_do_not_help(tmp_path: Path) -> None:
    tree = _nest(tmp_path, 2)
    before = snapshot(tmp_path, skip=tree)
    data = tar_bytes(escape_entries(3, "victim.txt", "hardlink", under="include/"), gz=True,
                     prefix=f"fixture-{COMMIT}/")
    with pytest.raises(UnsafeArchive):
        extract_tar(io.BytesIO(data), tree, ["include"], strip_marker=COMMIT)
    assert snapshot(tmp_path, skip=tree) == before


# ---- every archive source, through fetch_all (the store's staging tree is 4 levels below tmp_path) ----
STORE_DEPTH = 5        # tmp_path/store/tmp/.tmp-XXXX/tree/include -> tmp_path


def _cfg(tmp_path: Path, mirrors: list[str], limits: dict[str, int] | None = None) -> Any:
    pin: dict[str, Any] = {"repo": "example/evil", "commit": COMMIT, "subtrees": ["include"],
                           "tree_sha256": "0" * 64, "mirrors": mirrors}
    if limits:
        pin["limits"] = limits
    return config_with(tmp_path, sources={"evil": pin})


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A directory served over real HTTP on 127.0.0.1 (an https:// mirror's code path, without TLS)."""
    www = tmp_path / "www"
    www.mkdir()
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(www))
    handler.log_message = lambda *a: None  # type: ignore[attr-defined]
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        yield www, f"http://127.0.0.1:{srv.server_address[1]}"
    finally:
        srv.shutdown()
        srv.server_close()


def _publish(kind: str, tmp_path: Path, data: bytes, served: tuple[Path, str], bucket: str | None,
             monkeypatch: pytest.MonkeyPatch, limits: dict[str, int] | None) -> Any:
    """Put `data` where the `kind` of source reads it; returns the config that fetches it."""
    if kind == "mirror-dir":
        mdir = tmp_path / "mirror"
        mdir.mkdir(exist_ok=True)
        (mdir / f"evil-{COMMIT}.tar.gz").write_bytes(data)
        monkeypatch.setenv("MINI_VLLM_MIRROR", str(mdir))
        return _cfg(tmp_path, ["https://example.invalid/never-tried.tar.gz"], limits)
    if kind == "http":
        www, url = served
        (www / "evil.tar.gz").write_bytes(data)
        return _cfg(tmp_path, [f"{url}/evil.tar.gz"], limits)
    from minibuild.remote import s3_client
    s3_client().put_object(Bucket=bucket, Key="mirror/evil.tar.gz", Body=data)
    return _cfg(tmp_path, [f"s3://{bucket}/mirror/evil.tar.gz"], limits)


@pytest.fixture(params=["mirror-dir", "http", "s3"])
def source(request, tmp_path: Path, served, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("MINI_VLLM_CACHE", str(tmp_path / "store"))
    monkeypatch.delenv("MINI_VLLM_MIRROR", raising=False)
    bucket = request.getfixturevalue("aws") if request.param == "s3" else None

    def publish(data: bytes, limits: dict[str, int] | None = None):
        """Place the archive; returns the fetch to run (so a test can snapshot in between)."""
        cfg = _publish(request.param, tmp_path, data, served, bucket, monkeypatch, limits)
        return lambda: fetch_all(cfg, offline=request.param == "mirror-dir")
    return publish


@pytest.mark.parametrize("order", ORDERS)
def test_every_source_refuses_escapes_and_changes_nothing_outside(source, tmp_path: Path, order: str) -> None:
    (tmp_path / "victim.txt").write_text("original\n")
    fetch = source(tar_bytes(escape_entries(STORE_DEPTH, "victim.txt", order, under="include/")
                             + escape_entries(STORE_DEPTH - 1, "new.txt", order, under="include/x/"), gz=True))
    store = tmp_path / "store"
    before = snapshot(tmp_path, skip=store)
    with pytest.raises(SourceError, match="UnsafeArchive"):
        fetch()
    assert snapshot(tmp_path, skip=store) == before
    assert not list(store.rglob("new.txt")) and not list(store.glob("trees/*"))
    assert list((store / "tmp").iterdir()) == []


# ---- caps: stop at the first breach, scaled down by per-pin limits so the tests stay fast ---------------
class _Meter(io.RawIOBase):
    """A readable archive that counts how much of it was read."""

    def __init__(self, data: bytes) -> None:
        self.src, self.read_bytes = io.BytesIO(data), 0

    def read(self, n: int = -1) -> bytes:  # type: ignore[override]
        out = self.src.read(n)
        self.read_bytes += len(out)
        return out


@pytest.mark.parametrize("archive, caps, match", [
    (lambda: zero_bomb(256 << 20), {"max_bytes": 1 << 20}, "max_bytes"),
    (lambda: many_files(5000), {"max_files": 500}, "max_files"),
    (lambda: tar_bytes([regular("include/" + "d/" * 150 + "x.h")], gz=True), {"max_path": 200}, "max_path"),
    (lambda: pax_bomb(8 << 20), {"max_bytes": 1 << 20, "max_files": 100}, "exceeds"),
], ids=["gzip-bomb-256MiB", "5000-files", "300-char-path", "8MiB-pax-header"])
def test_caps_stop_at_the_first_breach(tmp_path: Path, archive, caps: dict[str, int], match: str) -> None:
    from minibuild.archive import ArchiveTooLarge, Limits   # (imported here: bench/attack_report.py runs
    limits = Limits(**caps)                                 #  this file against code from before the caps)
    data = archive()
    meter = _Meter(data)
    t0 = time.monotonic()
    with pytest.raises(ArchiveTooLarge, match=match):
        extract_tar(meter, tmp_path, limits=limits)
    assert time.monotonic() - t0 < 10
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(written) <= limits.max_files and sum(p.stat().st_size for p in written) <= limits.max_bytes
    if match == "max_bytes":           # refused at the header: the 256 MiB body was never decompressed
        assert meter.read_bytes < len(data) // 4, (meter.read_bytes, len(data))


def test_per_pin_caps_through_every_source(source, tmp_path: Path) -> None:
    fetch = source(many_files(400), limits={"max_files": 50})
    with pytest.raises(SourceError, match=r"max_files=50\b"):
        fetch()


def test_defaults_and_overrides_come_from_the_config(tmp_path: Path) -> None:
    from minibuild.config import ConfigError, read_document

    from minibuild.archive import Limits

    doc = read_document(ROOT / "build_config.yaml")
    base = Limits().override(doc["source_limits"], "source_limits")
    assert base.max_files >= 20_000 and base.max_bytes >= 256 << 20   # CUTLASS's tree fits with room
    cfg = _cfg(tmp_path, [], limits={"max_bytes": 1234})
    assert cfg.sources["evil"].limits == Limits(max_bytes=1234, max_files=base.max_files, max_path=base.max_path)
    with pytest.raises(ConfigError, match="sources.evil.limits: unknown key"):
        _cfg(tmp_path, [], limits={"max_byte": 1})
