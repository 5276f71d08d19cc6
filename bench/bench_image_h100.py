"""Build the production h100 images on this machine from the committed locks, and measure them.

Downloads ~2.9 GB (PyPI wheels + Debian .debs) into a scratch store; needs ~25 GB free under --work.
Runs in two fresh clones of this checkout's HEAD (committed state only; build/ext - the modules of
`invoke kernels --only ours` - copied in), with scratch stores and a docker-registry on 127.0.0.1:
  1. cold build A (downloads included), all stages       5. a Python-only change: rebuild, push again
  2. cold build B in another directory and store (the      6. a dependency bump (fastapi pinned lower,
     downloads seeded by hard link): digests must match       re-locked): rebuild, push again
  3. no-op `invoke image --profile h100`, new process      7. peers: whole-image re-push (a fresh repo,
  4. push of all three stages to their repositories          no mounts) by us and by `skopeo copy`
then the run check (bench/image_h100_run.py: torch/triton/CUDA inside the image, ldd of our modules,
`mini-vllm serve` answering the openai client on the tiny model on the CPU).
Usage: .venv/bin/python bench/bench_image_h100.py [--work DIR] [--json out.json] [--keep] [--skip-run]
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "python"))
sys.path.insert(0, str(REPO / "tests" / "image"))
sys.path.insert(0, str(REPO / "bench"))

from image_helpers import GIT_ENV, Registry  # noqa: E402
from minibuild.config import Config, load_config  # noqa: E402
from minibuild.image import build_images, debbase, pylock  # noqa: E402
from minibuild.image.oci import Layout  # noqa: E402
from minibuild.image.push import push_stage  # noqa: E402
from minibuild.image.registry import Reference, RegistryClient  # noqa: E402
from minibuild.image.wheels import lock_wheels  # noqa: E402
from minibuild.store import Store  # noqa: E402

PROFILE = "h100"


def git(cwd: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(cwd), *args], check=True, capture_output=True, env={**os.environ, **GIT_ENV})


def clone(dest: Path) -> Path:
    subprocess.run(["git", "clone", "-q", "--no-hardlinks", str(REPO), str(dest)], check=True)
    if (REPO / "build" / "ext").is_dir():
        shutil.copytree(REPO / "build" / "ext", dest / "build" / "ext")
    return dest


def config(checkout: Path) -> Config:
    return load_config(checkout / "build_config.yaml")


def timed_build(cfg: Config, store: Store, **kw: Any) -> tuple[float, dict[str, Any]]:
    t = time.monotonic()
    res = build_images(cfg, stage="all", store=store, profile=PROFILE, **kw)
    return round(time.monotonic() - t, 1), res


def seed_downloads(src: Store, dst: Store, checkout: Path, cfg: Config) -> int:
    """Hard-link the locked .debs and wheels of src into dst: a cold build without the downloads."""
    prof = cfg.images.profiles[PROFILE]
    digests = [p["sha256"] for p in debbase.read_lock(checkout / prof.base.lock)["packages"]]
    digests += [w.sha256 for w in pylock.read(checkout / prof.wheels.lock)]
    for d in digests:
        os.link(src.blob_path(d), dst.blob_dir / d)
    return len(digests)


def layer_table(cfg: Config, layout: Layout, digest: str) -> list[dict[str, Any]]:
    """name, compressed and uncompressed MB of each layer of the image (names from stages.yaml order)."""
    import yaml

    stages = yaml.safe_load(cfg.path(cfg.images.stages).read_text())
    names = [lay["name"] for s in ("essentials", "cuda", "server") for lay in stages[s]["layers"]]
    doc = layout.read_json(digest)
    assert len(names) == len(doc["layers"]), (names, len(doc["layers"]))
    rows = []
    for name, d in zip(names, doc["layers"]):
        n = 0
        with gzip.open(layout.blob(d["digest"].split(":")[1]), "rb") as f:
            while chunk := f.read(1 << 24):
                n += len(chunk)
        rows.append({"layer": name, "compressed_mb": round(d["size"] / 1e6, 1), "uncompressed_mb": round(n / 1e6, 1),
                     "digest": d["digest"][:19]})
    return rows


def push_all(cfg: Config, store: Store, target: str) -> tuple[float, dict[str, Any], dict[str, Any]]:
    t = time.monotonic()
    res = build_images(cfg, stage="all", store=store, push=target, profile=PROFILE)
    return round(time.monotonic() - t, 1), res["_push"], res


def pushed_bytes(stats: dict[str, Any]) -> int:
    return sum(s["bytes_uploaded"] for s in stats.values())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", default="/work/.bench-image-h100", help="scratch parent directory")
    ap.add_argument("--json", default="")
    ap.add_argument("--keep", action="store_true", help="keep the scratch directory")
    ap.add_argument("--skip-run", action="store_true", help="skip the run check of the unpacked server image")
    args = ap.parse_args()
    Path(args.work).mkdir(parents=True, exist_ok=True)
    free_gb = shutil.disk_usage(args.work).free / 1e9
    if free_gb < 25:
        sys.exit(f"error: {args.work} has {free_gb:.0f} GB free; this bench needs ~25 GB")
    work = Path(tempfile.mkdtemp(prefix="run-", dir=args.work))
    out: dict[str, Any] = {"machine": f"{os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}", "work": str(work),
                           "free_gb_before": round(free_gb), "head": subprocess.run(
                               ["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()}
    reg = None
    try:
        a, b = clone(work / "a"), clone(work / "b")
        cfg_a, cfg_b = config(a), config(b)
        store_a, store_b = Store(work / "store-a"), Store(work / "store-b")
        out["cold_build_with_downloads_s"], res_a = timed_build(cfg_a, store_a)
        out["seeded_blobs"] = seed_downloads(store_a, store_b, a, cfg_a)
        out["cold_build_downloads_cached_s"], res_b = timed_build(cfg_b, store_b)
        out["digests"] = {s: res_a[s]["digest"] for s in ("essentials", "cuda", "server")}
        out["reproducible"] = all(res_a[s]["digest"] == res_b[s]["digest"] for s in out["digests"])
        layout = Layout(Path(res_a["server"]["layout"]))
        out["layers"] = layer_table(cfg_a, layout, res_a["server"]["digest"].split(":")[1])

        env = {**os.environ, "MINI_VLLM_CACHE": str(work / "store-a"), "PYTHONPATH": str(a / "python")}
        invoke = Path(sys.executable).with_name("invoke")
        times = []
        for _ in range(3):
            t = time.monotonic()
            subprocess.run([str(invoke), "image", "--profile", PROFILE], cwd=a, env=env, check=True, capture_output=True)
            times.append(time.monotonic() - t)
        out["noop_invoke_s_median"] = round(statistics.median(times), 2)

        reg = Registry(work / "registry")
        out["push_all_s"], s1, _ = push_all(cfg_a, store_a, f"{reg.host}/bench:v1")
        out["push_all_bytes"] = {k: v["bytes_uploaded"] for k, v in s1.items()}
        out["push_all_detail"] = s1   # per stage repository: blobs uploaded / mounted / already there

        f = a / "python" / "mini_vllm" / "engine_args.py"
        f.write_text(f.read_text() + "\n# bench: a Python-only change\n")
        git(a, "add", "python/mini_vllm/engine_args.py")
        out["python_change_rebuild_s"], res_py = timed_build(cfg_a, store_a)
        out["python_change_ran"] = res_py["_ran"]
        out["python_change_push_s"], s2, _ = push_all(cfg_a, store_a, f"{reg.host}/bench:v2")
        out["python_change_push_bytes"] = pushed_bytes(s2)
        out["python_change_push_detail"] = s2

        # peers: the whole changed image pushed as if nothing were there (a fresh store knows no mounts)
        t = time.monotonic()
        whole = push_stage(Store(work / "store-peer"), layout, "server", Reference(reg.host, "whole/server", "v2"),
                           RegistryClient(reg.host))
        out["whole_push_ours_s"], out["whole_push_bytes"] = round(time.monotonic() - t, 1), whole.bytes_uploaded
        t = time.monotonic()
        subprocess.run(["skopeo", "copy", "--dest-tls-verify=false", f"oci:{layout.root}:server",
                        f"docker://{reg.host}/whole-skopeo/server:v2"], check=True, capture_output=True)
        out["whole_push_skopeo_s"] = round(time.monotonic() - t, 1)

        # a dependency bump: fastapi pinned below the locked release, re-locked, rebuilt, pushed
        prof = cfg_a.images.profiles[PROFILE]
        reqs = a / prof.wheels.requirements
        locked = {w.name: w.version for w in pylock.read(a / prof.wheels.lock)}
        reqs.write_text(reqs.read_text().replace("fastapi>=0.110", f"fastapi>=0.110,<{locked['fastapi']}"))
        lock_wheels(reqs, a / prof.wheels.lock, prof.target, prof.wheels.index, [])
        bumped = {w.name: w.version for w in pylock.read(a / prof.wheels.lock)}
        out["bump"] = {n: f"{locked.get(n)} -> {v}" for n, v in bumped.items() if locked.get(n) != v}
        git(a, "add", "-A")
        out["bump_rebuild_s"], res_bump = timed_build(cfg_a, store_a, explain=True)
        out["bump_ran"] = res_bump["_ran"]
        out["bump_push_s"], s3, _ = push_all(cfg_a, store_a, f"{reg.host}/bench:v3")
        out["bump_push_bytes"] = pushed_bytes(s3)
        out["bump_push_detail"] = s3
        out["image_bytes"] = sum(r["compressed_mb"] for r in out["layers"]) * 1e6
    finally:
        if reg is not None:
            reg.stop()
    print(json.dumps(out, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    if not args.skip_run:
        from image_h100_run import run_check

        out["run"] = run_check(Path(res_a["server"]["layout"]), work / "bundle")
        print(json.dumps(out["run"], indent=1))
        if args.json:
            Path(args.json).write_text(json.dumps(out, indent=1))
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
