"""Same inputs -> same bytes; a Python-only change -> only the server layer (and manifests above) change."""
from __future__ import annotations

import gzip
import io
import json
import tarfile

import pytest

from image_helpers import git, make_checkout, small_config
from minibuild.config import Config
from minibuild.image import build_images
from minibuild.image.layers import RecipeError
from minibuild.image.tarlayer import Entry, LayerError, write_layer
from minibuild.store import Store


def _manifest(cfg: Config, results: dict, stage: str) -> dict:
    root = cfg.path(cfg.images.out_dir) / "oci" / "blobs" / "sha256"
    return json.loads((root / results[stage]["digest"].split(":")[1]).read_bytes())


def test_two_clean_builds_identical_then_python_change_rebuilds_server_only(
        tmp_path, small_lock, small_build, capsys):
    cfg_a, res_a = small_build                               # checkout A, session store
    cfg_b = small_config(make_checkout(tmp_path / "b" / "repo"), small_lock)
    res_b = build_images(cfg_b, stage="all", store=Store(tmp_path / "store-b"))   # clean store, other dir
    for stage in ("essentials", "cuda", "server"):
        assert res_a[stage]["digest"] == res_b[stage]["digest"], stage
        assert res_a[stage]["inputs"] == res_b[stage]["inputs"], stage

    # nothing changed: no work, and it says so
    store_b = Store(tmp_path / "store-b")
    capsys.readouterr()
    again = build_images(cfg_b, stage="all", store=store_b)
    assert "nothing to do" in capsys.readouterr().err
    assert again["server"]["digest"] == res_b["server"]["digest"]

    # change one server file: only the server layer differs; --explain names the file
    target = cfg_b.root / "python" / "mini_vllm" / "engine_args.py"
    target.write_text(target.read_text() + "\n# a Python-only change\n")
    capsys.readouterr()
    unstaged = build_images(cfg_b, stage="all", store=store_b)      # not in git's index: not packed
    assert unstaged["server"]["digest"] == res_b["server"]["digest"]
    err = capsys.readouterr().err
    assert "differ from git's index" in err and "python/mini_vllm/engine_args.py" in err
    git(cfg_b.root, "add", "python/mini_vllm/engine_args.py")
    changed = build_images(cfg_b, stage="all", store=store_b, explain=True)
    err = capsys.readouterr().err
    assert "python/mini_vllm/engine_args.py content changed" in err
    assert "layer:server" in err and "layer:wheels" not in err and "layer:base" not in err
    assert "stage server: input layer server rebuilt" in err
    assert "stage:essentials" not in err and "stage:cuda" not in err
    assert changed["essentials"]["digest"] == res_b["essentials"]["digest"]
    assert changed["cuda"]["digest"] == res_b["cuda"]["digest"]
    assert changed["server"]["digest"] != res_b["server"]["digest"]
    old, new = _manifest(cfg_b, res_b, "server")["layers"], _manifest(cfg_b, changed, "server")["layers"]
    assert [d["digest"] for d in old[:-1]] == [d["digest"] for d in new[:-1]]
    assert old[-1]["digest"] != new[-1]["digest"]


def test_layer_bytes_are_normalised(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "b.txt").write_text("b")
    (src / "a.sh").write_text("#!/bin/sh\n")
    (src / "a.sh").chmod(0o700)
    store = Store(tmp_path / "s")
    entries = [Entry("opt/x/b.txt", "file", 0o644, src=str(src / "b.txt")),
               Entry("opt/x/a.sh", "file", 0o755, src=str(src / "a.sh")),
               Entry("opt/x/link", "symlink", target="b.txt")]
    lay1 = write_layer(store, entries, mtime=1234)
    lay2 = write_layer(store, list(reversed(entries)), mtime=1234)       # order of entries does not matter
    assert lay1 == lay2
    raw = store.read_blob(lay1.digest)
    assert raw[4:8] == b"\0\0\0\0" and raw[3] & 0x08 == 0              # gzip: mtime 0, no file name
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(raw))) as t:
        members = t.getmembers()
    assert [m.name for m in members] == ["opt", "opt/x", "opt/x/a.sh", "opt/x/b.txt", "opt/x/link"]
    assert {(m.uid, m.gid, m.uname, m.gname, m.mtime) for m in members} == {(0, 0, "", "", 1234)}
    assert [oct(m.mode) for m in members] == ["0o755", "0o755", "0o755", "0o644", "0o777"]
    assert not any(m.pax_headers for m in members)
    assert write_layer(store, entries, mtime=0).diff_id != lay1.diff_id   # the epoch really is used


@pytest.mark.parametrize("bad", ["../etc/passwd", "/", "a/../../b"])
def test_layer_refuses_paths_leaving_the_root(tmp_path, bad):
    store = Store(tmp_path / "s")
    before = set((store.blob_dir).iterdir())
    with pytest.raises(LayerError):
        write_layer(store, [Entry(bad, "file", data=b"x")])
    assert set(store.blob_dir.iterdir()) == before                 # nothing half-written is kept


def test_kernel_artefacts_rebuild_cuda_and_server_only(tmp_path, small_lock, small_build, session_store):
    """build/ext enters the cuda stage as manifest.json + the modules it names (sha256-checked); planted
    files beside them stay out; a module changed after the build is refused."""
    import hashlib

    _, res_a = small_build
    checkout = make_checkout(tmp_path / "repo")
    cfg = small_config(checkout, small_lock)
    ext = checkout / "build" / "ext"
    ext.mkdir(parents=True)
    so = b"\x7fELF stand-in for an sm_90a module"
    (ext / "mini_vllm_kernels.so").write_bytes(so)
    (ext / "manifest.json").write_text(json.dumps({"mini_vllm_kernels": {
        "file": "mini_vllm_kernels.so", "sha256": hashlib.sha256(so).hexdigest()}}))
    (ext / ".env").write_text("HF_TOKEN=hf_planted\n")
    (ext / "credentials").write_text("[default]\naws_secret_access_key=planted\n")
    res = build_images(cfg, stage="all", store=session_store)
    assert res["essentials"]["digest"] == res_a["essentials"]["digest"]
    assert res["cuda"]["digest"] != res_a["cuda"]["digest"]
    layer = _manifest(cfg, res, "cuda")["layers"][-1]["digest"].split(":")[1]
    with tarfile.open(fileobj=io.BytesIO(session_store.read_blob(layer)), mode="r:gz") as t:
        names = t.getnames()
    assert sorted(n for n in names if n.startswith("opt/mini-vllm/ext/")) == [
        "opt/mini-vllm/ext/manifest.json", "opt/mini-vllm/ext/mini_vllm_kernels.so"]

    (ext / "mini_vllm_kernels.so").write_bytes(so + b"patched")
    with pytest.raises(RecipeError, match="mini_vllm_kernels.so: sha256 .* differs from manifest.json"):
        build_images(cfg, stage="cuda", store=session_store)


def test_failed_layer_write_leaves_nothing(tmp_path):
    store = Store(tmp_path / "s")
    entries = [Entry("a/ok.txt", "file", data=b"fine"), Entry("a/zz.bin", "file", src=str(tmp_path / "gone"))]
    with pytest.raises(FileNotFoundError):
        write_layer(store, entries)
    assert list(store.blob_dir.iterdir()) == []          # no blob, no .tmp- file
