"""mini-vLLM's commands. Each task parses its arguments and calls one library function.

`invoke --list` shows them all; `invoke --help TASK` explains the flags. The logic lives in
python/minibuild (build, images, rollout, verify) and python/mini_vllm (the runtime server).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT / "python"))

from minibuild.cli_task import task  # noqa: E402  (no automatic short flags: one meaning per short flag)


def _config():
    """build_config.yaml + the environment, read once per task; a bad value is one line and exit 1."""
    from minibuild.config import ConfigError, load_config
    from minibuild.ui import error

    try:
        return load_config(ROOT / "build_config.yaml")
    except ConfigError as exc:
        error(str(exc))
        raise SystemExit(1) from None


# --- build engine (issue: build engine, pinned sources, invoke kernels) ------------------------

@task(help={"offline": "use only the store and local (file://) mirrors, try no network (default: off)",
            "mirror_dir": "directory of <name>-<commit>.tar source tarballs (default: $MINI_VLLM_MIRROR)"})
def fetch(c, offline=False, mirror_dir=""):
    """Bring the pinned third-party sources into the store, verified by tree hash."""
    from minibuild.sources import SourceError, fetch_all
    from minibuild.ui import failures_as_one_line

    with failures_as_one_line(SourceError):
        fetch_all(_config(), offline=offline, mirror=mirror_dir or None)


@task(help={
    "explain": "print, for each task that runs, which input changed (default: off)",
    "dry_run": "print what would run, run nothing (default: off)",
    "offline": "use only the store and local mirrors for sources, try no network (default: off)",
    "jobs": "parallel compile jobs (default: bounded by cores and free memory)",
    "only": "comma-separated kernel sets to build (default: all in build_config.yaml)",
    "mirror_dir": "directory of <name>-<commit>.tar source tarballs (default: $MINI_VLLM_MIRROR)",
})
def kernels(c, explain=False, dry_run=False, offline=False, jobs=0, only="", mirror_dir=""):
    """Compile our CUDA kernels and the GPT-OSS subset of FA3 for sm_90a; link extension modules."""
    from minibuild.kernels import build_kernels

    ok = build_kernels(_config(), explain=explain, dry_run=dry_run, offline=offline, jobs=jobs or None,
                       only=[s for s in only.split(",") if s] or None, mirror=mirror_dir or None)
    if not ok:
        raise SystemExit(1)


@task(help={"dot": "also write the graph as Graphviz DOT to this path (default: none)",
            "png": "also render a PNG to this path (needs graphviz's dot; default: none)",
            "imports": "instead, redraw the house from the code's imports: docs/architecture.svg and .dot "
                       "(default: off)"})
def graph(c, dot="", png="", imports=False):
    """Print the task graph (sources -> objects -> modules -> images -> rollout); --imports: the house."""
    if imports:
        from minibuild.arch import draw_docs

        draw_docs(ROOT)
        return
    from minibuild.graph import show_graph

    show_graph(_config(), dot=dot or None, png=png or None)


@task(help={"stats": "print entry counts and sizes (default: on unless --gc)",
            "gc": "delete entries no current build references, and .tmp-* leftovers (default: off)",
            "max_age_days": "with --gc: also keep anything used within this many days (default: 0 = only what builds use)"})
def cache(c, stats=False, gc=False, max_age_days=0):
    """Inspect or prune the content-addressed store."""
    from minibuild.cache_cmd import cache_command
    from minibuild.ui import failures_as_one_line

    with failures_as_one_line():
        cache_command(_config(), stats=stats or not gc, gc=gc, max_age_days=max_age_days)


# --- runtime server -------------------------------------------------------------------------------

@task(help={"tiny": "write the tiny random GPT-OSS checkpoint, the embedded default model (default: on; the only kind)",
            "out": "output directory (default: model.tiny_dir in build_config.yaml)",
            "seed": "random seed (default: 0)"})
def model(c, tiny=True, out="", seed=0):
    """Write a deterministic random tiny GPT-OSS checkpoint in the published format."""
    from minibuild.server_entry import ServerEntryError, write_tiny_model
    from minibuild.ui import error

    try:
        path, _ = write_tiny_model(_config(), Path(out) if out else None, seed=seed)
    except ServerEntryError as exc:
        error(str(exc))
        raise SystemExit(1) from None
    print(path)


@task(help={"model": "model directory (default: the tiny model)",
            "port": "port to listen on (default: server.port in build_config.yaml, 8000)",
            "tp": "tensor parallel size (default: 1)"})
def serve(c, model="", port=0, tp=1):
    """Run `mini-vllm serve` in the foreground."""
    cfg = _config()
    model_dir = model or str(cfg.model.tiny_dir)
    argv = [sys.executable, "-m", "mini_vllm.cli", "serve", model_dir,
            "--port", str(port or cfg.server_port), "--tensor-parallel-size", str(tp)]
    os.execvp(argv[0], argv)


# --- images ------------------------------------------------------------------------------------------

@task(help={"stage": "a stage of images/stages.yaml, or all: the top stage and those below it (default: all)",
            "push": "REGISTRY[/NAMESPACE][:TAG] or default[:TAG] (registry.default): push each stage of the chain to "
                    "NAMESPACE/{registry.prefix}{stage}:TAG, TAG defaulting to the commit (default: no push)",
            "explain": "say why a layer or stage rebuilt (default: off)", "dry_run": "print what would be built (default: off)",
            "lock": "re-resolve the profile's base and wheel locks (images/*.lock*), build nothing (default: off)",
            "profile": "image profile from build_config.yaml images.profiles (default: images.profile)"})
def image(c, stage="all", push="", explain=False, dry_run=False, lock=False, profile=""):
    """Assemble layered, reproducible OCI images without a daemon; optionally push them."""
    from minibuild.image import IMAGE_ERRORS, build_images, lock_images
    from minibuild.ui import error

    cfg = _config()
    try:
        if lock:
            lock_images(cfg, profile=profile or None)
        else:
            build_images(cfg, stage=stage, push=push or None, explain=explain, dry_run=dry_run,
                         profile=profile or None)
    except IMAGE_ERRORS as exc:
        error(str(exc))
        raise SystemExit(1) from None


# --- rollout & verify ----------------------------------------------------------------------------------

_SERVED = ("served model name: names the deployment (Kubernetes objects, Slurm job, local process) "
           "and what clients ask for (default: the model path's last component)")


@task(help={"tp": "tensor parallel size (default: 1)", "target": "hyperpod | eks | slurm | local (default: local)",
            "dry_run": "print the rendered manifests / job script (and a diff against what is live); apply nothing "
                       "(default: off)",
            "delete": "remove the deployment of --served-model-name / --model (default: the only one, else the "
                      "default model's)",
            "image": "image reference REPO@sha256:... or a bare sha256: digest (default: build/images/server.json)",
            "model": "model path (default: cluster.targets.<target>.model_path / the tiny model for local)",
            "served_model_name": _SERVED,
            "replicas": "model server replicas (default: 1)",
            "router": "put vllm-router in front: cache_aware | consistent_hash | power_of_two | round_robin | "
                      "random (default: none)",
            "gateway": "put a gateway in front of the router / Service: litellm (default: none)",
            "autoscale": "Kubernetes: keda | hpa, scale on queued requests within cluster.autoscale's "
                         "min/max (default: none, a fixed replica count)"})
def rollout(c, tp=1, target="local", dry_run=False, delete=False, image="", model="", served_model_name="",
            replicas=1, router="", gateway="", autoscale=""):
    """Deploy one model to a target (several live side by side), wait until it serves, diagnose failures."""
    from minibuild.cluster import rollout as do_rollout

    ok = do_rollout(_config(), target=target, tp=tp, dry_run=dry_run, delete=delete,
                    image=image or None, model=model or None, served_name=served_model_name or None,
                    replicas=replicas, router=router or None, gateway=gateway or None,
                    autoscale=autoscale or None)
    if not ok:
        raise SystemExit(1)


@task(help={"target": "hyperpod | eks | slurm | local (default: local)",
            "served_model_name": "show only this deployment (default: all)",
            "json": "print one deployment's parts as a JSON list of {role: replica|router|gateway, url, "
                    "pid|pod|job, ready} (default: a table of all)"})
def status(c, target="local", served_model_name="", json=False):
    """List the target's deployments and the state of each."""
    from minibuild.cluster import status as do_status

    do_status(_config(), target=target, served_name=served_model_name or None, as_json=json)


@task(help={"target": "hyperpod | eks | slurm | local (default: local)",
            "served_model_name": "whose logs (default: the only deployment, else the default model's)",
            "tail": "lines of the past to print (default: 100)",
            "follow": "keep printing new lines as they are written, until the server stops or Ctrl-C (default: off)"})
def logs(c, target="local", served_model_name="", tail=100, follow=False):
    """Print a deployment's server log; -f follows it."""
    from minibuild.cluster import logs as do_logs

    do_logs(_config(), target=target, served_name=served_model_name or None, tail=tail, follow=follow)


@task(help={"target": "hyperpod | eks | slurm | local (default: local)", "url": "check this URL instead of the target's (default: the target's)",
            "served_model_name": "which deployment (default: the only one, else the default model's)",
            "api_key": "API key (default: $MINI_VLLM_API_KEY)"})
def verify(c, target="local", url="", served_model_name="", api_key=""):
    """Prove the deployed server works: health, models, completions, chat, streaming, metrics."""
    from minibuild.verify import verify as do_verify

    cfg = _config()
    ok = do_verify(cfg, target=target, url=url or None, served_name=served_model_name or None,
                   api_key=api_key or cfg.cluster.api_key)
    if not ok:
        raise SystemExit(1)


@task(help={
    "url": "server A's base URL, e.g. http://127.0.0.1:8000 (required, no default)",
    "url_b": "server B's base URL for an A/B comparison (default: none)",
    "label_a": "name of A in tables and plots (default: A)", "label_b": "name of B (default: B)",
    "concurrency": "comma-separated concurrency levels (default: 1,8,64)",
    "input_len": "prompt tokens per request (default: 128)", "output_len": "output tokens per request (default: 128)",
    "requests": "requests per level (default: 0 = 2 per concurrent slot, at least 8)",
    "out": "output directory (default: build/bench)", "model": "model name in requests (default: first of /v1/models)",
    "api_key": "API key (default: $MINI_VLLM_API_KEY)", "warmup": "warm-up requests per server (default: 2)",
    "temperature": "sampling temperature (default: 0)", "timeout": "per-request timeout in seconds (default: 600)",
    "rounds": "run each level this many times, A and B alternating, and pool them (default: 1)"})
def bench(c, url="", url_b="", label_a="A", label_b="B", concurrency="1,8,64", input_len=128, output_len=128,
          requests=0, out="build/bench", model="", api_key="", warmup=2, temperature=0.0, timeout=600.0, rounds=1):
    """Streamed load over the OpenAI API at each concurrency (A, or A vs B): table + PNG plots in --out."""
    from minibuild.bench import bench_command

    if not bench_command(url, url_b, label_a, label_b, concurrency, input_len, output_len, requests, out, model,
                         api_key or _config().cluster.api_key, warmup, temperature, timeout, rounds):
        raise SystemExit(1)


@task(auto_shortflags=False,
      help={"input": "OpenAI Batch input file: one {custom_id, method, url, body} a line (required)",
            "output": "results file (JSONL), appended; a rerun skips the custom_ids already in it (required)",
            "target": "local | slurm (default: local)",
            "model": "model path (default: cluster.targets.<target>.model_path / the tiny model for local)",
            "served_model_name": "the model name requests may give (default: the model path's last component)",
            "tp": "tensor parallel size (default: 1)",
            "image": "Slurm: server image REPO@sha256:... for a container runtime (default: build/images/server.json)",
            "dry_run": "print the command / job script, run nothing (default: off)"})
def batch(c, input="", output="", target="local", model="", served_model_name="", tp=1, image="", dry_run=False):
    """Offline inference over an OpenAI Batch file through the engine, here or as a Slurm job; resumable."""
    from minibuild.cluster.batch import batch as do_batch

    if not input or not output:
        print("invoke batch: --input FILE and --output FILE are both required", file=sys.stderr)
        raise SystemExit(2)
    if not do_batch(_config(), input, output, target=target, model=model or None,
                    served_name=served_model_name or None, tp=tp, image=image or None, dry_run=dry_run):
        raise SystemExit(1)


# --- the two README commands -------------------------------------------------------------------------

@task
def up(c):
    """The main job on the embedded default: tiny model, kernels, images, local rollout, verify."""
    from minibuild.pipeline import up as do_up

    if not do_up(_config(), ROOT):
        raise SystemExit(1)


@task(help={"k": "only tests matching this pytest -k expression (default: all)",
            "x": "stop at the first failure (default: off)"})
def test(c, k="", x=False):
    """Run the whole test suite (what CI runs)."""
    args = [sys.executable, "-m", "pytest", "-q", "-ra", "--durations=15"]
    if k:
        args += ["-k", k]
    if x:
        args.append("-x")
    os.execvp(args[0], args)
