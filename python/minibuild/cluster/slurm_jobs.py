"""Slurm's commands as functions: sbatch, squeue, scontrol, scancel - what the serve and batch jobs share.

Each job rollout submits carries a comment `mini-vllm:KIND:SERVED_NAME` (KIND: serve | batch), so
squeue alone finds every deployment - also ones submitted from another checkout - and tells a
server from a batch job of the same model.
"""
from __future__ import annotations

import re
import subprocess
import time
from dataclasses import dataclass

from minibuild.cluster.settings import RolloutError

ACTIVE = {"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "RESIZING", "REQUEUED", "SUSPENDED"}
_KV = re.compile(r"(\w+)=(\S*)")
COMMENT = "mini-vllm"


def run(argv: list[str]) -> str:
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
        out = run(["scontrol", "show", "job", "-o", job_id])
    except RolloutError as exc:
        if "Invalid job id" in str(exc):
            return None
        raise
    return parse_record(out.strip().splitlines()[0]) if out.strip() else None


def job_state(job_id: str) -> str:
    return (job_info(job_id) or {}).get("JobState", "GONE")


def node_address(node: str) -> str:
    rec = parse_record(run(["scontrol", "show", "node", "-o", node]).strip())
    return rec.get("NodeAddr") or node


def submit(script: str) -> str:
    """sbatch --parsable SCRIPT; the job id."""
    return run(["sbatch", "--parsable", script]).strip().split(";")[0]


def comment(kind: str, served: str) -> str:
    return f"{COMMENT}:{kind}:{served}"


@dataclass(frozen=True)
class QueuedJob:
    job_id: str
    name: str
    state: str
    reason: str
    node: str
    kind: str       # serve | batch
    served: str


def queued(kind: str | None = None) -> list[QueuedJob]:
    """Our jobs in the queue (by their comment), optionally only one kind."""
    out = run(["squeue", "-h", "-o", "%i|%j|%T|%r|%N|%k"])
    jobs = []
    for line in out.splitlines():
        parts = line.split("|", 5)
        if len(parts) < 6:
            continue
        words = parts[5].split(":", 2)
        if len(words) == 3 and words[0] == COMMENT and (kind is None or words[1] == kind):
            jobs.append(QueuedJob(*parts[:5], kind=words[1], served=words[2]))
    return jobs


def cancel(job_ids: set[str], timeout_s: float = 60) -> list[str]:
    """scancel the jobs and wait until they are gone (a server's port free), within Slurm's KillWait."""
    for job in sorted(job_ids):
        subprocess.run(["scancel", job], capture_output=True, timeout=30)
    deadline = time.monotonic() + timeout_s
    while job_ids and time.monotonic() < deadline:
        if not any(job_state(j) in ACTIVE for j in job_ids):
            break
        time.sleep(0.3)
    return sorted(job_ids)
