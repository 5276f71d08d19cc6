"""Store and task-graph API (what the image builder reuses): digests, verification, records, explain, gc."""
from __future__ import annotations

from pathlib import Path

import pytest

from build_helpers import ROOT  # noqa: F401  (puts python/ on sys.path)
from minibuild.cache_cmd import collect_garbage, store_stats
from minibuild.actions import Input, Task, explain, run_task
from minibuild.hashing import digest_bytes
from minibuild.store import MissingBlob, Store, StoreError


def test_blobs_are_named_by_content_and_verified(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    s = Store(tmp_path)
    d = s.put_bytes(b"layer")
    assert d == digest_bytes(b"layer") and s.read_blob("sha256:" + d) == b"layer"
    with s.blob_writer() as w:
        w.write(b"lay")
        w.write(b"er")
    assert w.digest == d and w.size == 5
    p = s.blob_path(d)
    p.chmod(0o644)
    p.write_bytes(b"LAYER")
    with pytest.raises(MissingBlob):
        s.blob_path(d)
    assert "corrupt blob" in capsys.readouterr().err and not p.exists()
    with pytest.raises(ValueError):
        s.blob_path("sha256:xyz")


def test_failed_writer_leaves_nothing(tmp_path: Path) -> None:
    s = Store(tmp_path)
    with pytest.raises(RuntimeError):
        with s.blob_writer() as w:
            w.write(b"half")
            raise RuntimeError("killed")
    assert list(s.blob_dir.iterdir()) == []


def test_run_task_caches_and_explain_names_changes(tmp_path: Path) -> None:
    s = Store(tmp_path)
    calls: list[int] = []

    def action() -> dict:
        calls.append(1)
        return {"blobs": [s.put_bytes(b"out%d" % len(calls))]}

    t1 = Task("layer:server", "layer", [Input("file", "python/a.py", "aa"), Input("flags", "flags", ["-O2"]),
                                        Input("toolchain", "nvcc", "13.0.88")])
    r1, ran1 = run_task(s, t1, action)
    r2, ran2 = run_task(s, t1, action)
    assert (ran1, ran2) == (True, False) and r1 == r2 and len(calls) == 1
    t2 = Task("layer:server", "layer", [Input("file", "python/a.py", "bb"), Input("flags", "flags", ["-O3"]),
                                        Input("toolchain", "nvcc", "13.1.0")])
    assert explain(s, t2) == ["python/a.py content changed", "flag -O2 -> -O3", "toolchain nvcc 13.0.88 -> 13.1.0"]
    with pytest.raises(StoreError):
        s.put_action(t2.key, {"blobs": ["0" * 64]})


def test_gc_keeps_roots_and_drops_the_rest(tmp_path: Path) -> None:
    s = Store(tmp_path)
    keep, drop = s.put_bytes(b"keep"), s.put_bytes(b"drop")
    s.put_action("1" * 64, {"blobs": [keep]})
    s.put_action("2" * 64, {"blobs": [drop]})
    s.set_root("test", actions=["1" * 64])
    removed = collect_garbage(s)
    assert removed["actions"] == 1 and removed["blobs"] == 1
    assert s.has_blob(keep) and not s.has_blob(drop) and store_stats(s)["actions"] == 1


_HOLD_IN_USE = """
import sys, time
sys.path.insert(0, sys.argv[2])
from minibuild.store import Store
with Store(sys.argv[1]).in_use():
    print("holding", flush=True)
    sys.stdin.readline()                       # until the test says "done"
"""


def test_gc_waits_for_a_running_build_instead_of_deleting_its_temp_files(tmp_path: Path) -> None:
    """A build holds the store's "in use" lock (shared) for its run; gc must not sweep its `.tmp-*`
    files meanwhile, and sweeps them once the build has gone."""
    import subprocess
    import sys
    import threading

    s = Store(tmp_path)
    tmp = s.blob_dir / ".tmp-being-written"
    tmp.write_bytes(b"half a layer")
    build = subprocess.Popen([sys.executable, "-c", _HOLD_IN_USE, str(tmp_path), str(ROOT / "python")],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert build.stdout is not None and build.stdout.readline().strip() == "holding"
        waited: list[bool] = []
        done: dict[str, int] = {}
        gc = threading.Thread(target=lambda: done.update(collect_garbage(s)))
        from minibuild import cache_cmd
        orig = cache_cmd.ui.info
        cache_cmd.ui.info = lambda msg: waited.append("waiting" in msg)  # type: ignore[assignment]
        try:
            gc.start()
            gc.join(1.5)
            assert gc.is_alive() and waited == [True] and tmp.exists()   # blocked, said so, kept the file
            with Store(tmp_path).in_use():     # a second build may still start while gc waits (shared)
                pass
        finally:
            assert build.stdin is not None
            build.stdin.write("done\n")
            build.stdin.flush()
            build.wait(10)
            gc.join(10)
            cache_cmd.ui.info = orig  # type: ignore[assignment]
        assert not gc.is_alive() and done["tmp"] == 1 and not tmp.exists()
    finally:
        build.kill()
