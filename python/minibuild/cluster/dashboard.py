"""The Grafana dashboard (cluster/grafana/mini-vllm.json), generated from cluster/grafana/dashboard.yaml.

Why generated: a Grafana dashboard is ~30 panels of boilerplate (grid positions, field configs, ids)
around a few PromQL queries; writing the JSON by hand invites a total panel whose per-replica twin
queries another metric. The YAML names each metric once; this module derives the total and
per-replica queries, lays the panels out and writes the JSON, which is committed so Grafana users
import a file (Dashboards -> Import, pick the Prometheus data source).

`queries()` reads the queries back out of the JSON and `expand()` substitutes Grafana's variables
($model, $__rate_interval) the way Grafana does, so tests and the dashboard picture run exactly the
committed queries against a real Prometheus.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import yaml

CLUSTER_DIR = Path(__file__).resolve().parents[3] / "cluster"
SPEC = CLUSTER_DIR / "grafana" / "dashboard.yaml"
JSON_PATH = CLUSTER_DIR / "grafana" / "mini-vllm.json"
REPLICA = "instance"
DS = {"type": "prometheus", "uid": "${datasource}"}


def _rate(metric: str, sel: str) -> str:
    return f"rate({metric}{{{sel}}}[$__rate_interval])"


def derived(panel: dict[str, Any], sel: str) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(total targets, per-replica targets) as (legend, PromQL) for a rate/gauge/quantile/ratio panel."""
    kind, m = panel["kind"], panel["metric"]
    by = f"sum by ({REPLICA}) "
    if kind == "rate":
        return [("total", f"sum({_rate(m, sel)})")], [(f"{{{{{REPLICA}}}}}", f"{by}({_rate(m, sel)})")]
    if kind == "gauge":
        agg = panel.get("agg", "sum")
        return ([(agg if agg != "sum" else "total", f"{agg}({m}{{{sel}}})")],
                [(f"{{{{{REPLICA}}}}}", f"{agg} by ({REPLICA}) ({m}{{{sel}}})")])
    if kind == "quantile":
        b = f"{m}_bucket"
        total = [(f"p{int(q * 100)}", f"histogram_quantile({q}, sum by (le) ({_rate(b, sel)}))") for q in (0.5, 0.99)]
        per = [(f"p{int(q * 100)} {{{{{REPLICA}}}}}", f"histogram_quantile({q}, sum by (le, {REPLICA}) ({_rate(b, sel)}))")
               for q in (0.5, 0.99)]
        return total, per
    if kind == "ratio":
        o = panel["over"]
        return ([("total", f"sum({_rate(m, sel)}) / sum({_rate(o, sel)})")],
                [(f"{{{{{REPLICA}}}}}", f"{by}({_rate(m, sel)}) / {by}({_rate(o, sel)})")])
    raise ValueError(f"dashboard.yaml: panel {panel['title']!r} has unknown kind {kind!r}")


def _panel(pid: int, title: str, unit: str, targets: list[tuple[str, str]], x: int, y: int, w: int) -> dict[str, Any]:
    return {
        "id": pid, "type": "timeseries", "title": title, "datasource": DS,
        "gridPos": {"h": 8, "w": w, "x": x, "y": y},
        "fieldConfig": {"defaults": {"unit": unit, "min": 0, "custom": {"lineWidth": 1, "fillOpacity": 10}},
                        "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                    "tooltip": {"mode": "multi", "sort": "desc"}},
        "targets": [{"datasource": DS, "refId": chr(ord("A") + i), "expr": expr, "legendFormat": legend,
                     "range": True} for i, (legend, expr) in enumerate(targets)],
    }


def build(spec: dict[str, Any]) -> dict[str, Any]:
    """The Grafana dashboard JSON (schema 39) for a spec."""
    sel = spec["selector"]
    panels: list[dict[str, Any]] = []
    y, pid = 0, 1
    for row in spec["rows"]:
        panels.append({"id": pid, "type": "row", "title": row["title"], "collapsed": False,
                       "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}, "panels": []})
        pid, y, x = pid + 1, y + 1, 0
        for p in row["panels"]:
            if "targets" in p:
                pieces = [(p["title"], [(t["legend"], t["expr"]) for t in p["targets"]])]
            else:
                total, per = derived(p, sel)
                pieces = [(f"{p['title']} - total", total), (f"{p['title']} - per replica", per)]
            w = 12
            for title, targets in pieces:
                panels.append(_panel(pid, title, p["unit"], targets, x, y, w))
                pid, x = pid + 1, x + w
                if x >= 24:
                    x, y = 0, y + 8
        if x:
            y += 8
    model_var = {"name": "model", "label": "model", "type": "query", "datasource": DS,
                 "query": {"query": "label_values(vllm:num_requests_running, model_name)", "refId": "model"},
                 "definition": "label_values(vllm:num_requests_running, model_name)",
                 "includeAll": True, "multi": True, "allValue": ".*", "refresh": 2, "sort": 1,
                 "current": {"selected": True, "text": ["All"], "value": ["$__all"]}}
    ds_var = {"name": "datasource", "label": "Prometheus", "type": "datasource", "query": "prometheus",
              "current": {}, "hide": 0}
    return {
        "title": spec["title"], "uid": spec["uid"], "editable": True, "graphTooltip": 1, "schemaVersion": 39,
        "version": 1, "refresh": spec.get("refresh", "10s"), "tags": ["mini-vllm", "vllm"],
        "time": {"from": spec.get("time_from", "now-30m"), "to": "now"}, "timezone": "browser",
        "templating": {"list": [ds_var, model_var]},
        "annotations": {"list": []}, "links": [], "panels": panels,
        "description": "Generated by `python -m minibuild.cluster.dashboard --write` from cluster/grafana/dashboard.yaml",
    }


def load_spec(path: Path = SPEC) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def render_json(spec: dict[str, Any]) -> str:
    return json.dumps(build(spec), indent=1) + "\n"


def queries(dashboard: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(panel title, legend, PromQL) for every target of every panel of a dashboard JSON."""
    return [(p["title"], t.get("legendFormat", ""), t["expr"])
            for p in dashboard["panels"] if p.get("type") != "row" for t in p.get("targets") or []]


def expand(expr: str, rate_interval: str = "1m", model: str = ".*") -> str:
    """Grafana's substitution of the variables the dashboard uses."""
    return expr.replace("$__rate_interval", rate_interval).replace("$model", model)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m minibuild.cluster.dashboard", description=__doc__.splitlines()[0])
    ap.add_argument("--write", action="store_true", help=f"write {JSON_PATH.relative_to(CLUSTER_DIR.parent)}")
    a = ap.parse_args(argv)
    text = render_json(load_spec())
    if a.write:
        JSON_PATH.write_text(text)
        print(JSON_PATH)
        return 0
    if JSON_PATH.read_text() != text:
        print(f"{JSON_PATH} is out of date: run `python -m minibuild.cluster.dashboard --write`", file=sys.stderr)
        return 1
    print(f"{JSON_PATH} is up to date")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
