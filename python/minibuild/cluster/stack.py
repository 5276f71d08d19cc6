"""Replicas behind the vllm-project router, and a LiteLLM gateway: what every target shares.

We do not write a router: `vllm-router` (PyPI, Rust) already does cache-aware / consistent-hash /
power-of-two / round-robin / random routing with health checks, retries, circuit breakers and
Kubernetes discovery, and the LiteLLM proxy speaks to vLLM-style servers as `hosted_vllm/<model>`.
This module turns build_config.yaml's `cluster.stack` into their command lines and configs (pure
functions, so render tests and every target agree); local_stack.py, slurm_stack.py and kube_stack.py
run them.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from minibuild.cluster.settings import Plan, RolloutError
from minibuild.config import Config

GATEWAY_KINDS = ("litellm",)
TOOLS = {"vllm-router": "vllm-router", "litellm": "litellm"}   # venv name -> executable


def with_stack(cfg: Config, plan: Plan, replicas: int = 1, router: str | None = None,
               gateway: str | None = None) -> Plan:
    """The plan with replicas / router policy / gateway, each checked against the config."""
    try:
        replicas = int(replicas)
    except (TypeError, ValueError):
        raise RolloutError(f"--replicas {replicas!r} is not a number") from None
    if replicas < 1:
        raise RolloutError(f"--replicas {replicas}: at least one replica is needed")
    policies = list(cfg.cluster.stack.router.policies)
    if router and router not in policies:
        raise RolloutError(f"unknown router policy {router!r}: choose one of {', '.join(policies)}")
    if gateway and gateway not in GATEWAY_KINDS:
        raise RolloutError(f"unknown gateway {gateway!r}: choose one of {', '.join(GATEWAY_KINDS)}")
    return dataclasses.replace(plan, replicas=replicas, router=router or None, gateway=gateway or None)


def replica_name(plan: Plan, index: int) -> str:
    """Replica 0 keeps the plan's name (a one-replica rollout is unchanged); the others get -rI."""
    return plan.name if index == 0 else f"{plan.name}-r{index}"


def replica_plans(plan: Plan) -> list[Plan]:
    """One plan per replica for targets that run replicas as separate processes / jobs (local, Slurm)."""
    return [dataclasses.replace(plan, name=replica_name(plan, i), port=plan.port + i, replicas=1,
                                router=None, gateway=None) for i in range(plan.replicas)]


def router_name(plan: Plan) -> str:
    return f"{plan.name}-router"


def gateway_name(plan: Plan) -> str:
    return f"{plan.name}-gateway"


def _flags(args: dict[str, Any]) -> list[str]:
    out: list[str] = []
    for k, v in args.items():
        if v is True:
            out.append(f"--{k}")
        elif v not in (None, False):
            out += [f"--{k}", str(v)]
    return out


def router_args(cfg: Config, policy: str, host: str, port: int, metrics_host: str, metrics_port: int,
                workers: list[str] | None = None, discovery: dict[str, Any] | None = None) -> list[str]:
    """vllm-router's flags: static worker URLs (local, Slurm) or Kubernetes discovery by label
    (`discovery` = {selector: {k: v}, port, namespace}); only Ready+Running pods are added."""
    argv = ["--host", host, "--port", str(port), "--policy", policy,
            "--prometheus-host", metrics_host, "--prometheus-port", str(metrics_port)]
    if discovery:
        argv += ["--service-discovery", "--selector", *[f"{k}={v}" for k, v in sorted(discovery["selector"].items())],
                 "--service-discovery-port", str(discovery["port"]),
                 "--service-discovery-namespace", str(discovery["namespace"])]
    elif workers:
        argv += ["--worker-urls", *workers]
    else:
        raise RolloutError("the router needs worker URLs or a discovery selector")
    return argv + _flags(dict(cfg.cluster.stack.router.args))


def gateway_config(cfg: Config, served_name: str, api_bases: list[str]) -> dict[str, Any]:
    """The LiteLLM proxy config: `hosted_vllm/<served name>` at each of `api_bases` (the router or the
    Service - one entry; or each replica, which LiteLLM then balances); the master key and the server's
    API key are read from the environment at start, never written here."""
    key_env = cfg.cluster.api_key_env
    return {
        "model_list": [{"model_name": served_name, "litellm_params": {
            "model": f"hosted_vllm/{served_name}", "api_base": f"{base.rstrip('/')}/v1",
            "api_key": f"os.environ/{key_env}"}} for base in api_bases],
        "litellm_settings": {"drop_params": True},
        "general_settings": {"master_key": f"os.environ/{cfg.cluster.stack.gateway.master_key.env}"},
    }


def tool_path(cfg: Config, name: str) -> Path:
    """The executable of a tool in its own venv (.venv-tools/NAME, made by ./dev); $MINI_VLLM_TOOLS_DIR
    overrides the parent directory (config)."""
    exe = cfg.cluster.stack.tools_dir / name / "bin" / TOOLS[name]
    if not exe.exists():
        raise RolloutError(f"{exe} is missing: run ./dev (it installs {name} into its own venv from the "
                           "hash-pinned lock in images/)")
    return exe
