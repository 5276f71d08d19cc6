"""Which way a Slurm job runs mini-vllm: the built image by digest in the cluster's container runtime,
or the checkout's environment as the fallback - and the command line for it.

Kubernetes runs the server image by digest; a Slurm job should run the same bits when the cluster
can. pyxis (enroot under srun) is visible from the login node: its SPANK plugin adds
`--container-image` to `srun --help`. apptainer / podman on the compute nodes are not, so they are
used only when cluster.targets.slurm.runtime names them. Without a pushed image, or any runtime,
the job runs the checkout's interpreter (`venv`) and the reason is said (`--dry-run` prints it).
The command lines are data: cluster/slurm/runtimes.yaml.
"""
from __future__ import annotations

import shlex
import string
import subprocess
from dataclasses import dataclass

import yaml

from minibuild.config import Config
from minibuild.cluster.settings import Plan, RolloutError

RUNTIMES = ("auto", "pyxis", "apptainer", "podman", "venv")


@dataclass(frozen=True)
class Runtime:
    name: str            # pyxis | apptainer | podman | venv
    reason: str          # why this one (shown by --dry-run and in the job's first lines)
    image: str | None    # REPO@sha256:... for a container runtime


def srun_help() -> str:
    """`srun --help` ('' when srun is missing or fails)."""
    try:
        return subprocess.run(["srun", "--help"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.TimeoutExpired):
        return ""


def choose(configured: str, image: str | None, no_image_reason: str, help_text: str) -> Runtime:
    """The runtime for a job: pure, so the choice is testable without pyxis installed."""
    if configured not in RUNTIMES:
        raise RolloutError(f"cluster.targets.slurm.runtime {configured!r}: choose one of {', '.join(RUNTIMES)}")
    if configured == "venv":
        return Runtime("venv", "cluster.targets.slurm.runtime is venv", None)
    if image is None:
        if configured == "auto":
            return Runtime("venv", f"fallback: {no_image_reason}", None)
        raise RolloutError(f"cluster.targets.slurm.runtime is {configured}, which needs the server image by "
                           f"digest: {no_image_reason}")
    if configured != "auto":
        return Runtime(configured, f"cluster.targets.slurm.runtime is {configured}", image)
    if "--container-image" in help_text:
        return Runtime("pyxis", "srun has --container-image (pyxis + enroot)", image)
    return Runtime("venv", "fallback: srun has no --container-image (no pyxis); set cluster.targets.slurm.runtime "
                   "to apptainer or podman if the compute nodes have one", None)


def pyxis_uri(image: str) -> str:
    """REGISTRY/REPO@sha256:X -> enroot's REGISTRY#REPO@sha256:X (the first part is a registry when it has
    a dot or a port, or is localhost; else the image is on Docker Hub and stays as it is)."""
    first, _, rest = image.partition("/")
    if rest and ("." in first or ":" in first or first == "localhost"):
        return f"{first}#{rest}"
    return image


def _templates(cfg: Config) -> dict[str, str]:
    return yaml.safe_load((cfg.root / "cluster/slurm/runtimes.yaml").read_text())


def launch(cfg: Config, runtime: Runtime, args: list[str], python: str,
           mounts: list[tuple[str, bool]], env_names: list[str]) -> str:
    """The command line that runs `mini-vllm ARGS` (mounts: (directory, read_only) for containers)."""
    image = runtime.image or ""
    writable = {d for d, ro in mounts if not ro}     # a directory mounted twice is writable if either is
    mounts = sorted({(d, d not in writable) for d, _ in mounts})
    values = {
        "image": shlex.quote(image), "pyxis_image": shlex.quote(pyxis_uri(image)) if image else "",
        "args": " ".join(shlex.quote(a) for a in args), "python": shlex.quote(python),
        "pyxis_mounts": shlex.quote(",".join(f"{d}:{d}" + (":ro" if ro else "") for d, ro in mounts)),
        "apptainer_binds": " ".join(f"--bind {shlex.quote(d + ':' + d + (':ro' if ro else ''))}" for d, ro in mounts),
        "podman_volumes": " ".join(f"-v {shlex.quote(d + ':' + d + (':ro' if ro else ''))}" for d, ro in mounts),
        "podman_env": " ".join(f"-e {n}" for n in sorted(set(env_names))),
    }
    template = _templates(cfg).get(runtime.name)
    if template is None:
        raise RolloutError(f"cluster/slurm/runtimes.yaml has no command for runtime {runtime.name!r}")
    return string.Template(template).substitute(values).strip()


def for_plan(cfg: Config, plan: Plan) -> Runtime:
    """The runtime a job of this plan uses (asks srun only when the choice depends on it)."""
    configured = str(plan.settings.get("runtime") or "auto")
    help_text = srun_help() if configured == "auto" and plan.image else ""
    return choose(configured, plan.image, plan.image_source, help_text)
