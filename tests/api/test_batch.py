"""`mini-vllm batch`: the OpenAI Batch format through the server's own code - the same answers as the
running server (greedy), error lines for bad lines, an engine failure as a 500 line, and a rerun after
SIGKILL that resumes without repeating or losing a line (a torn last line is cut and rerun)."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from api_helpers import FAULT_AFTER, FAULT_MARKER, MAX_MODEL_LEN, MODEL
from mini_vllm.batch.jsonl import Appender, done_keys, parse

FLAGS = ("--max-model-len", str(MAX_MODEL_LEN), "--kv-cache-memory-gb", "0.05", "--device", "cpu")


def _requests(n: int, max_tokens: int) -> list[dict]:
    out = []
    for i in range(n):
        if i % 2:
            body = {"model": MODEL, "prompt": f"Batch line {i} says", "max_tokens": max_tokens, "temperature": 0}
            out.append({"custom_id": f"cmpl-{i}", "method": "POST", "url": "/v1/completions", "body": body})
        else:
            body = {"model": MODEL, "messages": [{"role": "user", "content": f"Question {i}?"}],
                    "max_tokens": max_tokens, "temperature": 0}
            out.append({"custom_id": f"chat-{i}", "method": "POST", "url": "/v1/chat/completions", "body": body})
    return out


BAD = ['{"custom_id": "broken", "url": "/v1/completions", "body": {',                       # not JSON
       json.dumps({"custom_id": "emb", "url": "/v1/embeddings", "body": {"input": "x"}}),      # unsupported url
       json.dumps({"custom_id": "neg", "url": "/v1/completions", "body": {"prompt": "x", "max_tokens": -1}}),
       json.dumps({"custom_id": "fault", "url": "/v1/completions",                              # fails in the engine
                   "body": {"prompt": list(FAULT_MARKER) + [5, 6], "max_tokens": 8, "temperature": 0}}),
       json.dumps({"custom_id": "cmpl-1", "url": "/v1/completions", "body": {"prompt": "again"}})]   # duplicate id


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(x + "\n" for x in lines))
    return path


def _batch(model: Path, src: Path, dst: Path, *extra: str) -> subprocess.Popen:
    fault = ",".join(map(str, FAULT_MARKER)) + f"@{FAULT_AFTER}"    # the server fixture's fault hook
    return subprocess.Popen([sys.executable, "-m", "mini_vllm.cli", "batch", str(model), "--input", str(src),
                             "--output", str(dst), *FLAGS, "--test-fault-prompt", fault, "--progress-interval", "0.5",
                             *extra], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def test_batch_matches_the_server_and_resumes_after_sigkill(server, tiny_model, tmp_path):
    good = _requests(24, 12)
    src = _write(tmp_path / "in.jsonl", [json.dumps(r) for r in good] + BAD)
    dst = tmp_path / "out.jsonl"

    # First run, killed (SIGKILL: no clean-up) once some results are written; few requests at a time.
    proc = _batch(tiny_model, src, dst, "--max-concurrency", "2", "--max-num-seqs", "2")
    deadline = time.monotonic() + 120
    while len(_lines(dst)) < 6 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.kill()
    proc.communicate()
    first = _lines(dst)
    assert 6 <= len(first) < len(good) + len(BAD), "the kill should land mid-run"
    with open(dst, "ab") as f:    # as if killed inside a write: a torn last line
        f.write(b'{"id":"batch_req_24","custom_id":"chat-2')

    # The rerun resumes: it cuts the torn line, skips what is done, and runs the rest.
    proc = _batch(tiny_model, src, dst)
    log, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, log
    assert "partial line" in log and f"{len(first)} from an earlier run" in log
    assert f"[batch] {len(good) + len(BAD)}/{len(good) + len(BAD)} done" in log
    out = _lines(dst)
    ids = [o["custom_id"] for o in out]
    assert len(out) == len(good) + len(BAD)
    assert sorted(i for i in ids if i) == sorted([r["custom_id"] for r in good] + ["emb", "neg", "fault", "cmpl-1"])
    assert ids.count("cmpl-1") == 2 and ids.count(None) == 1       # the duplicate's error line; the unparsable line
    by_line = {o["id"]: o for o in out}

    # Same requests to the running server: the same answers, token for token (greedy).
    with httpx.Client(base_url=server.url, timeout=120) as c:
        for n, req in enumerate(good, 1):
            got = by_line[f"batch_req_{n}"]
            assert got["custom_id"] == req["custom_id"] and got["error"] is None
            want = c.post(req["url"], json=req["body"])
            assert got["response"]["status_code"] == want.status_code == 200
            a, b = got["response"]["body"], want.json()
            assert a["choices"] == b["choices"], req["custom_id"]
            counts = ("prompt_tokens", "completion_tokens", "total_tokens")   # (cached tokens depend on history)
            assert [a["usage"][k] for k in counts] == [b["usage"][k] for k in counts]
            assert a["model"] == MODEL and got["response"]["request_id"] == a["id"]
        neg = by_line[f"batch_req_{len(good) + 3}"]["response"]
        want = c.post("/v1/completions", json=json.loads(BAD[2])["body"])
        assert neg["status_code"] == want.status_code == 400 and neg["body"] == want.json()
    assert by_line[f"batch_req_{len(good) + 4}"]["response"]["status_code"] == 500      # engine fault: its line only
    errors = {o["custom_id"]: o["error"]["message"] for o in out if o["error"]}
    assert "not valid JSON" in errors[None] and "/v1/embeddings" in errors["emb"]
    assert "duplicate custom_id 'cmpl-1'" in errors["cmpl-1"]

    # A third run has nothing to do and says so without loading the model.
    proc = _batch(tiny_model, src, dst)
    log, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0 and f"{len(out)} from an earlier run" in log and f"model {MODEL} ready in" not in log
    assert _lines(dst) == out


def test_sigterm_stops_cleanly_and_says_how_to_resume(tiny_model, tmp_path):
    src = _write(tmp_path / "in.jsonl", [json.dumps(r) for r in _requests(40, 24)])
    dst = tmp_path / "out.jsonl"
    proc = _batch(tiny_model, src, dst, "--max-concurrency", "2", "--max-num-seqs", "2")
    deadline = time.monotonic() + 120
    while not _lines(dst) and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)      # what scancel sends
    log, _ = proc.communicate(timeout=60)
    assert proc.returncode == 143, log
    assert "rerun the same command to resume" in log
    assert 0 < len(_lines(dst)) < 40 and dst.read_bytes().endswith(b"\n")


def test_input_lines_are_checked_one_by_one(tmp_path):
    assert parse(3, '{"custom_id": "a", "url": "/v1/chat/completions", "body": {"messages": []}}').custom_id == "a"
    for text, says in [("[1, 2]", "expected a JSON object"), ('{"url": "/v1/completions", "body": {}}', "custom_id"),
                       ('{"custom_id": "a", "method": "GET", "url": "/v1/completions", "body": {}}', "method must be POST"),
                       ('{"custom_id": "a", "url": "/v1/completions", "body": "x"}', "body must be a JSON object"),
                       ('{"custom_id": "a", "url": "/v1/completions", "body": {"stream": true}}', "stream")]:
        bad = parse(7, text)
        assert says in bad.message and bad.message.startswith("line 7:") and bad.id == "batch_req_7"
    out = tmp_path / "o.jsonl"
    w = Appender(out)
    w.write({"id": "batch_req_1", "custom_id": "a"})
    w.write({"id": "batch_req_2", "custom_id": None})
    w.close()
    done = done_keys(out)
    assert done.custom_ids == {"a"} and done.ids == {"batch_req_1", "batch_req_2"} and done.cut == 0
    assert done_keys(tmp_path / "missing.jsonl").custom_ids == set()
