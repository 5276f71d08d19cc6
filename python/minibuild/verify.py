"""`invoke verify`: prove a deployed server works, over HTTP only - the way a user's client sees it.

Health, the model list, a completion, a chat completion, a streamed chat completion and the
Prometheus metrics that dashboards and routers rely on (vLLM's names). Each check is timed and shown
in a table; the first failure is named in the result. Completions go through the official `openai`
client so that its parsing is part of the proof; health and metrics are plain httpx.
"""
from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from minibuild.config import Config, ConfigError, VerifyConfig
from minibuild.ui import printable, table_console

console = Console(soft_wrap=True)


class CheckFailed(AssertionError):
    """A check's answer was wrong; the message says what was expected and what came."""


@dataclass
class Result:
    name: str
    ok: bool
    seconds: float
    detail: str


def _expect(cond: bool, msg: str) -> None:
    if not cond:
        raise CheckFailed(msg)


def metric_names(text: str) -> set[str]:
    """Metric family names in a Prometheus text exposition (from # TYPE lines and samples)."""
    names = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            names.add(line.split()[2])
        elif line and not line.startswith("#"):
            names.add(line.split("{")[0].split(" ")[0])
    return names


def has_metric(names: set[str], want: str) -> bool:
    """A counter `x` is exposed as `x_total`, a histogram as `x_bucket`/`_sum`/`_count`."""
    return any(n == want or n in (f"{want}_total", f"{want}_bucket", f"{want}_sum", f"{want}_count") for n in names)


class Checks:
    """The checks, in order; later ones use what earlier ones found (the served model's id)."""

    def __init__(self, url: str, api_key: str | None, vcfg: VerifyConfig):
        from openai import OpenAI

        self.url = url.rstrip("/")
        self.vcfg = vcfg
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.Client(base_url=self.url, headers=headers, timeout=vcfg.timeout_s)
        self.openai = OpenAI(base_url=f"{self.url}/v1", api_key=api_key or "none", max_retries=0,
                             timeout=vcfg.timeout_s)
        self.model: str | None = None

    def health(self) -> str:
        r = self.http.get("/health")
        _expect(r.status_code == 200, f"GET /health -> {r.status_code} {r.text[:200]}")
        return "200"

    def models(self) -> str:
        r = self.http.get("/v1/models")
        _expect(r.status_code == 200, f"GET /v1/models -> {r.status_code} {r.text[:200]}")
        data = r.json().get("data") or []
        _expect(bool(data), f"/v1/models lists no model: {r.text[:200]}")
        self.model = data[0]["id"]
        return ", ".join(m["id"] for m in data)

    def completion(self) -> str:
        out = self.openai.completions.create(model=self.model, prompt=self.vcfg.prompt,
                                             max_tokens=self.vcfg.max_tokens, temperature=0)
        _expect(len(out.choices) == 1 and isinstance(out.choices[0].text, str), f"bad choices: {out}")
        _expect(out.usage is not None and out.usage.completion_tokens > 0, f"no completion tokens: {out.usage}")
        return f"{out.usage.completion_tokens} tokens, finish={out.choices[0].finish_reason}: {out.choices[0].text[:40]!r}"

    def _messages(self) -> list[dict[str, str]]:
        return [{"role": "user", "content": self.vcfg.prompt}]

    @staticmethod
    def _text(obj: Any) -> str:
        """content plus reasoning_content (GPT-OSS's analysis channel) of a message or a delta."""
        extra = getattr(obj, "model_extra", None) or {}
        return (getattr(obj, "content", None) or "") + (extra.get("reasoning_content") or "")

    def chat(self) -> str:
        out = self.openai.chat.completions.create(model=self.model, messages=self._messages(),
                                                  max_tokens=self.vcfg.max_tokens, temperature=0)
        msg = out.choices[0].message
        _expect(msg.role == "assistant", f"role {msg.role!r}")
        _expect(out.usage is not None and out.usage.completion_tokens > 0, f"no completion tokens: {out.usage}")
        self.chat_text = self._text(msg)
        return f"{out.usage.completion_tokens} tokens, finish={out.choices[0].finish_reason}"

    def stream(self) -> str:
        chunks, first, finish, role, text = 0, None, None, None, ""
        start = time.perf_counter()
        stream = self.openai.chat.completions.create(model=self.model, messages=self._messages(),
                                                     max_tokens=self.vcfg.max_tokens, temperature=0,
                                                     stream=True)
        for chunk in stream:
            if not chunk.choices:
                continue
            chunks += 1
            delta = chunk.choices[0].delta
            role = role or delta.role
            piece = self._text(delta)
            if piece and first is None:
                first = time.perf_counter() - start
            text += piece
            finish = chunk.choices[0].finish_reason or finish
        _expect(role == "assistant", f"no assistant role chunk (got {role!r})")
        _expect(bool(text), f"{chunks} chunks streamed but no text")
        _expect(finish is not None, "the stream never sent a finish_reason")
        same = "same text as non-streamed" if text == getattr(self, "chat_text", None) else "text differs from non-streamed"
        return f"{chunks} chunks, first text after {first * 1000:.0f} ms, finish={finish}, {same}"

    def metrics(self) -> str:
        r = self.http.get("/metrics")
        _expect(r.status_code == 200, f"GET /metrics -> {r.status_code}")
        names = metric_names(r.text)
        missing = [m for m in self.vcfg.metrics if not has_metric(names, m)]
        _expect(not missing, f"missing metrics: {', '.join(missing)}")
        return f"{len(self.vcfg.metrics)} expected names present"

    def all(self) -> list[tuple[str, Callable[[], str]]]:
        return [("health", self.health), ("models", self.models), ("completion", self.completion),
                ("chat", self.chat), ("chat stream", self.stream), ("metrics", self.metrics)]


def run_checks(url: str, api_key: str | None, vcfg: VerifyConfig) -> list[Result]:
    """Run every check (stopping after health or models fail: nothing else can pass)."""
    checks = Checks(url, api_key, vcfg)
    results: list[Result] = []
    for name, fn in checks.all():
        start = time.perf_counter()
        try:
            detail, ok = fn(), True
        except Exception as exc:   # any failure of a check is that check's result, named
            detail, ok = f"{type(exc).__name__}: {exc}", False
        results.append(Result(name, ok, time.perf_counter() - start, detail))
        if not ok and name in ("health", "models"):
            break
    return results


@contextlib.contextmanager
def target_url(cfg: Config, target: str, served_name: str | None = None) -> Iterator[str]:
    """The URL of what `invoke rollout --target T` deployed for a model (a port-forward for Kubernetes)."""
    from minibuild.cluster import plan_for

    plan = plan_for(cfg, target, served_name)
    if target == "local":   # through the router when one runs
        from minibuild.cluster.local_stack import url
        yield url(cfg, plan)
    elif target == "slurm":   # through the router job when one runs
        from minibuild.cluster.slurm_stack import url
        yield url(cfg, plan)
    else:
        from minibuild.cluster.portforward import forward_to_deployment
        with forward_to_deployment(cfg, plan) as local:
            yield local


def verify(cfg: Config, target: str = "local", url: str | None = None, served_name: str | None = None,
           api_key: str | None = None) -> bool:
    """Check the server at `url` (or the target's); print the table; False names the failed check."""
    vcfg = cfg.cluster.verify
    try:
        with contextlib.ExitStack() as stack:
            base = url or stack.enter_context(target_url(cfg, target, served_name))
            results = run_checks(base, api_key, vcfg)
    except (RuntimeError, ConfigError, OSError) as exc:
        console.print(f"[red]verify {target}: cannot reach the server:[/] {escape(printable(str(exc)))}")
        return False
    table = Table(title=f"verify {printable(base)}")
    for col, kw in (("check", {}), ("result", {}), ("latency", {"justify": "right"}), ("detail", {"overflow": "fold"})):
        table.add_column(col, **kw)
    for r in results:
        table.add_row(r.name, "[green]ok[/]" if r.ok else "[red]FAILED[/]", f"{r.seconds * 1000:.0f} ms",
                      Text(printable(r.detail)), style=None if r.ok else "red")   # what the server sent, escaped
    table_console().print(table)
    failed = [r.name for r in results if not r.ok]
    if failed or len(results) < 6:
        console.print(f"[red]verify failed:[/] {', '.join(failed)}")
        return False
    console.print("[green]verify passed[/]")
    return True
