"""Console output for the build engine: one place decides how messages and progress look.

Why: library code (store, sources, compile) must be able to say "corrupt entry deleted" or show a
progress bar without each module configuring rich its own way. Messages go to stderr so that
commands whose stdout is data (`invoke graph`, `--dry-run` listings) stay pipeable. rich is
imported lazily: a no-op build must stay well under half a second.
"""
from __future__ import annotations

import errno
import sys
from contextlib import contextmanager
from typing import Any, Iterator

_console: Any = None


def console() -> Any:
    global _console
    if _console is None:
        from rich.console import Console

        _console = Console(stderr=True, highlight=False, soft_wrap=True)
    return _console


def info(msg: str) -> None:
    console().print(msg, markup=False)


def warn(msg: str) -> None:
    console().print(f"warning: {msg}", style="yellow", markup=False)


def error(msg: str) -> None:
    console().print(f"error: {msg}", style="bold red", markup=False)


_IO_HINTS = {
    errno.EROFS: "the file system is read-only: a no-op build only reads, anything else needs a writable "
                 "store (MINI_VLLM_CACHE) and install dir (MINI_VLLM_EXT_DIR)",
    errno.ENOSPC: "the disk is full: free space (`invoke cache --gc`) or point MINI_VLLM_CACHE / "
                  "MINI_VLLM_EXT_DIR at a bigger one",
    errno.EDQUOT: "the disk quota is used up: free space or point MINI_VLLM_CACHE elsewhere",
    errno.EACCES: "permission denied: run as the owner or point MINI_VLLM_CACHE at a directory you own",
}


def describe_os_error(exc: OSError) -> str:
    """One line for a failed read or write: the path, the cause, what to do."""
    where = exc.filename if exc.filename is not None else "(unnamed file)"
    hint = _IO_HINTS.get(exc.errno or 0)
    return f"{where}: {exc.strerror or exc}" + (f" ({hint})" if hint else "")


@contextmanager
def failures_as_one_line(*known: type[BaseException]) -> Iterator[None]:
    """For a command: an OSError or one of `known` ends it with one `error:` line and exit 1, no traceback."""
    try:
        yield
    except OSError as exc:
        error(describe_os_error(exc))
        raise SystemExit(1) from None
    except known as exc:
        error(str(exc))
        raise SystemExit(1) from None


def printable(text: str) -> str:
    """`text` with control and other non-printable characters escaped (\\x1b, \\n, \\u202e...): a terminal
    shows what a server sent, and no escape sequence in it runs."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def table_console() -> Any:
    """The console for tables a user copies from (URLs, paths, pids): on a terminal its width; piped or
    redirected, no width limit, so nothing is cut at 80 columns."""
    from rich.console import Console

    con = Console(highlight=False)
    return con if con.is_terminal else Console(highlight=False, width=1_000_000)


def out(msg: str = "") -> None:
    """Data output (stdout), not decorated."""
    sys.stdout.write(msg + "\n")
    sys.stdout.flush()


class _NullProgress:
    def advance(self, n: int = 1) -> None:
        pass

    def describe(self, text: str) -> None:
        pass


class _RichProgress:
    def __init__(self, progress: Any, task: Any) -> None:
        self._p, self._t = progress, task

    def advance(self, n: int = 1) -> None:
        self._p.advance(self._t, n)

    def describe(self, text: str) -> None:
        self._p.update(self._t, description=text)


@contextmanager
def progress(label: str, total: int) -> Iterator[Any]:
    """A progress bar on a terminal; plain start/finish lines otherwise (CI logs stay readable)."""
    con = console()
    if total <= 0 or not con.is_terminal:
        yield _NullProgress()
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=con, transient=False) as p:
        yield _RichProgress(p, p.add_task(label, total=total))


class _LogTransfer:
    """Byte progress for logs (no terminal): a line with bytes/s and ETA at most every `every` s."""

    def __init__(self, label: str, total: int, every: float = 10.0) -> None:
        import time

        self._clock = time.monotonic
        self.label, self.total, self.every = label, total, every
        self.done = 0
        self._t0 = self._last = self._clock()

    def advance(self, n: int = 1) -> None:
        self.done += n
        now = self._clock()
        if now - self._last >= self.every:
            self._last = now
            info(self.line(now))

    def describe(self, text: str) -> None:
        self.label = text

    def line(self, now: float) -> str:
        rate = self.done / max(now - self._t0, 1e-9)
        eta = (self.total - self.done) / rate if rate > 0 else float("inf")
        return (f"{self.label}: {self.done / 1e6:,.1f} / {self.total / 1e6:,.1f} MB, {rate / 1e6:,.1f} MB/s, "
                f"ETA {eta:,.0f} s")


@contextmanager
def transfer(label: str, total_bytes: int) -> Iterator[Any]:
    """Progress of a byte transfer: a rich bar with size, bytes/s and ETA on a terminal; periodic
    log lines with the same numbers otherwise. `advance(n)` takes bytes; safe from several threads."""
    con = console()
    if total_bytes <= 0:
        yield _NullProgress()
        return
    if not con.is_terminal:
        yield _LogTransfer(label, total_bytes)
        return
    from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn,
                               TransferSpeedColumn)

    with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                  TimeRemainingColumn(), console=con, transient=False) as p:
        yield _RichProgress(p, p.add_task(label, total=total_bytes))
