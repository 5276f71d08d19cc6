"""Benchmark results as files people read: a markdown table (with B/A ratios) and results.json.

Why separate from the load generator: the device benchmarks reuse the load and print their own
tables; only `invoke bench` writes this directory. Every number printed comes from a LevelResult.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from minibuild.bench.load import LevelResult

COLUMNS = ("target", "concurrency", "requests", "errors", "output tok/s", "req/s", "TTFT p50 ms", "TTFT p99 ms",
           "ITL p50 ms", "ITL p99 ms", "TPOT p50 ms", "e2e p50 ms", "e2e p99 ms")


def _num(x: float, digits: int = 1) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:,.{digits}f}"


def row_cells(r: LevelResult) -> list[str]:
    return [r.label, str(r.concurrency), str(r.requests), str(r.errors), _num(r.output_tok_s, 0),
            _num(r.request_s, 2), _num(r.ttft_ms["p50"]), _num(r.ttft_ms["p99"]), _num(r.itl_ms["p50"], 2),
            _num(r.itl_ms["p99"], 2), _num(r.tpot_ms["p50"], 2), _num(r.e2e_ms["p50"], 0), _num(r.e2e_ms["p99"], 0)]


def ratios(rows: list[LevelResult], a: str, b: str) -> list[tuple[int, float, float, float]]:
    """Per concurrency: B/A output tok/s, B/A TTFT p50, B/A TPOT p50 (>1 = B higher)."""
    by = {(r.label, r.concurrency): r for r in rows}
    out = []
    for conc in sorted({r.concurrency for r in rows}):
        ra, rb = by.get((a, conc)), by.get((b, conc))
        if ra and rb:
            div = lambda x, y: x / y if y and not math.isnan(y) and not math.isnan(x) else float("nan")  # noqa: E731
            out.append((conc, div(rb.output_tok_s, ra.output_tok_s), div(rb.ttft_ms["p50"], ra.ttft_ms["p50"]),
                        div(rb.tpot_ms["p50"], ra.tpot_ms["p50"])))
    return out


def markdown(rows: list[LevelResult], meta: dict[str, Any]) -> str:
    lines = [f"# {meta['title']}", "",
             f"{meta['workload']}. Date {meta['date']}, client host {meta['host']}.", ""]
    for t in meta["targets"]:
        lines.append(f"- **{t['label']}**: {t['url']} (model `{t['model']}`)")
    lines += ["", "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in sorted(rows, key=lambda r: (r.concurrency, [t["label"] for t in meta["targets"]].index(r.label))):
        lines.append("| " + " | ".join(row_cells(r)) + " |")
    labels = [t["label"] for t in meta["targets"]]
    if len(labels) == 2:
        a, b = labels
        lines += ["", f"B/A ratios ({b} / {a}; output tok/s > 1 means B is faster, latency < 1 means B is faster):",
                  "", "| concurrency | output tok/s | TTFT p50 | TPOT p50 |", "|---|---|---|---|"]
        for conc, thr, ttft, tpot in ratios(rows, a, b):
            lines.append(f"| {conc} | {_num(thr, 2)}x | {_num(ttft, 2)}x | {_num(tpot, 2)}x |")
    errs = [r for r in rows if r.errors]
    if errs:
        lines += ["", "Errors:"] + [f"- {r.label} at {r.concurrency}: {r.errors} of {r.requests}, first: "
                                    f"`{r.first_error}`" for r in errs]
    lines += ["", f"Command: `{meta['command']}`", ""]
    return "\n".join(lines)


def write_results(out: Path, rows: list[LevelResult], meta: dict[str, Any]) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    data = out / "results.json"
    data.write_text(json.dumps({"meta": meta, "rows": [r.to_dict() for r in rows]}, indent=1, allow_nan=True))
    md = out / "results.md"
    md.write_text(markdown(rows, meta))
    return md, data
