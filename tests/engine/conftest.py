"""Fixtures for engine tests: the tiny checkpoint and engines built on it."""
from __future__ import annotations

from pathlib import Path

import pytest

from mini_vllm.engine.llm_engine import LLMEngine
from mini_vllm.engine_args import EngineArgs
from mini_vllm.model.tiny import write_tiny_checkpoint


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    return write_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "tiny-gpt-oss")


@pytest.fixture
def make_engine(tiny_dir):
    def make(**kw) -> LLMEngine:
        return LLMEngine(EngineArgs(model=str(tiny_dir), **kw))
    return make


@pytest.fixture(scope="session")
def texts() -> list[str]:
    return ["The quick brown fox", "Once upon a time, in a small village by the sea,",
            "User: What is the capital of France? Assistant:",
            "def add(a, b):\n    return a + b\n" * 3]
