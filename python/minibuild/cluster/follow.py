"""`invoke logs -f` for targets whose logs are files (local processes, Slurm job output): `tail -f`.

Prints the last N lines, then each new line as the writer flushes it, until what writes the file
has stopped (the process exited, the job left the queue) and the rest is drained - or Ctrl-C. A
file that does not exist yet (a Slurm job still PENDING) is waited for. Only whole lines are
printed, so a line being written is never cut in two.
"""
from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TextIO



def follow_file(path: Path | Callable[[], Path | None], lines: int, running: Callable[[], bool],
                poll_s: float = 0.2, out: TextIO | None = None) -> None:
    """Follow `path` (or the path a callable returns once known) while `running()` is True."""
    out = out or sys.stdout
    where = path if callable(path) else (lambda: path)
    file: Path | None = None
    while file is None or not file.exists():   # not created yet: the job / process has not started
        file = where()
        if file is not None and file.exists():
            break
        if not running():
            return
        time.sleep(poll_s)
    with open(file, "rb") as f:
        end = f.seek(0, 2)
        f.seek(max(0, end - 256 * 1024))
        *whole, pending = f.read(end - f.tell()).split(b"\n")
        for line in whole[-lines:] if lines > 0 else []:
            out.write(line.decode(errors="replace") + "\n")
        out.flush()
        while True:
            chunk = f.read()
            if not chunk:
                alive = running()      # asked before the last read, so lines written before the end are kept
                chunk = f.read()
                if not chunk and not alive:
                    if pending:
                        out.write(pending.decode(errors="replace") + "\n")
                        out.flush()
                    return
                if not chunk:
                    time.sleep(poll_s)
                    continue
            pending += chunk
            *whole, pending = pending.split(b"\n")
            for line in whole:
                out.write(line.decode(errors="replace") + "\n")
            out.flush()


class _Prefixed:
    """A writer that puts `[label] ` before each line (several logs followed at once)."""

    def __init__(self, label: str, out: TextIO, lock: threading.Lock) -> None:
        self.label, self.out, self.lock = label, out, lock

    def write(self, text: str) -> None:
        with self.lock:
            self.out.write(f"[{self.label}] {text}")

    def flush(self) -> None:
        self.out.flush()


def follow_files(sources: list[tuple[str, Path, Callable[[], bool]]], lines: int) -> None:
    """Follow several files at once (label, path, running); lines are prefixed with the label when
    there is more than one. Returns when every writer has stopped."""
    if len(sources) == 1:
        follow_file(sources[0][1], lines, sources[0][2])
        return
    lock = threading.Lock()
    threads = [threading.Thread(target=follow_file, args=(path, lines, running),
                                kwargs={"out": _Prefixed(label, sys.stdout, lock)}, daemon=True)
               for label, path, running in sources]
    for t in threads:
        t.start()
    for t in threads:
        while t.is_alive():
            t.join(0.2)     # a short join keeps Ctrl-C working
