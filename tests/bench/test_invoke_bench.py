"""`invoke bench` as a user runs it: A/B of two real `mini-vllm serve` processes (tiny model, CPU) with
different settings; the table has both, and each PNG shows both series (read from the data file beside
it and from the PNG's own Description text chunk).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from mini_vllm.model.tiny import write_tiny_checkpoint

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))
from server_process import free_port, start_server  # noqa: E402 - the tests' server launcher

INVOKE = Path(sys.executable).parent / "invoke"
pytestmark = pytest.mark.slow


def invoke(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(INVOKE), *args], cwd=ROOT, env={**os.environ, "COLUMNS": "200"},
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600)


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    d = tmp_path_factory.mktemp("ab")
    model = write_tiny_checkpoint(d / "tiny-gpt-oss")
    a = start_server(model, "--max-num-seqs", "16", "--disable-uvicorn-access-log", log_dir=d)
    b = start_server(model, "--max-num-seqs", "2", "--disable-uvicorn-access-log", log_dir=d)
    try:
        a.wait_ready()
        b.wait_ready()
        yield a.url, b.url
    finally:
        a.stop()
        b.stop()


def test_ab_table_and_plots_show_both(servers, tmp_path):
    a, b = servers
    out = tmp_path / "bench"
    r = invoke("bench", "--url", a, "--url-b", b, "--label-a", "seqs16", "--label-b", "seqs2",
               "--concurrency", "1,4", "--input-len", "24", "--output-len", "8", "--requests", "4", "--rounds", "2",
               "--out", str(out))
    assert r.returncode == 0, r.stdout[-3000:]
    res = json.loads((out / "results.json").read_text())
    rows = {(x["label"], x["concurrency"]): x for x in res["rows"]}
    assert set(rows) == {("seqs16", 1), ("seqs16", 4), ("seqs2", 1), ("seqs2", 4)}
    for x in rows.values():
        assert x["errors"] == 0 and x["requests"] == 2 * 4 and x["output_tokens"] == 8 * 8   # 2 rounds pooled
        assert x["output_tok_s"] > 0 and 0 < x["ttft_ms"]["p50"] <= x["e2e_ms"]["p50"]
    md = (out / "results.md").read_text()
    assert md.count("| seqs16 |") == 2 and md.count("| seqs2 |") == 2 and "B/A ratios" in md
    for name in ("throughput", "latency"):
        png = out / f"{name}.png"
        beside = json.loads(png.with_suffix(".json").read_text())
        with Image.open(png) as im:
            assert im.format == "PNG" and im.size[0] > 500
            embedded = json.loads(im.text["Description"])
        assert embedded == beside
        for panel in beside["panels"].values():
            labels = {s.split()[0] for s in panel["series"]}
            assert labels == {"seqs16", "seqs2"}, panel
            assert all(s["x"] == [1, 4] for s in panel["series"].values())
    thr = json.loads((out / "throughput.json").read_text())["panels"]["output tokens/s"]["series"]
    assert thr["seqs2"]["y"] == [rows[("seqs2", 1)]["output_tok_s"], rows[("seqs2", 4)]["output_tok_s"]]


def test_server_errors_are_counted_with_their_text(servers):
    from minibuild.bench.load import Workload, run_level

    r = run_level(servers[0], Workload(input_len=8, output_len=4, model="no-such-model"), 2, 4)
    assert r.errors == r.requests == 4 and r.first_error.startswith("HTTP 404") and "no-such-model" in r.first_error


def test_bad_input_is_one_line(tmp_path):
    r = invoke("bench", "--concurrency", "1")
    assert r.returncode == 1 and "--url is required" in r.stdout and "Traceback" not in r.stdout
    r = invoke("bench", "--url", f"http://127.0.0.1:{free_port()}", "--out", str(tmp_path))
    assert r.returncode == 1 and "cannot reach /v1/models" in r.stdout and "Traceback" not in r.stdout
    r = invoke("bench", "--url", "http://127.0.0.1:1", "--concurrency", "1,x")
    assert r.returncode == 1 and "comma-separated positive integers" in r.stdout
