"""PNG plots of a benchmark (A and B on the same axes), each with the data it was drawn from beside it.

Why the data file: a picture cannot be diffed or checked by a test; `X.png` comes with `X.json`
holding exactly the plotted series (and the same JSON sits in the PNG's `Description` text chunk), so
a reader - or a test - can tell what the picture shows without looking at pixels. matplotlib is
imported lazily with the Agg backend: no display is needed.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from minibuild.bench.load import LevelResult

# (panel title, unit, [(LevelResult field, key or None, line style)])
THROUGHPUT = (("output tokens/s", "tok/s", [("output_tok_s", None, "-")]),
              ("requests/s", "req/s", [("request_s", None, "-")]))
LATENCY = (("TTFT", "ms", [("ttft_ms", "p50", "-"), ("ttft_ms", "p99", "--")]),
           ("inter-token latency", "ms", [("itl_ms", "p50", "-"), ("itl_ms", "p99", "--")]),
           ("time per output token", "ms", [("tpot_ms", "p50", "-"), ("tpot_ms", "p99", "--")]),
           ("end-to-end latency", "ms", [("e2e_ms", "p50", "-"), ("e2e_ms", "p99", "--")]))


def pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_with_data(fig: Any, png: Path, data: dict[str, Any], dpi: int = 110) -> Path:
    """Write fig to png, data to png.with_suffix('.json') and into the PNG's Description chunk."""
    text = json.dumps(data, indent=1, allow_nan=True)
    png.with_suffix(".json").write_text(text)
    fig.savefig(png, dpi=dpi, metadata={"Description": text, "Software": "mini-vllm"})
    pyplot().close(fig)
    return png


def _value(r: LevelResult, field: str, key: str | None) -> float | None:
    v = getattr(r, field)
    v = v[key] if key else v
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


def plot_panels(rows: list[LevelResult], labels: list[str], panels: tuple, title: str, png: Path) -> Path:
    """One subplot per panel; one colour per target, one line style per statistic; x = concurrency."""
    plt = pyplot()
    ncols = 2
    nrows = -(-len(panels) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(6.2 * ncols, 3.6 * nrows), squeeze=False)
    data: dict[str, Any] = {"title": title, "x": "concurrency", "panels": {}}
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, (name, unit, stats) in zip(axes.flat, panels):
        series: dict[str, Any] = {}
        for i, label in enumerate(labels):
            mine = sorted((r for r in rows if r.label == label), key=lambda r: r.concurrency)
            for field, key, style in stats:
                pts = [(r.concurrency, _value(r, field, key)) for r in mine]
                pts = [(x, y) for x, y in pts if y is not None]
                if not pts:
                    continue
                sname = f"{label} {key}" if key else label
                series[sname] = {"x": [p[0] for p in pts], "y": [p[1] for p in pts]}
                ax.plot(series[sname]["x"], series[sname]["y"], style, marker="o", color=colours[i % len(colours)],
                        label=sname)
        data["panels"][name] = {"unit": unit, "series": series}
        ax.set_title(name)
        ax.set_xlabel("concurrency")
        ax.set_ylabel(unit)
        ax.set_xscale("log", base=2)
        xs = sorted({r.concurrency for r in rows})
        ax.set_xticks(xs, [str(x) for x in xs])
        ax.minorticks_off()
        ax.grid(True, alpha=.3)
        if series:
            ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    return save_with_data(fig, png, data)


def write_plots(out: Path, rows: list[LevelResult], labels: list[str], workload: str) -> list[Path]:
    return [plot_panels(rows, labels, THROUGHPUT, f"throughput vs concurrency ({workload})", out / "throughput.png"),
            plot_panels(rows, labels, LATENCY, f"latency vs concurrency ({workload})", out / "latency.png")]
