"""The Slurm target with --replicas / --router: N model jobs (one per replica, each with its own port)
and a vllm-router job beside them, pointed at the model jobs' nodes once they run.

Replica jobs reuse slurm.py unchanged (job name NAME, NAME-r1, ...; a state file each). The router job
is submitted from cluster/slurm/router.sbatch and followed with slurm.follow (RUNNING, then its HTTP
port answering), so a queued or failed router job is explained like a model job. A gateway is not run
on Slurm (use the local or Kubernetes one in front of the router's URL).
"""
from __future__ import annotations

import dataclasses
import json
import re
import shlex
import string
import time
from typing import Any

from minibuild import ui
from minibuild.cluster import slurm
from minibuild.cluster.health import probe
from minibuild.cluster.render import sbatch_options
from minibuild.cluster.templates import template_dir
from minibuild.cluster.settings import Plan, RolloutError, state_dir
from minibuild.cluster.slurm_jobs import ACTIVE, job_info, node_address, submit
from minibuild.cluster.stack import replica_name, replica_plans, router_args, router_name, tool_path
from minibuild.config import Config

deployed = slurm.deployed      # the model jobs decide what is deployed and which ports are taken
ports = slurm.ports


def _router_plan(plan: Plan) -> Plan:
    return dataclasses.replace(plan, name=router_name(plan), replicas=1, router=None, gateway=None)


def replicas_recorded(cfg: Config, plan: Plan) -> list[tuple[int, Plan]]:
    pat = re.compile(rf"^{re.escape(plan.name)}(?:-r(\d+))?\.json$")
    out = [(int(m.group(1) or 0), f) for f in state_dir(cfg, "slurm").iterdir() if (m := pat.match(f.name))]
    return [(i, dataclasses.replace(plan, name=replica_name(plan, i))) for i, _ in sorted(out)]


def render_router(cfg: Config, plan: Plan, workers: list[str], output: str) -> str:
    rs = cfg.cluster.stack.router
    argv = [str(tool_path(cfg, "vllm-router")), *router_args(cfg, plan.router, "0.0.0.0", rs.port, "0.0.0.0",
                                                              rs.metrics_port, workers=workers)]
    text = (template_dir(cfg) / "slurm/router.sbatch").read_text()
    options = {k: v for k, v in plan.settings.items() if k in ("partition", "account", "qos")}
    return string.Template(text).substitute(
        job_name=router_name(plan), cpus=2, output=output, policy=plan.router, workers=" ".join(workers),
        partition_line=sbatch_options(options), command=" ".join(shlex.quote(a) for a in argv))


def start_router(cfg: Config, plan: Plan, workers: list[str]) -> bool:
    rs = cfg.cluster.stack.router
    rplan = dataclasses.replace(_router_plan(plan), port=rs.port)
    old = slurm.read_state(cfg, rplan)
    if old and old.get("workers") == workers and old.get("policy") == plan.router and \
            (job_info(old["job_id"]) or {}).get("JobState") in ACTIVE:
        ui.console().print(f"router job {old['job_id']} is already {plan.router} over these replicas; following it")
        return slurm.follow(cfg, rplan, old)
    slurm.cancel_plan(cfg, rplan)
    d = state_dir(cfg, "slurm")
    output = str(d / f"{rplan.name}-%j.out")
    path = d / f"{rplan.name}.sbatch"
    path.write_text(render_router(cfg, plan, workers, output))
    job_id = submit(str(path))
    state = {"kind": "router", "job_id": job_id, "script": str(path), "output": output, "port": rs.port,
             "metrics_port": rs.metrics_port, "policy": plan.router, "workers": workers, "submitted": time.time()}
    (d / f"{rplan.name}.json").write_text(json.dumps(state, indent=2))
    ui.console().print(f"submitted router job {job_id} ({plan.router} over {len(workers)} replicas) script: {path}")
    return slurm.follow(cfg, rplan, state)


def delete(cfg: Config, plan: Plan) -> bool:
    recorded = [rp for i, rp in replicas_recorded(cfg, plan) if i > 0]
    for p in [_router_plan(plan), plan, *recorded]:
        ids = slurm.cancel_plan(cfg, p)
        ui.console().print(f"cancelled {p.name}: {', '.join(ids)}" if ids else f"no job named {p.name}")
    return True


def rollout(cfg: Config, plan: Plan, dry_run: bool, delete_: bool) -> bool:
    if delete_:
        return delete(cfg, plan)
    if plan.gateway:
        raise RolloutError("--gateway runs locally or on Kubernetes, not as a Slurm job: point a local "
                           "`--gateway litellm` rollout at the router instead")
    for rp in replica_plans(plan):
        if not slurm.rollout(cfg, rp, dry_run, False):
            return False
    if dry_run:
        if plan.router:
            print(render_router(cfg, plan, [f"http://NODE-{i}:{rp.port}" for i, rp in enumerate(replica_plans(plan))],
                                "ROUTER-%j.out"))
        return True
    for i, rp in replicas_recorded(cfg, plan):     # scale down
        if i >= plan.replicas:
            slurm.cancel_plan(cfg, rp)
    if not plan.router:
        if slurm.read_state(cfg, _router_plan(plan)):
            slurm.cancel_plan(cfg, _router_plan(plan))
        return True
    return start_router(cfg, plan, [slurm.url(cfg, rp) for rp in replica_plans(plan)])


def url(cfg: Config, plan: Plan) -> str:
    try:
        return slurm.url(cfg, _router_plan(plan))
    except RolloutError:
        return slurm.url(cfg, plan)


def entries(cfg: Config, plan: Plan) -> list[dict[str, Any]]:
    out = []
    for role, p, path in ([("replica", rp, "/health") for _, rp in replicas_recorded(cfg, plan)] +
                          [("router", _router_plan(plan), "/readiness")]):
        state = slurm.read_state(cfg, p)
        if not state:
            continue
        info = job_info(state["job_id"]) or {}
        u = f"http://{node_address(info['NodeList'])}:{state['port']}" if info.get("JobState") == "RUNNING" else None
        out.append({"role": role, "name": p.name, "job": state["job_id"], "state": info.get("JobState", "gone"),
                    "url": u, "ready": bool(u) and probe(u, path=path)})
        if role == "router" and u and state.get("metrics_port"):   # what the Prometheus scrape config reads
            out[-1]["metrics_url"] = f"http://{node_address(info['NodeList'])}:{state['metrics_port']}/metrics"
    return out


def status(cfg: Config, plan: Plan, only: bool = False) -> None:
    slurm.status(cfg, plan, only)       # every model job, replicas included
    for e in entries(cfg, plan):
        if e["role"] == "router":
            ui.console().print(f"router job {e['job']} ({e['name']}): {e['state']}, {e['url'] or '-'}, "
                               f"ready {'yes' if e['ready'] else 'no'}")


def logs(cfg: Config, plan: Plan, lines: int, follow: bool = False) -> None:
    recorded = replicas_recorded(cfg, plan)
    if follow or len(recorded) <= 1:
        return slurm.logs(cfg, plan, lines, follow)
    for _, rp in recorded:
        print(f"==> {rp.name} <==")
        slurm.logs(cfg, rp, lines)
