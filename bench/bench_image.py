"""Benchmark `invoke image`: no-op rebuild, server-only rebuild + push, bytes pushed; peer: skopeo copy.

Runs in a scratch copy of the checkout with a scratch store (nothing of yours is touched) and a
docker-registry it starts on 127.0.0.1. Steps, each timed:
  1. cold build of all stages (local profile: Debian base + torch CPU wheels + ext + server)
  2. no-op `invoke image` (a fresh process, as a user runs it) - median of 3
  3. first push of the server image to repo A (everything uploaded)
  4. a one-line change in python/mini_vllm, rebuild (server layer only) and push to repo A again
  5. peers: `skopeo copy oci:<layout>:server docker://<registry>/peer/server:v1` right after step 3 (a
     fresh repo, and skopeo has not seen this registry, so it uploads everything like our first push),
     and skopeo copy of the changed image to repo A (it HEADs blobs too)
Usage: .venv/bin/python bench/bench_image.py [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "python"))
sys.path.insert(0, str(REPO / "tests" / "image"))

from image_helpers import Registry, git, make_checkout  # noqa: E402
from minibuild.config import load_config  # noqa: E402
from minibuild.image import build_images, push_stage  # noqa: E402
from minibuild.image.oci import Layout  # noqa: E402
from minibuild.image.registry import PushStats, Reference, RegistryClient  # noqa: E402
from minibuild.store import Store  # noqa: E402


def _blob_bytes(layout: Layout, digest: str) -> int:
    doc = layout.read_json(digest)
    return sum(d["size"] for d in doc["layers"]) + doc["config"]["size"]


def _timed_skopeo_copy(layout: Layout, dest: str) -> float:
    """Seconds for `skopeo copy` of the layout's server image to dest (a docker:// reference)."""
    t = time.monotonic()
    subprocess.run(["skopeo", "copy", "--dest-tls-verify=false", f"oci:{layout.root}:server", f"docker://{dest}"],
                   check=True, capture_output=True)
    return round(time.monotonic() - t, 2)


def _timed_push(store: Store, layout: Layout, ref: str) -> tuple[float, PushStats]:
    """Seconds and counters of our client pushing the layout's server image to ref."""
    t = time.monotonic()
    stats = push_stage(store, layout, "server", Reference.parse(ref), RegistryClient(ref.split("/")[0]))
    return round(time.monotonic() - t, 2), stats


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", default="")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-image-"))
    checkout = make_checkout(work / "repo")
    store_dir = work / "store"
    env = {**os.environ, "MINI_VLLM_CACHE": str(store_dir), "MINI_VLLM_IMAGE_PROFILE": "local"}
    os.environ.update({k: env[k] for k in ("MINI_VLLM_CACHE", "MINI_VLLM_IMAGE_PROFILE")})
    cfg = load_config(checkout / "build_config.yaml")
    store = Store(store_dir)
    out: dict[str, object] = {"machine": f"{os.cpu_count()} cores", "work": str(work)}

    t = time.monotonic()
    res = build_images(cfg, stage="all", store=store)
    out["cold_build_s"] = round(time.monotonic() - t, 2)

    # The no-op, as a user runs it: a new process through invoke's entry point logic.
    cmd = [sys.executable, "-c", "import sys; sys.path.insert(0, 'python'); from minibuild.config import load_config;"
           " from minibuild.image import build_images; build_images(load_config('build_config.yaml'), 'all')"]
    times = []
    for _ in range(3):
        t = time.monotonic()
        subprocess.run(cmd, cwd=checkout, env=env, check=True, capture_output=True)
        times.append(time.monotonic() - t)
    out["noop_process_s_median"] = round(statistics.median(times), 3)
    t = time.monotonic()
    build_images(cfg, stage="all", store=store)
    out["noop_in_process_s"] = round(time.monotonic() - t, 3)

    reg = Registry(work / "registry")
    try:
        layout = Layout(Path(res["server"]["layout"]))
        out["first_push_s"], s1 = _timed_push(store, layout, f"{reg.host}/bench/server:v1")
        out["first_push_bytes"] = s1.bytes_uploaded
        # peer on the same job, before skopeo has seen this registry (its blob-info cache would let it
        # mount too): a full copy of the same image into a fresh repository.
        out["peer_skopeo_first_push_s"] = _timed_skopeo_copy(layout, f"{reg.host}/peer/server:v1")

        f = checkout / "python" / "mini_vllm" / "engine_args.py"
        f.write_text(f.read_text() + "\n# bench: a Python-only change\n")
        git(checkout, "add", "python/mini_vllm/engine_args.py")      # images pack git's index
        t = time.monotonic()
        res2 = build_images(cfg, stage="all", store=store)
        out["server_only_rebuild_s"] = round(time.monotonic() - t, 2)
        out["server_only_push_s"], s2 = _timed_push(store, layout, f"{reg.host}/bench/server:v2")
        out["second_push_bytes"] = s2.bytes_uploaded
        out["second_push_blobs_uploaded"] = s2.blobs_uploaded
        out["image_bytes"] = _blob_bytes(layout, res2["server"]["digest"].split(":")[1])
        # peer on the same job: skopeo pushes the changed image to repo A too (it HEADs blobs as well)
        out["peer_skopeo_copy_same_repo_s"] = _timed_skopeo_copy(layout, f"{reg.host}/bench/server:v2-skopeo")

        out["ours_push_fresh_repo_s"], s3 = _timed_push(store, layout, f"{reg.host}/ours-fresh/server:v2")
        out["ours_push_fresh_repo_bytes"] = s3.bytes_uploaded
        out["ours_push_fresh_repo_mounted"] = s3.blobs_mounted
    finally:
        reg.stop()
    out["ratio_peer_over_ours_first_push"] = round(out["peer_skopeo_first_push_s"] /  # type: ignore[operator]
                                                   max(out["first_push_s"], 1e-3), 2)  # type: ignore[arg-type]
    out["ratio_first_over_second_push_bytes"] = round(out["first_push_bytes"] /  # type: ignore[operator]
                                                      max(out["second_push_bytes"], 1), 1)  # type: ignore[arg-type]
    print(json.dumps(out, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
