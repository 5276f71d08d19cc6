"""A real one-machine Slurm cluster for tests: munged + slurmctld + slurmd in a temporary directory.

Slurm 22.05 (Debian slurm-wlm) with its own munge key and socket, state dirs under tmp, and 8 "GPUs"
that are char devices made with mknod (gres `File=`, AutoDetect=off) - Slurm only counts and assigns
them (CUDA_VISIBLE_DEVICES). The node declares 64 CPUs (8 per GPU, as the Slurm guide gives each GPU)
with `SlurmdParameters=config_overrides` like an 8-GPU node (and 2 TB of memory, as a p5 has), so a TP=8 job beside a TP=2 job waits with
reason Resources, as on a real cluster.
cgroups do not work in these containers: proctrack/linuxproc, task/none.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

from cluster_helpers import free_port

BINARIES = ("munged", "mungekey", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "scancel", "mknod")


def missing_binaries() -> list[str]:
    return [b for b in BINARIES if shutil.which(b) is None and not Path(f"/usr/sbin/{b}").exists()]


def _wait(what: str, cond, timeout: float, logs: list[Path]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.2)
    text = "\n".join(f"--- {p} ---\n{p.read_text(errors='replace')[-3000:]}" for p in logs if p.exists())
    raise RuntimeError(f"{what} did not come up within {timeout} s\n{text}")


class SlurmCluster:
    def __init__(self, root: Path, gpus: int = 8, cpus: int = 64):
        self.root, self.gpus, self.cpus = root, gpus, cpus
        self.node = socket.gethostname().split(".")[0]
        self.procs: list[subprocess.Popen] = []
        self.conf = root / "etc/slurm.conf"
        self.env = dict(os.environ, SLURM_CONF=str(self.conf))

    def _path(self, rel: str) -> Path:
        p = self.root / rel
        p.mkdir(parents=True, exist_ok=True)
        return p

    def start(self) -> "SlurmCluster":
        etc, run, log, dev = (self._path(d) for d in ("etc", "run", "log", "dev"))
        os.chmod(self.root, 0o755)
        key = etc / "munge.key"
        subprocess.run(["mungekey", "--create", f"--keyfile={key}"], check=True, capture_output=True)
        os.chmod(key, 0o600)
        self.munge_socket = run / "munge.socket"
        self.procs.append(subprocess.Popen(
            ["munged", "--foreground", "--force", f"--socket={self.munge_socket}", f"--key-file={key}",
             f"--pid-file={run / 'munged.pid'}", f"--seed-file={run / 'munged.seed'}",
             f"--log-file={log / 'munged.log'}"], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT))
        _wait("munged", self.munge_socket.exists, 10, [log / "munged.log"])
        for i in range(self.gpus):
            node = dev / f"nvidia{i}"
            if not node.exists():
                subprocess.run(["mknod", str(node), "c", "1", "3"], check=True)
        (etc / "gres.conf").write_text(
            f"AutoDetect=off\nNodeName={self.node} Name=gpu File={dev}/nvidia[0-{self.gpus - 1}]\n")
        self.conf.write_text(f"""\
ClusterName=minivllm-test
SlurmctldHost={self.node}(127.0.0.1)
SlurmctldPort={free_port()}
SlurmdPort={free_port()}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={self.munge_socket}
SlurmUser=root
SlurmdUser=root
StateSaveLocation={self._path('state')}
SlurmdSpoolDir={self._path('spool')}
SlurmctldPidFile={run / 'slurmctld.pid'}
SlurmdPidFile={run / 'slurmd.pid'}
SlurmctldLogFile={log / 'slurmctld.log'}
SlurmdLogFile={log / 'slurmd.log'}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2
MpiDefault=none
ReturnToService=2
SlurmdParameters=config_overrides
GresTypes=gpu
MinJobAge=600
KillWait=5
NodeName={self.node} NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory=2000000 Gres=gpu:{self.gpus} State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
""")
        self.procs.append(subprocess.Popen(["/usr/sbin/slurmctld", "-D", "-i", "-f", str(self.conf)],
                                           env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT))
        _wait("slurmctld", lambda: self.scontrol("ping").returncode == 0 and "UP" in self.scontrol("ping").stdout,
              20, [log / "slurmctld.log"])
        self.procs.append(subprocess.Popen(["/usr/sbin/slurmd", "-D", "-f", str(self.conf)],
                                           env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT))
        _wait("slurmd (node idle)", lambda: "State=IDLE" in self.scontrol("show", "node", self.node).stdout,
              30, [log / "slurmd.log", log / "slurmctld.log"])
        return self

    def scontrol(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["scontrol", *args], env=self.env, capture_output=True, text=True)

    def stop(self) -> None:
        subprocess.run(["scancel", "--full", "--user=root"], env=self.env, capture_output=True)
        # Let slurmd's job steps (slurmstepd) finish before slurmd goes, or they outlive the test.
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            q = subprocess.run(["squeue", "-h"], env=self.env, capture_output=True, text=True)
            if q.returncode == 0 and not q.stdout.strip():
                break
            time.sleep(0.3)
        for p in reversed(self.procs):
            p.terminate()
        for p in reversed(self.procs):
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
