"""`invoke batch`: offline inference over an OpenAI Batch file, here (a process) or as a Slurm job.

Both run `mini-vllm batch` (python/mini_vllm/batch; never imported here: a process or a job, as the
server is), which sends each line through the server's own request code on one engine and appends
results resumably. This side shows its `[batch] D/T done` lines as a progress bar and says where
the results are, or why the run stopped. A rerun of the same command resumes: lines whose
custom_id is already in the output are skipped. On Slurm the job is like the guide's `batch_*.sh`:
same resources, runtime (the image by digest, or the checkout) and output files as a server job.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from rich.markup import escape

from minibuild import ui
from minibuild.cluster.health import tail
from minibuild.cluster.settings import Plan, RolloutError, make_plan, state_dir
from minibuild.config import Config, ConfigError

PROGRESS = re.compile(r"\[batch\] (\d+)/(\d+) done, (\d+) failed, (\d+) from an earlier run")


def batch_args(plan: Plan, input_path: Path, output_path: Path) -> list[str]:
    """The `mini-vllm batch` arguments every target runs."""
    return ["batch", plan.model_path, "--input", str(input_path), "--output", str(output_path),
            "--tensor-parallel-size", str(plan.tp), "--served-model-name", plan.served_name]


class Bar:
    """The progress bar fed by `[batch]` lines (plain lines when stderr is not a terminal)."""

    def __init__(self) -> None:
        self.ctx: Any = None
        self.bar: Any = None
        self.done = 0
        self.last = ""

    def feed(self, line: str) -> None:
        m = PROGRESS.search(line)
        if not m:
            return
        done, total = int(m.group(1)), int(m.group(2))
        self.last = line.strip().removeprefix("[batch] ")
        if self.bar is None:
            self.ctx = ui.progress("batch", total)
            self.bar = self.ctx.__enter__()
        self.bar.advance(done - self.done)
        self.bar.describe(f"batch ({m.group(3)} failed, {m.group(4)} from an earlier run)")
        self.done = done
        if not ui.console().is_terminal:
            ui.console().print(self.last, markup=False, highlight=False)

    def close(self) -> None:
        if self.ctx is not None:
            self.ctx.__exit__(None, None, None)


def _paths(input_file: str, output_file: str) -> tuple[Path, Path]:
    src, dst = Path(input_file).resolve(), Path(output_file).resolve()
    if not src.is_file():
        raise RolloutError(f"--input {input_file}: no such file (an OpenAI Batch JSONL file: one "
                           '{"custom_id", "method": "POST", "url", "body"} a line)')
    if src == dst:
        raise RolloutError("--output must differ from --input (results are appended to it)")
    return src, dst


def run_local(cfg: Config, plan: Plan, src: Path, dst: Path) -> bool:
    """`mini-vllm batch` as a child process; its progress drawn here, its log kept in the state dir."""
    from minibuild.cluster.local import ensure_model
    from minibuild.server_entry import server_env

    ensure_model(cfg, plan)
    log = state_dir(cfg, "local") / f"{plan.name}-batch.log"
    argv = [sys.executable, "-m", "mini_vllm.cli", *batch_args(plan, src, dst)]
    env = server_env(cfg.root)
    ui.console().print(f"batch {src} -> {dst} with {plan.served_name} (log: {log})")
    bar = Bar()
    with open(log, "ab") as logf:
        proc = subprocess.Popen(argv, stdout=logf, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, env=env,
                                cwd=cfg.root)
        try:
            for raw in proc.stderr:
                logf.write(raw)
                logf.flush()
                bar.feed(raw.decode(errors="replace"))
            code = proc.wait()
        except KeyboardInterrupt:
            proc.terminate()
            proc.wait()
            ui.console().print("stopped; rerun the same command to resume (lines already written are kept)")
            return False
        finally:
            bar.close()
    return _report(code == 0, f"exit {code}", bar.last, dst, log)


def _report(ok: bool, how: str, last: str, dst: Path, log: Path) -> bool:
    if ok:
        ui.console().print(f"[green]batch done[/]: {escape(last or 'nothing to do')}; results in {escape(str(dst))}")
        return True
    ui.console().print(f"[red]batch failed[/] ({how}); rerun the same command to resume. Last lines of {log}:")
    for line in tail(log, 20):
        ui.console().print(line, markup=False, highlight=False)
    return False


def run_slurm(cfg: Config, plan: Plan, src: Path, dst: Path, dry_run: bool) -> bool:
    """An sbatch job (cluster/slurm/batch.sbatch), followed to its end with the same progress bar."""
    import shlex

    from minibuild.cluster.slurm import job_script
    from minibuild.cluster.slurm_jobs import ACTIVE, job_info, queued, submit

    d = state_dir(cfg, "slurm")
    name = f"{plan.name}-batch"
    record = d / f"{name}.json"
    output = d / f"{name}-%j.out"
    mounts = [(plan.model_path, True), (str(src.parent), True), (str(dst.parent), False)]
    script, runtime = job_script(cfg, plan, "batch", batch_args(plan, src, dst), output, mounts,
                                 {"input": shlex.quote(str(src)), "results": shlex.quote(str(dst))})
    ui.console().print(f"runtime: [bold]{runtime.name}[/] ({runtime.reason})")
    if dry_run:
        print(script)
        return True
    running = [j for j in queued("batch") if j.name == name]
    if running:
        job = running[0].job_id
        ui.console().print(f"batch job {job} ({name}) is already {running[0].state}; following it")
    else:
        path = d / f"{name}.sbatch"
        path.write_text(script)
        job = submit(str(path))
        ui.console().print(f"submitted batch job {job} ({name}, --gres=gpu:{plan.tp}) script: {path}")
    record.write_text(json.dumps({"kind": "batch", "job_id": job, "output": str(output), "input": str(src),
                                  "results": str(dst), "served_name": plan.served_name}, indent=2))
    bar, out, pos, info = Bar(), Path(str(output).replace("%j", job)), 0, None
    try:
        while True:
            info = job_info(job) or {}
            if out.exists():
                with open(out, "rb") as f:
                    f.seek(pos)
                    chunk = f.read()
                cut = chunk.rfind(b"\n") + 1
                pos += cut
                for line in chunk[:cut].decode(errors="replace").splitlines():
                    bar.feed(line)
            if info.get("JobState", "GONE") not in ACTIVE:
                break
            time.sleep(0.5)
    except KeyboardInterrupt:
        ui.console().print(f"stopped following; job {job} goes on (`scancel {job}` to stop it, rerun to follow)")
        return False
    finally:
        bar.close()
    state = info.get("JobState", "GONE")
    return _report(state == "COMPLETED", f"job {job} {state}, exit {info.get('ExitCode', '?')}", bar.last, dst, out)


def batch(cfg: Config, input_file: str, output_file: str, target: str = "local", model: str | None = None,
          served_name: str | None = None, tp: int = 1, image: str | None = None, dry_run: bool = False) -> bool:
    """Run an OpenAI Batch file through a model; False (said why) when it did not finish."""
    try:
        if target not in ("local", "slurm"):
            raise RolloutError(f"invoke batch runs on local or slurm, not {target!r}")
        src, dst = _paths(input_file, output_file)
        plan = make_plan(cfg, target, tp, image=image, model=model, served_name=served_name)
        if target == "slurm":
            return run_slurm(cfg, plan, src, dst, dry_run)
        if dry_run:
            print(" ".join([sys.executable, "-m", "mini_vllm.cli", *batch_args(plan, src, dst)]))
            return True
        return run_local(cfg, plan, src, dst)
    except (RolloutError, ConfigError) as exc:
        ui.console().print(f"[red]batch {target}:[/] {exc}")
        return False
