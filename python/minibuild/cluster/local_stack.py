"""The local target with --replicas / --router / --gateway: N server processes behind a real vllm-router
process, and a LiteLLM proxy process in front - all on 127.0.0.1.

Replicas reuse local.py unchanged (one state file each: NAME.json, NAME-r1.json, ...), so a one-replica
rollout is exactly what it was. The router and the gateway are recorded in NAME-router.json /
NAME-gateway.json with their pid *and* the pid's start time: vllm-router renames its process
("vllm::router"), so a pid is checked against /proc/PID/stat's start time, not its command line.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import secrets
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import yaml
from rich.table import Table

from minibuild import ui
from minibuild.cluster import local
from minibuild.cluster.health import probe, tail, wait_healthy
from minibuild.cluster.follow import follow_files
from minibuild.cluster.settings import Plan, RolloutError, state_dir
from minibuild.cluster.stack import (gateway_config, gateway_name, replica_name, replica_plans, router_args,
                                     router_name, tool_path)
from minibuild.config import Config

ROUTER_READY = "/readiness"            # vllm-router: 200 while at least one worker is healthy
GATEWAY_READY = "/health/liveliness"   # LiteLLM proxy: unauthenticated liveness


# --- processes ------------------------------------------------------------------------------------------
def _start_ticks(pid: int) -> int | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None
    return None if fields[0] == "Z" else int(fields[19])


def running(rec: dict[str, Any] | None) -> bool:
    """The recorded process still runs (same pid, same start time: not a recycled pid)."""
    return bool(rec) and _start_ticks(rec["pid"]) == rec.get("start_ticks")


def _spawn(cfg: Config, argv: list[str], log: Path, env: dict[str, str]) -> tuple[subprocess.Popen, int]:
    with open(log, "ab") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env={**os.environ, **env}, start_new_session=True, cwd=cfg.root)
    return proc, _start_ticks(proc.pid) or 0


def _stop(rec: dict[str, Any] | None, grace_s: float = 10.0) -> bool:
    if not running(rec):
        return False
    os.killpg(rec["pid"], signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and running(rec):
        time.sleep(0.1)
    if running(rec):
        os.killpg(rec["pid"], signal.SIGKILL)
    try:
        os.waitpid(rec["pid"], os.WNOHANG)
    except ChildProcessError:
        pass
    return True


def _free(port: int) -> int:
    return port if local._port_free(port) else local._free_port()


# --- state ----------------------------------------------------------------------------------------------
def _file(cfg: Config, name: str) -> Path:
    return state_dir(cfg, "local") / f"{name}.json"


def _read(cfg: Config, name: str) -> dict[str, Any] | None:
    try:
        return json.loads(_file(cfg, name).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def replica_states(cfg: Config, plan: Plan) -> list[tuple[int, dict[str, Any]]]:
    """(index, state) of every recorded replica of this plan, whatever --replicas was."""
    pat = re.compile(rf"^{re.escape(plan.name)}(?:-r(\d+))?\.json$")
    out = []
    for f in state_dir(cfg, "local").iterdir():
        m = pat.match(f.name)
        if m:
            st = _read(cfg, f.name[:-5])
            if st:
                out.append((int(m.group(1) or 0), st))
    return sorted(out, key=lambda x: x[0])


# --- the parts ------------------------------------------------------------------------------------------
def _start(cfg: Config, name: str, argv: list[str], env: dict[str, str], path: str, port: int,
           want: dict[str, Any], timeout_s: float) -> dict[str, Any] | None:
    """Start one helper process (router / gateway) unless the same one already runs; wait until it answers."""
    old = _read(cfg, name)
    if running(old) and all(old.get(k) == v for k, v in want.items()) and probe(old["url"], path=path):
        ui.console().print(f"{name} already serving at {old['url']} (pid {old['pid']})")
        return old
    _stop(old)
    log = state_dir(cfg, "local") / f"{name}.log"
    proc, ticks = _spawn(cfg, argv, log, env)
    url = f"http://127.0.0.1:{port}"
    rec = {"pid": proc.pid, "start_ticks": ticks, "url": url, "log": str(log), "argv": argv, **want}
    _file(cfg, name).write_text(json.dumps(rec, indent=2))
    ui.console().print(f"started {name} (pid {proc.pid}) log: {log}")
    why = wait_healthy(url, timeout_s, lambda: None if proc.poll() is None else f"{name} exited with code "
                       f"{proc.returncode}", name, path=path)
    if why:
        ui.console().print(f"[red]rollout failed:[/] {why}\n--- last lines of {log} ---")
        for line in tail(log, 30):
            ui.console().print(line, markup=False, highlight=False)
        _stop(rec)
        _file(cfg, name).unlink(missing_ok=True)
        return None
    return rec


def start_router(cfg: Config, plan: Plan, workers: list[str]) -> dict[str, Any] | None:
    rs = cfg.cluster.stack.router
    old = _read(cfg, router_name(plan)) or {}
    reuse = running(old) and old.get("policy") == plan.router and old.get("workers") == workers
    port = old["port"] if reuse else _free(rs.port)
    mport = old["metrics_port"] if reuse else _free(rs.metrics_port)
    argv = [str(tool_path(cfg, "vllm-router")),
            *router_args(cfg, plan.router, "127.0.0.1", port, "127.0.0.1", mport, workers=workers)]
    want = {"policy": plan.router, "workers": workers, "port": port, "metrics_port": mport,
            "metrics_url": f"http://127.0.0.1:{mport}/metrics"}
    return _start(cfg, router_name(plan), argv, {}, ROUTER_READY, port, want, 120)


def master_key(cfg: Config, plan: Plan) -> str:
    """The gateway's master key: $LITELLM_MASTER_KEY (config's env name), else one generated once and kept
    in the state dir with mode 0600. Never printed."""
    env = cfg.cluster.stack.gateway.master_key.env
    if os.environ.get(env):
        return os.environ[env]
    f = state_dir(cfg, "local") / f"{gateway_name(plan)}.key"
    if not f.exists():
        fd = os.open(f, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write("sk-" + secrets.token_urlsafe(24))
    return f.read_text().strip()


def start_gateway(cfg: Config, plan: Plan, api_bases: list[str]) -> dict[str, Any] | None:
    gs = cfg.cluster.stack.gateway
    config = gateway_config(cfg, plan.served_name, api_bases)
    path = state_dir(cfg, "local") / f"{gateway_name(plan)}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    old = _read(cfg, gateway_name(plan)) or {}
    port = old["port"] if running(old) and old.get("config") == config else _free(gs.port)
    env = {**gs.env, gs.master_key.env: master_key(cfg, plan), cfg.cluster.api_key_env: cfg.cluster.api_key or "none"}
    argv = [str(tool_path(cfg, "litellm")), "--config", str(path), "--host", "127.0.0.1", "--port", str(port)]
    return _start(cfg, gateway_name(plan), argv, env, GATEWAY_READY, port, {"config": config, "port": port}, 180)


# --- the target -----------------------------------------------------------------------------------------
def delete(cfg: Config, plan: Plan) -> bool:
    for name in (gateway_name(plan), router_name(plan)):
        ui.console().print(f"stopped {name}" if _stop(_read(cfg, name)) else f"{name} was not running")
        _file(cfg, name).unlink(missing_ok=True)
    for i, _ in replica_states(cfg, plan):
        local.stop(cfg, dataclasses.replace(plan, name=replica_name(plan, i)))
        ui.console().print(f"stopped {replica_name(plan, i)}")
    return True


def rollout(cfg: Config, plan: Plan, dry_run: bool, delete_: bool) -> bool:
    if delete_:
        return delete(cfg, plan)
    replicas = replica_plans(plan)
    for rp in replicas:
        if not local.rollout(cfg, rp, dry_run=dry_run, delete=False):
            return False
    if dry_run:
        if plan.router:
            print(f"{tool_path(cfg, 'vllm-router')} --policy {plan.router} (+ worker URLs, cluster.stack.router.args)")
        if plan.gateway:
            print(f"{tool_path(cfg, 'litellm')} --config {gateway_name(plan)}.yaml")
        return True
    for i, _ in replica_states(cfg, plan):         # scale down: replicas past --replicas
        if i >= plan.replicas:
            local.stop(cfg, dataclasses.replace(plan, name=replica_name(plan, i)))
            ui.console().print(f"stopped {replica_name(plan, i)} (--replicas {plan.replicas})")
    urls = [st["url"] for _, st in replica_states(cfg, plan)]
    front = urls
    if plan.router:
        rec = start_router(cfg, plan, urls)
        if rec is None:
            return False
        front = [rec["url"]]
        ui.console().print(f"[green]router[/] {plan.router} at {rec['url']} over {len(urls)} replicas "
                           f"(metrics {rec['metrics_url']})")
    elif _stop(_read(cfg, router_name(plan))):
        _file(cfg, router_name(plan)).unlink(missing_ok=True)
    if plan.gateway:
        rec = start_gateway(cfg, plan, front)
        if rec is None:
            return False
        ui.console().print(f"[green]gateway[/] litellm at {rec['url']} (model {plan.served_name}, "
                           f"master key from ${cfg.cluster.stack.gateway.master_key.env} or "
                           f"{gateway_name(plan)}.key in the state dir)")
    elif _stop(_read(cfg, gateway_name(plan))):
        _file(cfg, gateway_name(plan)).unlink(missing_ok=True)
    return True


def url(cfg: Config, plan: Plan) -> str:
    """What verify talks to: the router when one runs, else the first replica."""
    rec = _read(cfg, router_name(plan))
    return rec["url"] if running(rec) else local.url(cfg, plan)


def entries(cfg: Config, plan: Plan) -> list[dict[str, Any]]:
    """[{role, url, pid, ready, ...}] for status --json: replicas, then router and gateway if recorded."""
    rotation: dict[str, bool] = {}
    rrec = _read(cfg, router_name(plan))
    if running(rrec):
        try:
            rotation = {w["url"]: bool(w.get("is_healthy")) for w in
                        httpx.get(rrec["url"] + "/workers", timeout=2).json().get("workers", [])}
        except (httpx.HTTPError, ValueError):
            pass
    out: list[dict[str, Any]] = []
    for i, st in replica_states(cfg, plan):
        up = local.alive(st["pid"])
        e = {"role": "replica", "name": replica_name(plan, i), "url": st["url"], "pid": st["pid"],
             "ready": up and probe(st["url"])}
        if rotation:
            e["in_router"] = rotation.get(st["url"], False)
        out.append(e)
    for role, name, path in (("router", router_name(plan), ROUTER_READY), ("gateway", gateway_name(plan), GATEWAY_READY)):
        rec = _read(cfg, name)
        if rec:
            e = {"role": role, "name": name, "url": rec["url"], "pid": rec["pid"],
                 "ready": running(rec) and probe(rec["url"], path=path)}
            if role == "router":
                e.update(policy=rec.get("policy"), metrics_url=rec.get("metrics_url"))
            out.append(e)
    return out


def stack_exists(cfg: Config, plan: Plan) -> bool:
    return bool(_read(cfg, router_name(plan)) or _read(cfg, gateway_name(plan)) or
                any(i > 0 for i, _ in replica_states(cfg, plan)))


def deployed(cfg: Config, plan: Plan) -> list[str]:
    return sorted(set(local.deployed(cfg, plan)))


def ports(cfg: Config, plan: Plan) -> tuple[int | None, dict[int, str]]:
    return local.ports(cfg, plan)


def status(cfg: Config, plan: Plan, only: bool = False) -> None:
    """One deployment's parts (replicas, router, gateway) with only=True when it has any; else a row per
    server process, and the routers / gateways that run."""
    if not (only and stack_exists(cfg, plan)):
        local.status(cfg, plan, only)
        helpers = sorted(f.stem for f in state_dir(cfg, "local").glob("*.json")
                         if f.stem.endswith(("-router", "-gateway")) and (not only or f.stem.startswith(plan.name)))
        if not helpers:
            return
        table = Table(title="local routers and gateways")
        for col in ("name", "pid", "url", "ready"):
            table.add_column(col)
        for name in helpers:
            rec = _read(cfg, name) or {}
            path = ROUTER_READY if name.endswith("-router") else GATEWAY_READY
            table.add_row(name, str(rec.get("pid", "-")), rec.get("url", "-"),
                          "yes" if running(rec) and probe(rec["url"], path=path) else "no")
        ui.table_console().print(table)
        return
    table = Table(title=f"local {plan.name}")
    for col in ("role", "name", "pid", "url", "ready", "in router"):
        table.add_column(col)
    for e in entries(cfg, plan):
        table.add_row(e["role"], e["name"], str(e["pid"]), e["url"], "yes" if e["ready"] else "no",
                      {True: "yes", False: "no"}.get(e.get("in_router"), "-"))
    ui.table_console().print(table)


def logs(cfg: Config, plan: Plan, lines: int, follow: bool = False) -> None:
    """Each replica's log, then the router's and the gateway's; with follow, all of them as they grow."""
    replicas = replica_states(cfg, plan)
    if follow:
        if not replicas:
            raise RolloutError(f"{plan.name} is not deployed locally: nothing to follow")
        sources = [(replica_name(plan, i), Path(st["log"]), lambda pid=st["pid"]: local.alive(pid)) for i, st in replicas]
        for name in (router_name(plan), gateway_name(plan)):
            rec = _read(cfg, name)
            if rec:
                sources.append((name, Path(rec["log"]), lambda rec=rec: running(rec)))
        follow_files(sources, lines)
        return
    for i, st in replicas or [(0, {"log": str(state_dir(cfg, "local") / f"{plan.name}.log")})]:
        if len(replicas) > 1 or stack_exists(cfg, plan):
            print(f"==> {replica_name(plan, i)} <==")
        for line in tail(st["log"], lines):
            print(line)
    for name in (router_name(plan), gateway_name(plan)):
        rec = _read(cfg, name)
        if rec:
            print(f"==> {name} <==")
            for line in tail(rec["log"], lines):
                print(line)
