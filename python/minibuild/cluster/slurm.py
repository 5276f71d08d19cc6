"""The `slurm` target: each served model as its own batch job - sbatch, follow to RUNNING and healthy, scancel.

Like the user's Slurm guide (serve_phi3.sh and serve_mistral.sh side by side), a job is named for its
served model and listens on its own port, so several models share a cluster - and a node. Slurm
allocates the GPUs (`--gres=gpu:TP` sets CUDA_VISIBLE_DEVICES) and picks the node; we learn the node
from `scontrol show job` and its address from `scontrol show node`, then wait on /health while the
job stays RUNNING. A job that waits for resources is queued, not failed: rollout says so and leaves
it in the queue when its wait runs out (status / --delete find it by name).
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from rich.table import Table

from minibuild import ui
from minibuild.cluster import slurm_runtime
from minibuild.cluster.follow import follow_file
from minibuild.cluster.health import probe, tail, wait_healthy
from minibuild.cluster.render import render_slurm, server_args
from minibuild.cluster.settings import Plan, RolloutError, state_dir
from minibuild.cluster.slurm_jobs import ACTIVE, cancel, job_info, job_state, node_address, queued, submit
from minibuild.config import Config


def _state_file(cfg: Config, name: str) -> Path:
    return state_dir(cfg, "slurm") / f"{name}.json"


def read_state(cfg: Config, plan: Plan) -> dict[str, Any] | None:
    try:
        return json.loads(_state_file(cfg, plan.name).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _states(cfg: Config) -> dict[str, dict[str, Any]]:
    """Every recorded server job of this checkout, by name."""
    out = {}
    for f in sorted(state_dir(cfg, "slurm").glob("*.json")):
        try:
            state = json.loads(f.read_text())
        except (json.JSONDecodeError, OSError):
            continue
        if state.get("kind", "serve") == "serve":
            out[f.stem] = state
    return out


def _output(state: dict[str, Any], info: dict[str, str] | None) -> Path:
    if info and info.get("StdOut"):
        return Path(info["StdOut"])
    return Path(state["output"].replace("%j", state["job_id"]))


def deployed(cfg: Config, plan: Plan) -> list[str]:
    """Served names of the server jobs in the queue (found by their comment)."""
    return sorted({j.served for j in queued("serve")})


def ports(cfg: Config, plan: Plan) -> tuple[int | None, dict[int, str]]:
    """(this model's recorded port, {port: name} of the other recorded jobs still in the queue)."""
    active = {j.job_id for j in queued("serve")}
    states = _states(cfg)
    taken = {s["port"]: name for name, s in states.items() if name != plan.name and s["job_id"] in active}
    return (states.get(plan.name) or {}).get("port"), taken


def cancel_plan(cfg: Config, plan: Plan) -> list[str]:
    """scancel every server job of this name (and the recorded one); returns the job ids."""
    ids = {j.job_id for j in queued("serve") if j.name == plan.name}
    state = read_state(cfg, plan)
    if state:
        ids.add(state["job_id"])
    _state_file(cfg, plan.name).unlink(missing_ok=True)
    return cancel(ids)


def job_script(cfg: Config, plan: Plan, kind: str, args: list[str], output: Path,
               mounts: list[tuple[str, bool]], values: dict[str, Any] | None = None
               ) -> tuple[str, slurm_runtime.Runtime]:
    """The sbatch script of a serve / batch job and the runtime it uses (image by digest, or the checkout)."""
    runtime = slurm_runtime.for_plan(cfg, plan)
    python = str(cfg.path(plan.settings["python"])) if plan.settings.get("python") else sys.executable
    env_names = [*(cfg.cluster.env), "MINI_VLLM_TP", "CUDA_VISIBLE_DEVICES",
                 *(ref.env for ref in cfg.cluster.secrets.values())]
    line = slurm_runtime.launch(cfg, runtime, args, python, mounts, env_names)
    extra_env = {"PYTHONPATH": str(cfg.root / "python")} if runtime.name == "venv" else {}
    script = render_slurm(cfg, plan, output, line, runtime.name, kind=kind, extra_env=extra_env,
                          values={"runtime_reason": " ".join(runtime.reason.split()), **(values or {})})
    return script, runtime


def submit_server(cfg: Config, plan: Plan, dry_run: bool) -> dict[str, Any] | None:
    d = state_dir(cfg, "slurm")
    output = d / f"{plan.name}-%j.out"
    script, runtime = job_script(cfg, plan, "serve", server_args(plan), output, [(plan.model_path, True)])
    ui.console().print(f"runtime: [bold]{runtime.name}[/] ({runtime.reason})" +
                       (f"; image {runtime.image}" if runtime.image else ""))
    if dry_run:
        print(script)
        return None
    path = d / f"{plan.name}.sbatch"
    path.write_text(script)
    job_id = submit(str(path))
    state = {"kind": "serve", "job_id": job_id, "script": str(path), "output": str(output), "port": plan.port,
             "tp": plan.tp, "model": plan.model_path, "served_name": plan.served_name, "runtime": runtime.name,
             "image": runtime.image, "submitted": time.time()}
    _state_file(cfg, plan.name).write_text(json.dumps(state, indent=2))
    ui.console().print(f"submitted job {job_id} ({plan.name}, --gres=gpu:{plan.tp}, port {plan.port}) script: {path}")
    return state


def follow(cfg: Config, plan: Plan, state: dict[str, Any]) -> bool:
    """Wait for the job to run and answer /health; explain a job that ended or stays queued."""
    job = state["job_id"]
    deadline = time.monotonic() + float(plan.settings.get("queue_timeout_s") or cfg.cluster.wait_timeout_s)
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
                               f"(reason {info.get('Reason')}); left in the queue - `invoke status --target slurm` "
                               f"to follow, `invoke rollout --target slurm --delete --served-model-name "
                               f"{plan.served_name}` to cancel")
            return False
    node = info["NodeList"]
    url = f"http://{node_address(node)}:{state['port']}"
    state.update(node=node, url=url)
    _state_file(cfg, plan.name).write_text(json.dumps(state, indent=2))
    ui.console().print(f"job {job} RUNNING on {node}")

    def dead() -> str | None:
        now = job_info(job)
        st = (now or {}).get("JobState", "UNKNOWN")
        return None if st == "RUNNING" else f"job {job} left RUNNING: {st} {(now or {}).get('Reason', '')}"

    why = wait_healthy(url, float(plan.settings.get("health_timeout_s", 1800)), dead, f"job {job}")
    if why:   # a server that will not serve must not keep holding GPUs
        info = job_info(job)
        if (info or {}).get("JobState") in ACTIVE:
            cancel_plan(cfg, plan)
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


def rollout(cfg: Config, plan: Plan, dry_run: bool, delete: bool) -> bool:
    if delete:
        ids = cancel_plan(cfg, plan)
        ui.console().print(f"cancelled {', '.join(ids)} ({plan.name})" if ids else f"no job named {plan.name}")
        return True
    old = read_state(cfg, plan)
    if not dry_run and old:
        info = job_info(old["job_id"])
        if info and info.get("JobState") in ACTIVE and old.get("tp") == plan.tp and old.get("model") == plan.model_path \
                and old.get("port") == plan.port:
            ui.console().print(f"job {old['job_id']} ({plan.name}) is already {info['JobState']}; following it")
            return follow(cfg, plan, old)
        cancel_plan(cfg, plan)
    state = submit_server(cfg, plan, dry_run)
    return True if state is None else follow(cfg, plan, state)


def url(cfg: Config, plan: Plan) -> str:
    state = read_state(cfg, plan)
    info = job_info(state["job_id"]) if state else None
    if not state or not info or info.get("JobState") != "RUNNING":
        raise RolloutError(f"no RUNNING job {plan.name}: `invoke rollout --target slurm --served-model-name "
                           f"{plan.served_name}` first")
    return f"http://{node_address(info['NodeList'])}:{state['port']}"


def status(cfg: Config, plan: Plan, only: bool = False) -> None:
    """A row per server job: those in the queue (any checkout) and those this checkout recorded."""
    table = Table(title="slurm deployments")
    for col in ("name", "model", "job", "state", "reason", "node", "port", "healthy", "runtime", "output"):
        table.add_column(col)
    states = _states(cfg)
    rows = {j.job_id: (j.name, j.served) for j in queued("serve")}
    rows.update({s["job_id"]: (name, s.get("served_name", "-")) for name, s in states.items()})
    shown = 0
    for job, (name, served) in sorted(rows.items(), key=lambda kv: (kv[1][0], kv[0])):
        if only and name != plan.name:
            continue
        info, state = job_info(job) or {}, states.get(name) or {}
        port = state.get("port") if state.get("job_id") == job else None
        healthy = "-"
        if info.get("JobState") == "RUNNING" and port:
            healthy = "yes" if probe(f"http://{node_address(info['NodeList'])}:{port}") else "no"
        table.add_row(name, served, job, info.get("JobState", "gone"), info.get("Reason", "-"),
                      info.get("NodeList", "-"), str(port or "-"), healthy, state.get("runtime", "-"),
                      info.get("StdOut", "-"))
        shown += 1
    if not shown:
        table.add_row(plan.name if only else "-", "-", "-", "not deployed", *["-"] * 6)
    ui.table_console().print(table)
    batches = [j for j in queued("batch") if not only or j.served == plan.served_name]
    if batches:      # `invoke batch --target slurm` jobs in the queue
        jobs = Table(title="slurm batch jobs")
        for col in ("name", "model", "job", "state", "reason", "node"):
            jobs.add_column(col)
        for j in batches:
            jobs.add_row(j.name, j.served, j.job_id, j.state, j.reason, j.node or "-")
        ui.table_console().print(jobs)


def logs(cfg: Config, plan: Plan, lines: int, follow: bool = False) -> None:
    """The job's output file; with follow, new lines as the job writes them, until it leaves the queue."""
    state = read_state(cfg, plan)
    if not state:
        raise RolloutError(f"no job recorded for {plan.name}")
    job = state["job_id"]
    if not follow:
        for line in tail(_output(state, job_info(job)), lines):
            print(line)
        return
    follow_file(lambda: _output(state, job_info(job)), lines, lambda: job_state(job) in ACTIVE)
