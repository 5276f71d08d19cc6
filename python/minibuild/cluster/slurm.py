"""The `slurm` target: the server as a batch job - sbatch, follow to RUNNING and healthy, scancel.

Slurm allocates the GPUs (`--gres=gpu:TP` sets CUDA_VISIBLE_DEVICES) and picks the node; we learn
the node from `scontrol show job` and its address from `scontrol show node`, then wait on /health
while the job stays RUNNING. A job that waits for resources is queued, not failed: rollout says so
and leaves it in the queue when its wait runs out (status / --delete find it by name).
"""
from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from minibuild import ui
from minibuild.cluster.health import probe, tail, wait_healthy
from minibuild.cluster.render import render_slurm
from minibuild.cluster.settings import Plan, RolloutError, repo_root, resolve_path, state_dir
from minibuild.config import require

ACTIVE = {"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "RESIZING", "REQUEUED", "SUSPENDED"}
_KV = re.compile(r"(\w+)=(\S*)")


def _run(argv: list[str]) -> str:
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    except FileNotFoundError as exc:
        raise RolloutError(f"{argv[0]} not found: is this a Slurm login node?") from exc
    if r.returncode != 0:
        raise RolloutError(f"{' '.join(argv)} failed: {(r.stderr or r.stdout).strip()}")
    return r.stdout


def parse_record(line: str) -> dict[str, str]:
    """One `scontrol show -o` record as a dict."""
    return dict(_KV.findall(line))


def job_info(job_id: str) -> dict[str, str] | None:
    """scontrol's view of a job (None once Slurm forgot it)."""
    try:
        out = _run(["scontrol", "show", "job", "-o", job_id])
    except RolloutError as exc:
        if "Invalid job id" in str(exc):
            return None
        raise
    return parse_record(out.strip().splitlines()[0]) if out.strip() else None


def node_address(node: str) -> str:
    rec = parse_record(_run(["scontrol", "show", "node", "-o", node]).strip())
    return rec.get("NodeAddr") or node


def _state_file(cfg: dict[str, Any], plan: Plan) -> Path:
    return state_dir(cfg, "slurm") / f"{plan.name}.json"


def read_state(cfg: dict[str, Any], plan: Plan) -> dict[str, Any] | None:
    try:
        return json.loads(_state_file(cfg, plan).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _output(state: dict[str, Any], info: dict[str, str] | None) -> Path:
    if info and info.get("StdOut"):
        return Path(info["StdOut"])
    return Path(state["output"].replace("%j", state["job_id"]))


def cancel(cfg: dict[str, Any], plan: Plan) -> list[str]:
    """scancel every active job of this name (and the recorded one); returns the job ids."""
    ids = set(_run(["squeue", "-h", "-n", plan.name, "-o", "%i"]).split())
    state = read_state(cfg, plan)
    if state:
        ids.add(state["job_id"])
    for job in sorted(ids):
        subprocess.run(["scancel", job], capture_output=True, timeout=30)
    _state_file(cfg, plan).unlink(missing_ok=True)
    deadline = time.monotonic() + 60   # until the server is gone (its port free), within Slurm's KillWait
    while ids and time.monotonic() < deadline:
        states = [(job_info(j) or {}).get("JobState") for j in ids]
        if not any(s in ACTIVE for s in states):
            break
        time.sleep(0.3)
    return sorted(ids)


def submit(cfg: dict[str, Any], plan: Plan, dry_run: bool) -> dict[str, Any] | None:
    d = state_dir(cfg, "slurm")
    output = d / f"{plan.name}-%j.out"
    python = str(resolve_path(cfg, plan.settings.get("python") or ".venv/bin/python"))
    script = render_slurm(cfg, plan, output, python, extra_env={"PYTHONPATH": str(repo_root(cfg) / "python")})
    if dry_run:
        print(script)
        return None
    path = d / f"{plan.name}.sbatch"
    path.write_text(script)
    job_id = _run(["sbatch", "--parsable", str(path)]).strip().split(";")[0]
    state = {"job_id": job_id, "script": str(path), "output": str(output), "port": plan.port, "tp": plan.tp,
             "model": plan.model_path, "submitted": time.time()}
    _state_file(cfg, plan).write_text(json.dumps(state, indent=2))
    ui.console().print(f"submitted job {job_id} ({plan.name}, --gres=gpu:{plan.tp}) script: {path}")
    return state


def follow(cfg: dict[str, Any], plan: Plan, state: dict[str, Any]) -> bool:
    """Wait for the job to run and answer /health; explain a job that ended or stays queued."""
    job = state["job_id"]
    deadline = time.monotonic() + float(plan.settings.get("queue_timeout_s") or require(cfg, "cluster.wait_timeout_s"))
    info: dict[str, str] | None = None
    with ui.console().status(f"job {job}: submitted") as spinner:
        while time.monotonic() < deadline:
            info = job_info(job)
            st = (info or {}).get("JobState", "UNKNOWN")
            if st == "RUNNING":
                break
            if st not in ACTIVE:
                return _failed(state, info, f"job {job} ended {st} before serving")
            spinner.update(f"job {job}: {st} (reason {info.get('Reason')})")
            time.sleep(0.5)
        else:
            ui.console().print(f"[yellow]queued:[/] job {job} is still {info.get('JobState')} "
                          f"(reason {info.get('Reason')}); left in the queue - `invoke status --target slurm "
                          f"--tp {plan.tp}` to follow, `--delete` to cancel")
            return False
    node = info["NodeList"]
    url = f"http://{node_address(node)}:{state['port']}"
    state.update(node=node, url=url)
    _state_file(cfg, plan).write_text(json.dumps(state, indent=2))
    ui.console().print(f"job {job} RUNNING on {node}")

    def dead() -> str | None:
        now = job_info(job)
        st = (now or {}).get("JobState", "UNKNOWN")
        return None if st == "RUNNING" else f"job {job} left RUNNING: {st} {(now or {}).get('Reason', '')}"

    why = wait_healthy(url, float(plan.settings.get("health_timeout_s", 1800)), dead, f"job {job}")
    if why:   # a server that will not serve must not keep holding GPUs
        info = job_info(job)
        if (info or {}).get("JobState") in ACTIVE:
            cancel(cfg, plan)
            why += f"; cancelled job {job}"
        return _failed(state, info, why)
    ui.console().print(f"[green]serving[/] {plan.served_name} at {url} (job {job} on {node})")
    return True


def _failed(state: dict[str, Any], info: dict[str, str] | None, why: str) -> bool:
    out = _output(state, info)
    ui.console().print(f"[red]rollout failed:[/] {why}" + (f" (exit {info.get('ExitCode')})" if info else ""))
    ui.console().print(f"--- last lines of {out} ---")
    for line in tail(out, 30):
        ui.console().print(line, markup=False, highlight=False)
    return False


def rollout(cfg: dict[str, Any], plan: Plan, dry_run: bool, delete: bool) -> bool:
    if delete:
        ids = cancel(cfg, plan)
        ui.console().print(f"cancelled {', '.join(ids)}" if ids else f"no job named {plan.name}")
        return True
    old = read_state(cfg, plan)
    if not dry_run and old:
        info = job_info(old["job_id"])
        if info and info.get("JobState") in ACTIVE and old.get("tp") == plan.tp and old.get("model") == plan.model_path \
                and old.get("port") == plan.port:
            ui.console().print(f"job {old['job_id']} ({plan.name}) is already {info['JobState']}; following it")
            return follow(cfg, plan, old)
        cancel(cfg, plan)
    state = submit(cfg, plan, dry_run)
    return True if state is None else follow(cfg, plan, state)


def url(cfg: dict[str, Any], plan: Plan) -> str:
    state = read_state(cfg, plan)
    info = job_info(state["job_id"]) if state else None
    if not state or not info or info.get("JobState") != "RUNNING":
        raise RolloutError(f"no RUNNING job {plan.name}: `invoke rollout --target slurm --tp {plan.tp}` first")
    return f"http://{node_address(info['NodeList'])}:{state['port']}"


def status(cfg: dict[str, Any], plan: Plan) -> None:
    table = Table(title=f"slurm {plan.name}")
    for col in ("job", "state", "reason", "node", "healthy", "output"):
        table.add_column(col)
    out = _run(["squeue", "-h", "-n", plan.name, "-o", "%i"]).split()
    state = read_state(cfg, plan)
    ids = sorted(set(out) | ({state["job_id"]} if state else set()))
    for job in ids:
        info = job_info(job) or {}
        healthy = "-"
        if info.get("JobState") == "RUNNING" and state:
            healthy = "yes" if probe(f"http://{node_address(info['NodeList'])}:{state['port']}") else "no"
        table.add_row(job, info.get("JobState", "gone"), info.get("Reason", "-"), info.get("NodeList", "-"),
                      healthy, info.get("StdOut", "-"))
    if not ids:
        table.add_row("-", "not deployed", "-", "-", "-", "-")
    Console().print(table)


def logs(cfg: dict[str, Any], plan: Plan, lines: int) -> None:
    state = read_state(cfg, plan)
    if not state:
        raise RolloutError(f"no job recorded for {plan.name}")
    for line in tail(_output(state, job_info(state["job_id"])), lines):
        print(line)
