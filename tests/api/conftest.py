"""One real `mini-vllm serve` process on the tiny GPT-OSS checkpoint, shared by the API tests."""
from __future__ import annotations

import sys
from pathlib import Path

import httpx
import openai
import pytest

from mini_vllm.model.tiny import write_tiny_checkpoint

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # tests/: server_process.py
from server_process import ServerProcess, start_server  # noqa: E402

from api_helpers import FAULT_AFTER, FAULT_MARKER, MAX_MODEL_LEN, MODEL

SERVER_FLAGS = ("--max-model-len", str(MAX_MODEL_LEN), "--kv-cache-memory-gb", "0.05", "--max-num-seqs", "128",
                "--disable-uvicorn-access-log", "--device", "cpu")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    return write_tiny_checkpoint(tmp_path_factory.mktemp("models") / MODEL)


@pytest.fixture(scope="session")
def logs(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("server-logs")


@pytest.fixture(scope="session")
def server(tiny_model, logs) -> ServerProcess:
    # test-only fault injection: prompts starting with FAULT_MARKER fail inside the engine (test_faults.py)
    fault = ",".join(map(str, FAULT_MARKER)) + f"@{FAULT_AFTER}"
    srv = start_server(tiny_model, *SERVER_FLAGS, "--test-fault-prompt", fault, log_dir=logs)
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="session")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0, timeout=60)


@pytest.fixture(scope="session")
def http(server) -> httpx.Client:
    with httpx.Client(base_url=server.url, timeout=60) as c:
        yield c
