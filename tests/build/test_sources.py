"""Pinned sources: mirrors of a fixture repository (git, tarball, directory, mirror dir), tree-hash
verification (a tampered tree is refused with both hashes and nothing is stored), and unsafe archives."""
from __future__ import annotations

import io
import os
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import pytest

from build_helpers import config_with
from minibuild.archive import UnsafeArchive, extract_tar
from minibuild.hashing import tree_hash
from minibuild.sources import SourceError, candidates, fetch_all
from minibuild.store import Store

FILES = {"include/lib.h": "#pragma once\nint f();\n", "include/sub/deep.h": "#define DEEP 1\n",
         "tools/run.sh": "#!/bin/sh\necho hi\n", "docs/skip.md": "not selected\n"}


@pytest.fixture(scope="module")
def fixture_repo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    base = tmp_path_factory.mktemp("srcrepo")
    work = base / "work"
    for rel, text in FILES.items():
        (work / rel).parent.mkdir(parents=True, exist_ok=True)
        (work / rel).write_text(text)
    (work / "tools/run.sh").chmod(0o755)
    os.symlink("lib.h", work / "include/alias.h")
    git = ["git", "-C", str(work), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(["git", "init", "-q", str(work)], check=True)
    subprocess.run(git + ["add", "-A"], check=True)
    subprocess.run(git + ["commit", "-q", "-m", "fixture"], check=True)
    commit = subprocess.run(git + ["rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    # the expected tree: the selected subtrees of the files the test wrote (not produced by our extractor)
    expect = base / "expect"
    subprocess.run(["cp", "-a", str(work / "include"), str(work / "tools"), str(expect.mkdir() or expect)], check=True)
    tarball = base / f"fixture-{commit}.tar.gz"   # GitHub style: everything under REPO-COMMIT/
    subprocess.run(["git", "-C", str(work), "archive", "--format=tar.gz", f"--prefix=fixture-{commit}/",
                    "-o", str(tarball), commit], check=True)
    return {"work": work, "commit": commit, "tree": tree_hash(expect), "tarball": tarball, "base": base}


def cfg_for(repo: dict[str, Any], mirrors: list[str], tree: str | None = None, patches: list[str] | None = None) -> Any:
    return config_with(repo["base"], sources={"fix": {
        "repo": "example/fixture", "commit": repo["commit"], "subtrees": ["include", "tools"],
        "tree_sha256": tree or repo["tree"], "mirrors": mirrors, "patches": patches or []}})


@pytest.fixture
def store_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MINI_VLLM_CACHE", str(tmp_path / "store"))
    monkeypatch.delenv("MINI_VLLM_MIRROR", raising=False)
    return tmp_path / "store"


def installed_trees(store: Path) -> list[str]:
    return [p.name for p in (store / "trees").iterdir()] if (store / "trees").exists() else []


@pytest.mark.parametrize("kind", ["git", "tarball", "directory"])
def test_every_mirror_kind_yields_the_pinned_tree(fixture_repo: dict[str, Any], store_env: Path, kind: str) -> None:
    url = {"git": f"git+file://{fixture_repo['work']}", "tarball": fixture_repo["tarball"].as_uri(),
           "directory": fixture_repo["work"].as_uri()}[kind]
    got = fetch_all(cfg_for(fixture_repo, [url]), offline=True)["fix"]
    assert tree_hash(got) == fixture_repo["tree"]
    assert (got / "tools/run.sh").stat().st_mode & 0o100 and os.readlink(got / "include/alias.h") == "lib.h"
    assert not (got / "docs").exists()


def test_mirror_dir_first_and_offline_skips_network(fixture_repo: dict[str, Any], store_env: Path,
                                                    tmp_path: Path) -> None:
    mdir = tmp_path / "mirror"
    mdir.mkdir()
    subprocess.run(["git", "-C", str(fixture_repo["work"]), "archive", "--format=tar", "-o",
                    str(mdir / f"fix-{fixture_repo['commit']}.tar"), fixture_repo["commit"], "include", "tools"], check=True)
    cfg = cfg_for(fixture_repo, ["https://codeload.github.com/{repo}/tar.gz/{commit}"])
    pin = cfg.sources["fix"]
    assert candidates(pin, mdir, offline=True) == [(mdir / f"fix-{fixture_repo['commit']}.tar").as_uri()]
    assert candidates(pin, None, offline=False)[0].endswith(f"/example/fixture/tar.gz/{fixture_repo['commit']}")
    assert tree_hash(fetch_all(cfg, offline=True, mirror=mdir)["fix"]) == fixture_repo["tree"]
    with pytest.raises(SourceError, match="no mirror to try with --offline"):
        fetch_all(cfg_for(fixture_repo, ["https://example.invalid/x.tar.gz"], tree="0" * 64), offline=True)


def test_tampered_tree_rejected_with_both_hashes_nothing_stored(fixture_repo: dict[str, Any], store_env: Path,
                                                                tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    subprocess.run(["cp", "-a", str(fixture_repo["work"]), str(bad)], check=True)
    (bad / "include/lib.h").write_text("#pragma once\nint f(); // evil\n")
    with pytest.raises(SourceError) as ei:
        fetch_all(cfg_for(fixture_repo, [bad.as_uri()]), offline=True)
    msg = str(ei.value)
    assert f"expected {fixture_repo['tree']}" in msg and "got " in msg
    got = msg.split("got ")[1].split()[0]
    assert len(got) == 64 and got != fixture_repo["tree"]
    assert installed_trees(store_env) == []
    assert list((store_env / "tmp").iterdir()) == []   # staging cleaned


def test_patch_is_part_of_identity(fixture_repo: dict[str, Any], store_env: Path) -> None:
    patch = fixture_repo["base"] / "p.patch"
    patch.write_text("--- a/include/lib.h\n+++ b/include/lib.h\n@@ -1,2 +1,2 @@\n #pragma once\n-int f();\n+int g();\n")
    cfg = cfg_for(fixture_repo, [fixture_repo["tarball"].as_uri()], patches=["p.patch"])
    tree = fetch_all(cfg, offline=True)["fix"]
    assert "int g();" in (tree / "include/lib.h").read_text()
    assert tree.name != fixture_repo["tree"]


def _tar(entries: list[tarfile.TarInfo], data: dict[str, bytes] | None = None) -> io.BytesIO:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for ti in entries:
            payload = (data or {}).get(ti.name)
            if payload is not None:
                ti.size = len(payload)
            tf.addfile(ti, io.BytesIO(payload) if payload is not None else None)
    buf.seek(0)
    return buf


def _ti(name: str, type_: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.type, ti.linkname = type_, link
    return ti


@pytest.mark.parametrize("entries,match", [
    ([_ti("../escape.h")], "'..'"),
    ([_ti("/etc/passwd")], "absolute"),
    ([_ti("include/l", tarfile.SYMTYPE, "../../outside")], "leaves the tree"),
    ([_ti("include/l", tarfile.SYMTYPE, "/etc")], "absolute"),
    ([_ti("include/d", tarfile.SYMTYPE, "."), _ti("include/d/x", tarfile.SYMTYPE, "../../y")], "leaves the tree|through"),
    ([_ti("include/l", tarfile.SYMTYPE, "."), _ti("include/l/f.h")], "through the symlink"),
    ([_ti("include/dev", tarfile.CHRTYPE)], "device"),
    ([_ti("include/fifo", tarfile.FIFOTYPE)], "fifo"),
    ([_ti("include/h", tarfile.LNKTYPE, "/etc/shadow")], "absolute"),
])
def test_unsafe_archives_are_refused(tmp_path: Path, entries: list[tarfile.TarInfo], match: str) -> None:
    dest = tmp_path / "out"
    dest.mkdir()
    with pytest.raises(UnsafeArchive, match=match):
        extract_tar(_tar(entries, {e.name: b"x" for e in entries if e.type == tarfile.REGTYPE}), dest, ["include"])
    assert not (tmp_path / "escape.h").exists() and not (tmp_path / "y").exists()


def test_unsafe_archive_mirror_stores_nothing(fixture_repo: dict[str, Any], store_env: Path, tmp_path: Path) -> None:
    evil = tmp_path / "evil.tar"
    evil.write_bytes(_tar([_ti("include/ok.h"), _ti("include/../../x.h")], {"include/ok.h": b"1", "include/../../x.h": b"2"}).read())
    with pytest.raises(SourceError, match="'..'"):
        fetch_all(cfg_for(fixture_repo, [evil.as_uri()]), offline=True)
    assert installed_trees(store_env) == [] and not (tmp_path.parent / "x.h").exists()


def test_corrupt_tree_file_is_detected_by_listing(fixture_repo: dict[str, Any], store_env: Path) -> None:
    from minibuild.compile import CorruptTree, PathMap

    tree = fetch_all(cfg_for(fixture_repo, [fixture_repo["tarball"].as_uri()]), offline=True)["fix"]
    store = Store(store_env)
    pm = PathMap(Path("/nonexistent"), {"fix": tree}, {"fix": store.tree_listing(tree.name) or {}})
    assert pm.digest(store, "@fix/include/lib.h")
    (tree / "include/lib.h").write_text("changed behind our back\n")
    with pytest.raises(CorruptTree):
        pm.digest(store, "@fix/include/lib.h")
