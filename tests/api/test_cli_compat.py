"""The user's own `vllm serve` / `api_server` command lines, exactly as their documents write them, model swapped.

The lines below are copied from the user's guides (the EKS reference guide's manifest args and examples,
the Slurm guide's job script). Each parses with only the model replaced; flags that change nothing here are
named in one log line each; values we cannot honour are refused with one line and exit status 2. Two of
them run for real: the Slurm line through `python -m mini_vllm.entrypoints.openai.api_server`, and the EKS
manifest line through the `vllm` console script - with --tensor-parallel-size 2 instead of 4, the one
change, because the tiny model has 2 KV heads (the flag itself is checked at 4 in the parse test).
"""
from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import httpx
import pytest

from mini_vllm.cli import parse_args
from mini_vllm.entrypoints.flags import check_supported
from mini_vllm.entrypoints.openai import api_server
from mini_vllm.entrypoints.serve import engine_args
from mini_vllm.model.tokenizer import Tokenizer

from server_process import ServerProcess, free_port

ROOT = Path(__file__).resolve().parents[2]
EKS_MANIFEST = ("vllm serve Qwen/Qwen3-14B --enable-auto-tool-choice --tool-call-parser hermes --trust-remote-code "
                "--max-num-batched-tokens 32768  --max-num-seqs 8 --max-model-len 32768 --dtype bfloat16 "
                "--tensor-parallel-size 4 --gpu-memory-utilization 0.90")
EKS_QUICKSTART = "vllm serve Qwen/Qwen3-14B --tensor-parallel-size 4"
EKS_REDUCED = "vllm serve Qwen/Qwen3-14B --max-model-len 16384 --max-num-batched-tokens 16384"
EKS_MORE_SEQS = "vllm serve Qwen/Qwen3-14B --max-num-seqs 16"
SLURM = ("python3 -m vllm.entrypoints.openai.api_server --model mistralai/Mistral-7B-Instruct-v0.3 --host 0.0.0.0 "
         "--port 8001 --dtype auto --max-model-len 8192 --gpu-memory-utilization 0.9 --tensor-parallel-size 1 "
         "--trust-remote-code --disable-log-requests")
SEED_MODELS = ("Qwen/Qwen3-14B", "mistralai/Mistral-7B-Instruct-v0.3")


def ours(line: str, model: str) -> list[str]:
    """The user's line with our program and `model` in place of theirs (nothing else changes)."""
    words = [model if w in SEED_MODELS else w for w in shlex.split(line)]
    if words[:2] == ["vllm", "serve"]:
        return ["serve", *words[2:]]
    assert words[:3] == ["python3", "-m", "vllm.entrypoints.openai.api_server"], words
    return words[3:]


@pytest.mark.parametrize("line", [EKS_MANIFEST, EKS_QUICKSTART, EKS_REDUCED, EKS_MORE_SEQS, SLURM])
def test_the_users_command_lines_parse_and_map(line, tiny_model):
    argv = ours(line, str(tiny_model))
    ns = api_server.parse_args(argv) if line == SLURM else parse_args(argv)
    notes = check_supported(ns)
    a = engine_args(ns)
    assert a.model == str(tiny_model)
    flags = shlex.split(line)
    for flag, field, value in (("--tensor-parallel-size", "tensor_parallel_size", int),
                               ("--max-model-len", "max_model_len", int), ("--max-num-seqs", "max_num_seqs", int),
                               ("--max-num-batched-tokens", "max_num_batched_tokens", int),
                               ("--gpu-memory-utilization", "gpu_memory_utilization", float),
                               ("--dtype", "dtype", str)):
        if flag in flags:
            assert getattr(a, field) == value(flags[flags.index(flag) + 1]), flag
    noop = [f for f in ("--trust-remote-code", "--enable-auto-tool-choice", "--tool-call-parser",
                        "--disable-log-requests") if f in flags]
    assert sorted(n.split()[0] for n in notes) == sorted(noop)
    assert all("changes nothing here" in n for n in notes)


def _refused(*argv: str, module: str = "mini_vllm.cli") -> str:
    proc = subprocess.run([sys.executable, "-m", module, *argv], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, (argv, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    return lines[0]


def test_values_we_cannot_honour_are_refused_in_one_line(tiny_model):
    m = str(tiny_model)
    assert "--quantization awq: not supported" in _refused("serve", m, "--quantization", "awq")
    assert "--kv-cache-dtype fp8" in _refused("serve", m, "--kv-cache-dtype", "fp8")
    assert "--pipeline-parallel-size 2" in _refused("serve", m, "-pp", "2")
    assert "unrecognized arguments: --no-such-flag" in _refused("serve", m, "--no-such-flag")
    assert "no model given" in _refused("--port", "8000", module="mini_vllm.entrypoints.openai.api_server")
    assert "MINI_VLLM_FUSED_OPS" in subprocess.run(
        [sys.executable, "-m", "mini_vllm.cli", "serve", m], capture_output=True, text=True, timeout=60,
        env={**os.environ, "MINI_VLLM_FUSED_OPS": "perhaps"}).stderr


@pytest.fixture(scope="module")
def long_tiny(tiny_model, tmp_path_factory) -> Path:
    """The tiny model with 32768 positions: the guides ask for 8192 and 32768 tokens of context."""
    model = tmp_path_factory.mktemp("long") / "tiny-gpt-oss"
    shutil.copytree(tiny_model, model)
    cfg = json.loads((model / "config.json").read_text())
    cfg["max_position_embeddings"] = 32768
    (model / "config.json").write_text(json.dumps(cfg))
    return model


def _run(argv: list[str], logs: Path, env: dict[str, str] | None = None) -> ServerProcess:
    log_path = logs / f"cli-{free_port()}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
    port = argv[argv.index("--port") + 1]
    srv = ServerProcess(proc, f"http://127.0.0.1:{port}", log_path)
    srv.wait_ready(240)
    return srv


def _complete(srv: ServerProcess, model: str) -> dict:
    r = httpx.post(srv.url + "/v1/completions", json={"model": model, "prompt": "Hello", "max_tokens": 4,
                                                       "ignore_eos": True}, timeout=120)
    assert r.status_code == 200, r.text
    return r.json()


def test_slurm_guides_api_server_line_runs(long_tiny, logs):
    """python3 -m vllm.entrypoints.openai.api_server ... -> python -m mini_vllm.entrypoints.openai.api_server ..."""
    argv = ours(SLURM, str(long_tiny))
    argv[argv.index("--port") + 1] = str(free_port())       # 8001 may be taken on a shared machine
    argv += ["--kv-cache-memory-gb", "0.05", "--device", "cpu", "--enable-log-requests"]
    srv = _run([sys.executable, "-m", "mini_vllm.entrypoints.openai.api_server", *argv], logs,
               env={"VLLM_LOG_STATS_INTERVAL": "1"})
    try:
        assert _complete(srv, long_tiny.name)["usage"]["completion_tokens"] == 4
        for flag in ("--trust-remote-code", "--disable-log-requests"):
            assert f"{flag} accepted: changes nothing here" in srv.log()
        assert "prompt tokens" in srv.log()                           # --enable-log-requests
        deadline = time.monotonic() + 15
        while "Avg generation throughput" not in srv.log() and time.monotonic() < deadline:
            _complete(srv, long_tiny.name)
        assert "Avg generation throughput" in srv.log()              # the periodic stats line
    finally:
        srv.stop()


def test_eks_manifest_line_runs_as_vllm_serve(long_tiny, logs):
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["vllm"] == "mini_vllm.cli:vllm_main"
    model = long_tiny
    argv = ours(EKS_MANIFEST, str(model))
    argv[argv.index("--tensor-parallel-size") + 1] = "2"   # the tiny model has 2 KV heads (see docstring)
    port = str(free_port())
    argv += ["--host", "127.0.0.1", "--port", port, "--device", "cpu", "--kv-cache-memory-gb", "0.05"]
    srv = _run([sys.executable, "-c", "import sys; from mini_vllm.cli import vllm_main; sys.argv[0] = 'vllm'; "
                "vllm_main()", *argv], logs)
    try:
        models = httpx.get(srv.url + "/v1/models").json()["data"]
        assert models[0]["max_model_len"] == 32768
        assert _complete(srv, model.name)["usage"]["completion_tokens"] == 4
        for flag in ("--enable-auto-tool-choice", "--tool-call-parser", "--trust-remote-code"):
            assert f"{flag} accepted: changes nothing here" in srv.log()
    finally:
        srv.stop()


def test_tokenizer_from_another_directory(tiny_model, tmp_path):
    """--tokenizer DIR: the model directory needs no tokenizer of its own."""
    from mini_vllm.engine.llm_engine import LLMEngine
    from mini_vllm.entrypoints.serve import fetched_engine_args
    from mini_vllm.sampling_params import SamplingParams

    weights, tok = tmp_path / "weights", tmp_path / "tok"
    shutil.copytree(tiny_model, weights)
    tok.mkdir()
    for f in weights.glob("tokenizer*"):
        shutil.move(str(f), tok / f.name)
    shutil.copy(weights / "generation_config.json", tok)
    ns = parse_args(["serve", str(weights), "--tokenizer", str(tok), "--device", "cpu", "--kv-cache-memory-gb", "0.02"])
    args = fetched_engine_args(ns, "test")
    assert (args.model, args.tokenizer) == (str(weights), str(tok))
    eng = LLMEngine(args)
    [out] = eng.generate([eng.tokenizer.encode("Hello", add_special_tokens=False)],
                         SamplingParams(max_tokens=3, temperature=0, ignore_eos=True))
    assert len(out.outputs[0].token_ids) == 3
    assert parse_args(["serve", str(weights), "--hf-token"]).hf_token is True       # the hub's stored login


# The issue's list of `vllm serve` flags (issue 13), each with a value as a deployment would pass it.
ISSUE_FLAGS = ("--host 127.0.0.1 --port 8123 --served-model-name gpt-oss-20b oss -tp 2 --dtype half --max-model-len 32k "
               "--max-num-seqs 7 --max-num-batched-tokens 2048 --gpu-memory-utilization 0.8 --enable-prefix-caching "
               "--enable-chunked-prefill --trust-remote-code --enable-auto-tool-choice --tool-call-parser openai "
               "--reasoning-parser openai_gptoss --disable-log-requests --enable-log-requests --disable-log-stats "
               "--kv-cache-dtype auto --quantization mxfp4 --download-dir /cache --revision v2 --tokenizer /tok "
               "--hf-token hf_x --seed 3 --api-key sk-1 --max-logprobs 5 --async-scheduling --uvicorn-log-level warning "
               "--generation-config vllm --swap-space 4")
NOOP = ("--trust-remote-code", "--enable-auto-tool-choice", "--tool-call-parser", "--reasoning-parser",
        "--enable-chunked-prefill", "--swap-space", "--disable-log-requests")


@pytest.mark.parametrize("entry", ["serve MODEL", "serve --model MODEL", "api_server --model MODEL"])
def test_every_flag_of_the_common_set_is_accepted(entry):
    words = entry.replace("MODEL", "openai/gpt-oss-20b").split() + shlex.split(ISSUE_FLAGS)
    ns = api_server.parse_args(words[1:]) if words[0] == "api_server" else parse_args(words)
    notes = check_supported(ns)
    assert sorted(n.split()[0] for n in notes) == sorted(NOOP)             # one line per no-op flag
    a = engine_args(ns)
    assert (a.model, a.served_model_name, a.tensor_parallel_size, a.dtype, a.max_model_len, a.max_num_seqs,
            a.max_num_batched_tokens, a.gpu_memory_utilization, a.enable_prefix_caching, a.seed, a.max_logprobs,
            a.async_scheduling) == ("openai/gpt-oss-20b", "gpt-oss-20b", 2, "float16", 32000, 7, 2048, 0.8, True, 3, 5, True)
    assert (ns.host, ns.port, ns.served_model_name, ns.download_dir, ns.revision, ns.tokenizer, ns.hf_token,
            ns.api_key, ns.enable_log_requests, ns.disable_log_stats, ns.uvicorn_log_level, ns.generation_config) == \
        ("127.0.0.1", 8123, ["gpt-oss-20b", "oss"], "/cache", "v2", "/tok", "hf_x", "sk-1", True, True, "warning", "vllm")


def test_docs_name_every_flag():
    """docs/server.md says what each accepted flag does here: every option `--help` lists is named there."""
    from mini_vllm.entrypoints.flags import Parser, add_server_flags

    p = Parser()
    add_server_flags(p)
    doc = (ROOT / "docs" / "server.md").read_text()
    options = [o for a in p._actions for o in a.option_strings if o.startswith("--") and not o.startswith("--no-")]
    missing = [o for o in options if o != "--help" and f"`{o}" not in doc and f"`--[no-]{o[2:]}" not in doc
               and f" {o}" not in doc and f"/{o}" not in doc]
    assert not missing, missing


def test_generation_config_max_logprobs_and_log_flags_over_http(tiny_model, tmp_path, logs):
    """--generation-config DIR: its sampling settings fill what a request leaves unset (the request's own win);
    --max-logprobs N: more is a 400 naming the field; --disable-log-stats: no periodic stats line;
    --uvicorn-log-level warning: no access-log lines."""
    gen = tmp_path / "gen"
    gen.mkdir()
    (gen / "generation_config.json").write_text(json.dumps({"temperature": 0.0, "max_new_tokens": 5}))
    argv = ["serve", str(tiny_model), "--host", "127.0.0.1", "--port", str(free_port()), "--device", "cpu",
            "--kv-cache-memory-gb", "0.05", "--generation-config", str(gen), "--max-logprobs", "3",
            "--disable-log-stats", "--uvicorn-log-level", "warning"]
    srv = _run([sys.executable, "-m", "mini_vllm.cli", *argv], logs, env={"VLLM_LOG_STATS_INTERVAL": "0.2"})
    model = tiny_model.name

    def post(path: str, **body) -> httpx.Response:
        return httpx.post(srv.url + path, json={"model": model, **body}, timeout=120)

    try:
        texts = {post("/v1/completions", prompt="Hello", max_tokens=8).json()["choices"][0]["text"] for _ in range(2)}
        assert len(texts) == 1                                           # no temperature given: 0 from the file
        sea = Tokenizer.from_pretrained(tiny_model).encode(" sea", add_special_tokens=False)[0]
        chat = post("/v1/chat/completions", messages=[{"role": "user", "content": "Hi"}], logit_bias={sea: 100}).json()
        assert chat["usage"]["completion_tokens"] == 5                   # no max_tokens: max_new_tokens from the file
        assert post("/v1/completions", prompt="Hello", max_tokens=2, ignore_eos=True).json()["usage"][
            "completion_tokens"] == 2
        assert len(post("/v1/completions", prompt="Hi", max_tokens=2, logprobs=3).json()["choices"][0][
            "logprobs"]["top_logprobs"][0]) >= 1
        for path, body, param in (("/v1/completions", {"prompt": "Hi", "logprobs": 4}, "logprobs"),
                                  ("/v1/chat/completions", {"messages": [{"role": "user", "content": "Hi"}],
                                                            "logprobs": True, "top_logprobs": 4}, "top_logprobs")):
            r = post(path, max_tokens=2, **body)
            assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text
            assert "--max-logprobs 3" in r.json()["error"]["message"]
        time.sleep(0.5)
        post("/v1/completions", prompt="Hello", max_tokens=2)
        log = srv.log()
        assert "default sampling settings from" in log and "'temperature': 0.0" in log
        assert "Avg generation throughput" not in log and "POST /v1/completions" not in log
    finally:
        srv.stop()
    assert "no generation_config.json there" in _refused("serve", str(tiny_model), "--generation-config",
                                                         str(tmp_path / "nowhere"), "--device", "cpu")
