"""Compiler processes that die with the build, however the build ends.

Why: nvcc is a driver - it runs gcc, cicc and ptxas as its own children - and an FA3 unit's cicc holds
~7 GB. `kill -9` of `invoke kernels` used to leave them running (an orphaned cicc held 6.6 GB), because
killing a parent kills nothing below it. So every compiler command runs as:

    sh -c 'trap "kill -KILL 0" TERM HUP INT; "$@" & wait $!' sh nvcc ...

in a new session (its own process group, out of reach of the terminal's ^C), with the kernel asked
(prctl PR_SET_PDEATHSIG) to send that shell SIGTERM when the build dies - by SIGKILL too, which no
handler in the build could see. The shell's trap then SIGKILLs its whole process group: nvcc, gcc, cicc,
ptxas. The build also kills the group itself on every exit path it does see (an exception, ^C, a failed
sibling compile), and `kill_all()` ends every group still running (called by the compile pool on the
way out and at interpreter exit).
"""
from __future__ import annotations

import atexit
import ctypes
import ctypes.util
import os
import signal
import subprocess
import threading
from pathlib import Path
from typing import Sequence

PR_SET_PDEATHSIG = 1


class BuildStopped(RuntimeError):
    """A compiler was asked to start after the build began tearing down."""


_SUPERVISE = 'trap "kill -KILL 0" TERM HUP INT; "$@" & wait $!'
_live: set[int] = set()
_lock = threading.Lock()
_stopping = False          # set by stop(): no new compiler starts until allow()
_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_prctl = _libc.prctl     # resolved here, in the parent: the forked child only calls it


def _die_with_parent(parent: int) -> None:
    """Runs in the child between fork and exec: SIGTERM when the build's thread dies; and if the build
    already died before this line ran (then no signal would come), stop now."""
    _prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent:
        os._exit(137)


def kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def kill_all() -> None:
    """SIGKILL every compiler process group still running (the build is ending)."""
    with _lock:
        groups = list(_live)
    for pgid in groups:
        kill_group(pgid)


def stop() -> None:
    """The build is being torn down: kill what runs, and whatever a racing thread starts next."""
    global _stopping
    with _lock:
        _stopping = True
    kill_all()


def allow() -> None:
    global _stopping
    with _lock:
        _stopping = False


atexit.register(kill_all)


def run(cmd: Sequence[str], cwd: str | os.PathLike[str] | Path) -> subprocess.CompletedProcess[str]:
    """subprocess.run(cmd, cwd=cwd, capture_output=True, text=True), with the children tied to the build."""
    parent = os.getpid()
    if _stopping:
        raise BuildStopped("the build is stopping; no new compiler is started")
    proc = subprocess.Popen(["sh", "-c", _SUPERVISE, "sh", *cmd], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True, start_new_session=True,
                            preexec_fn=lambda: _die_with_parent(parent))
    with _lock:
        _live.add(proc.pid)
        if _stopping:
            kill_group(proc.pid)
    try:
        out, err = proc.communicate()
    except BaseException:
        kill_group(proc.pid)
        proc.wait()
        raise
    finally:
        with _lock:
            _live.discard(proc.pid)
    if proc.returncode < 0 or proc.returncode >= 128:   # killed: take nothing else of the group along
        kill_group(proc.pid)
    return subprocess.CompletedProcess(list(cmd), proc.returncode, out, err)
