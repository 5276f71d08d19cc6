"""`./dev invoke up`: the main job on the embedded default, end to end on one machine.

tiny model -> our kernels (when nvcc is here; FA3 is left to `invoke kernels`: ~2 min and 7.6 GB per
unit on a CPU machine) -> images -> local rollout -> verify -> a summary. Every step imports its
library lazily, so a missing piece fails as that step, named, instead of breaking the whole command;
rollout and verify do not depend on kernels or images (the local target runs the repo's code).
"""
from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path

from rich.console import Console
from rich.table import Table

from minibuild.config import Config
from minibuild.ui import table_console

console = Console(soft_wrap=True)


def _tiny_model(cfg: Config, root: Path) -> str:
    from minibuild.server_entry import write_tiny_model

    out, written = write_tiny_model(cfg, force=False)
    return f"{'written' if written else 'present'}: {out}"


def _kernels(cfg: Config, root: Path) -> str:
    if shutil.which(cfg.toolchain.nvcc) is None:
        return "SKIP: no nvcc on PATH (the CPU path needs no kernels)"
    from minibuild.kernels import build_kernels

    if not build_kernels(cfg, explain=False, dry_run=False, offline=False, jobs=None, only=["ours"]):
        raise RuntimeError("invoke kernels --only ours failed (see above)")
    return ("ours built; FA3 not built here (`invoke kernels --only fa3`: fetches the pinned FA3/CUTLASS sources "
            "- GitHub or --mirror-dir, docs/build.md - then ~2 min and 7.6 GB per unit)")


def _images(cfg: Config, root: Path) -> str:
    from minibuild.image import build_images

    results = build_images(cfg, stage="all", push=None, explain=False, dry_run=False)
    if not results:
        raise RuntimeError("invoke image built nothing")
    return ", ".join(f"{k} {v['digest'][:19]}" for k, v in results.items() if not k.startswith("_"))


def _rollout(cfg: Config, root: Path) -> str:
    from minibuild.cluster import rollout

    if not rollout(cfg, target="local", tp=1):
        raise RuntimeError("local rollout failed (see above)")
    from minibuild.cluster import plan_for
    from minibuild.cluster.local import url

    return f"serving at {url(cfg, plan_for(cfg, 'local'))}"


def _verify(cfg: Config, root: Path) -> str:
    from minibuild.verify import verify

    if not verify(cfg, target="local", api_key=cfg.cluster.api_key):
        raise RuntimeError("verify failed (see the table above)")
    return "all checks passed"


STEPS: list[tuple[str, Callable[[Config, Path], str], tuple[str, ...]]] = [
    ("tiny model", _tiny_model, ()),
    ("kernels", _kernels, ()),
    ("images", _images, ()),
    ("rollout local", _rollout, ("tiny model",)),
    ("verify", _verify, ("rollout local",)),
]


def run_steps(cfg: Config, root: Path) -> list[tuple[str, str, float, str]]:
    """(step, ok | skipped | FAILED, seconds, detail) for every step; a step whose prerequisite failed is skipped."""
    rows: list[tuple[str, str, float, str]] = []
    failed: set[str] = set()
    for name, fn, needs in STEPS:
        console.rule(name)
        start = time.monotonic()
        blocked = [n for n in needs if n in failed]
        if blocked:
            rows.append((name, "skipped", 0.0, f"needs {', '.join(blocked)}"))
            failed.add(name)
            continue
        try:
            note, result = fn(cfg, Path(root)), "ok"
        except ImportError as exc:
            note, result = f"not available yet: {exc}", "FAILED"
        except Exception as exc:   # each step's failure is reported as that step's, the rest still run
            note, result = f"{type(exc).__name__}: {exc}", "FAILED"
        if result == "ok" and note.startswith("SKIP: "):
            result, note = "skipped", note[6:]
        if result == "FAILED":
            failed.add(name)
        rows.append((name, result, time.monotonic() - start, note))
    return rows


def up(cfg: Config, root: Path) -> bool:
    """Run every step, print a summary table; True if none failed."""
    rows = run_steps(cfg, root)
    table = Table(title="invoke up")
    for col, kw in (("step", {}), ("result", {}), ("time", {"justify": "right"}), ("detail", {"overflow": "fold"})):
        table.add_column(col, **kw)
    for name, result, secs, note in rows:
        colour = {"ok": "green", "FAILED": "red"}.get(result, "yellow")
        table.add_row(name, f"[{colour}]{result}[/]", f"{secs:.1f} s", note)
    table_console().print(table)    # piped: nothing cut; on a terminal, long paths fold
    ok = all(r[1] != "FAILED" and not r[3].startswith("needs ") for r in rows)
    if ok:
        console.print("the server keeps running: `invoke status`, `invoke logs`, "
                      "`invoke rollout --target local --delete` to stop it")
    return ok
