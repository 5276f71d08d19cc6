"""The `local` target: the server as a process on this machine - what a newcomer runs first.

State (pid, port, log, argv) lives in build/rollout/local/NAME.json so that status, logs, verify and
--delete find the process later from another shell. The process runs in its own session so --delete
can stop it and any TP worker processes it spawned as one group.
"""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from rich.table import Table

from minibuild import ui
from minibuild.cluster.follow import follow_file
from minibuild.cluster.health import probe, tail, wait_healthy
from minibuild.cluster.render import server_args
from minibuild.cluster.settings import Plan, RolloutError, state_dir
from minibuild.config import Config
from minibuild.server_entry import ServerEntryError, server_env, write_tiny_model


def _state_file(cfg: Config, plan: Plan) -> Path:
    return state_dir(cfg, "local") / f"{plan.name}.json"


def read_state(cfg: Config, plan: Plan) -> dict[str, Any] | None:
    f = _state_file(cfg, plan)
    try:
        return json.loads(f.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def alive(pid: int) -> bool:
    """The pid runs and is a mini-vLLM server (not a recycled pid)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return b"mini_vllm" in cmdline and stat.split(")")[-1].split()[0] != "Z"


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _states(cfg: Config) -> list[dict[str, Any]]:
    """Every recorded server process (its state file's content plus `name`; routers / gateways are not)."""
    out = []
    for f in sorted(state_dir(cfg, "local").glob("*.json")):
        try:
            state = json.loads(f.read_text())
        except (json.JSONDecodeError, OSError):
            continue
        if "served_name" in state:
            out.append(dict(state, name=f.stem))
    return out


def deployed(cfg: Config, plan: Plan) -> list[str]:
    """Served names of the local servers that run."""
    return [s.get("served_name", s["name"]) for s in _states(cfg) if alive(s["pid"])]


def ports(cfg: Config, plan: Plan) -> tuple[int | None, dict[int, str]]:
    """(this deployment's recorded port, {port: name} held by the other running servers)."""
    own = read_state(cfg, plan)
    mine = re.compile(rf"^{re.escape(plan.name)}(-r\d+)?$")    # this deployment and its replicas
    taken = {s["port"]: s["name"] for s in _states(cfg) if not mine.match(s["name"]) and alive(s["pid"])}
    return (own or {}).get("port"), taken


def ensure_model(cfg: Config, plan: Plan) -> None:
    """Write the tiny model when the plan serves it and it is missing (the embedded default)."""
    tiny = cfg.model.tiny_dir
    if Path(plan.model_path) != tiny or (tiny / "config.json").exists():
        if not Path(plan.model_path).exists():
            raise RolloutError(f"model {plan.model_path} does not exist")
        return
    ui.console().print(f"writing the tiny model to {tiny}")
    try:
        write_tiny_model(cfg, tiny)
    except ServerEntryError as exc:
        raise RolloutError(str(exc)) from None


def stop(cfg: Config, plan: Plan, grace_s: float = 15.0) -> bool:
    """Stop the process group and forget the state; True if something was running."""
    state = read_state(cfg, plan)
    _state_file(cfg, plan).unlink(missing_ok=True)
    if not state or not alive(state["pid"]):
        return False
    pid = state["pid"]
    os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and alive(pid):
        time.sleep(0.1)
    if alive(pid):
        os.killpg(pid, signal.SIGKILL)
    try:
        os.waitpid(pid, os.WNOHANG)   # reap if it was our own child
    except ChildProcessError:
        pass
    return True


def rollout(cfg: Config, plan: Plan, dry_run: bool, delete: bool) -> bool:
    if delete:
        ui.console().print(f"stopped {plan.name}" if stop(cfg, plan) else f"{plan.name} was not running")
        return True
    old = read_state(cfg, plan)
    if (not dry_run and old and alive(old["pid"]) and old.get("model") == plan.model_path
            and old.get("tp") == plan.tp and probe(old["url"])):
        ui.console().print(f"{plan.name} already serving at {old['url']} (pid {old['pid']})")
        return True
    if old and not dry_run:
        stop(cfg, plan)
    port = plan.port
    while not _port_free(port):   # something outside our records holds it
        if plan.port_fixed:
            raise RolloutError(f"port {port} (cluster.models.{plan.served_name}.port) is in use on this machine")
        port += 1
    argv = [sys.executable, "-m", "mini_vllm.cli", *server_args(plan, host="127.0.0.1")]
    argv[argv.index("--port") + 1] = str(port)
    if dry_run:
        print(" ".join(argv))
        return True
    ensure_model(cfg, plan)
    log = state_dir(cfg, "local") / f"{plan.name}.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=server_env(cfg.root), start_new_session=True, cwd=cfg.root)
    url = f"http://127.0.0.1:{port}"
    state = {"pid": proc.pid, "port": port, "url": url, "log": str(log), "argv": argv, "tp": plan.tp,
             "model": plan.model_path, "served_name": plan.served_name, "started": time.time()}
    _state_file(cfg, plan).write_text(json.dumps(state, indent=2))
    ui.console().print(f"started {plan.name} (pid {proc.pid}, tp={plan.tp}) log: {log}")
    why = wait_healthy(url, float(plan.settings.get("health_timeout_s", 300)),
                       lambda: None if proc.poll() is None else f"the server exited with code {proc.returncode}",
                       plan.name)
    if why:
        ui.console().print(f"[red]rollout failed:[/] {why}\n--- last lines of {log} ---")
        for line in tail(log, 30):
            ui.console().print(line, markup=False, highlight=False)
        stop(cfg, plan)
        return False
    ui.console().print(f"[green]serving[/] {plan.served_name} at {url}")
    return True


def url(cfg: Config, plan: Plan) -> str:
    state = read_state(cfg, plan)
    if not state or not alive(state["pid"]):
        raise RolloutError(f"{plan.name} is not running locally: `invoke rollout --target local "
                           f"--served-model-name {plan.served_name}` first")
    return state["url"]


def status(cfg: Config, plan: Plan, only: bool = False) -> None:
    """A row per local deployment (only `plan`'s with only=True)."""
    table = Table(title="local deployments")
    for col in ("name", "model", "pid", "state", "url", "healthy", "tp", "log"):
        table.add_column(col)
    states = [s for s in _states(cfg) if not only or s["name"] == plan.name]
    for st in states:
        up = alive(st["pid"])
        table.add_row(st["name"], st.get("served_name", "-"), str(st["pid"]), "running" if up else "exited",
                      st["url"], "yes" if up and probe(st["url"]) else "no", str(st.get("tp", "-")), st["log"])
    if not states:
        table.add_row(plan.name if only else "-", "-", "-", "not deployed", "-", "-", "-", "-")
    ui.table_console().print(table)


def logs(cfg: Config, plan: Plan, lines: int, follow: bool = False) -> None:
    """The server's log; with follow, new lines as they are written until the process exits."""
    state = read_state(cfg, plan)
    log = Path(state["log"]) if state else state_dir(cfg, "local") / f"{plan.name}.log"
    if not follow:
        for line in tail(log, lines):
            print(line)
        return
    if not state:
        raise RolloutError(f"{plan.name} is not deployed locally: nothing to follow")
    follow_file(log, lines, lambda: alive(state["pid"]))
