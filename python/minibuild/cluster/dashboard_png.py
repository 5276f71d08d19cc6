"""A picture of the Grafana dashboard drawn from a real Prometheus: every panel's committed queries run
over a time range, plotted with matplotlib in the dashboard's panel order.

Why: Grafana is not installable here, and a reader of docs/observability.md should see what the
dashboard shows on a live server - not a mock-up. The data behind the picture is written beside it
(same name, .json), so what the picture claims can be checked.
"""
from __future__ import annotations

import math
from datetime import datetime
from pathlib import Path
from typing import Any

from minibuild.bench.plots import pyplot, save_with_data
from minibuild.cluster.dashboard import expand
from minibuild.cluster.promql import query_range

UNIT_SCALE = {"s": (1e3, "ms"), "percentunit": (100.0, "%")}


def _legend(fmt: str, labels: dict[str, str]) -> str:
    out = fmt
    for k, v in labels.items():
        out = out.replace("{{" + k + "}}", v)
    return out


def panel_data(prom: str, dashboard: dict[str, Any], start: float, end: float, step: float,
               rate_interval: str) -> list[dict[str, Any]]:
    """[{title, unit, series: {legend: {"t": [...], "y": [...]}}}] for every non-row panel."""
    out = []
    for p in dashboard["panels"]:
        if p.get("type") == "row":
            continue
        unit = p.get("fieldConfig", {}).get("defaults", {}).get("unit", "short")
        series: dict[str, Any] = {}
        for t in p.get("targets") or []:
            for labels, pts in query_range(prom, expand(t["expr"], rate_interval), start, end, step):
                pts = [(ts - start, v) for ts, v in pts if not math.isnan(v)]
                if pts:
                    series[_legend(t.get("legendFormat", ""), labels) or t["refId"]] = {
                        "t": [round(x, 3) for x, _ in pts], "y": [y for _, y in pts]}
        out.append({"title": p["title"], "unit": unit, "series": series})
    return out


def render(prom: str, dashboard: dict[str, Any], start: float, end: float, png: Path, step: float = 1.0,
           rate_interval: str = "15s", columns: int = 4, note: str = "") -> Path:
    """Write png (+ png.json with the plotted data); returns png."""
    plt = pyplot()
    panels = panel_data(prom, dashboard, start, end, step, rate_interval)
    rows = -(-len(panels) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4.6 * columns, 2.5 * rows), squeeze=False)
    for ax, p in zip(axes.flat, panels):
        scale, unit = UNIT_SCALE.get(p["unit"], (1.0, "" if p["unit"] == "short" else p["unit"]))
        for name, s in sorted(p["series"].items()):
            ax.plot(s["t"], [y * scale for y in s["y"]], label=name, linewidth=1.2)
        ax.set_title(p["title"], fontsize=9)
        ax.tick_params(labelsize=7)
        ax.set_xlabel("seconds", fontsize=7)
        if unit:
            ax.set_ylabel(unit, fontsize=7)
        ax.grid(True, alpha=.3)
        if p["series"]:
            ax.legend(fontsize=6, loc="best")
        else:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes, color="grey")
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    when = datetime.fromtimestamp(start).strftime("%Y-%m-%d %H:%M")
    fig.suptitle(f"{dashboard['title']} dashboard - live Prometheus queries, {when}, {end - start:.0f} s"
                 + (f"\n{note}" if note else ""), fontsize=11)
    fig.tight_layout()
    return save_with_data(fig, png, {"title": dashboard["title"], "start": start, "end": end, "step": step,
                                     "rate_interval": rate_interval, "panels": panels}, dpi=80)
