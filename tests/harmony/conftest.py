"""The engine's own Tokenizer over the tiny GPT-OSS checkpoint's BPE (harmony specials at non-GPT-OSS
ids), for hand-built harmony sequences."""
from __future__ import annotations

import pytest

from mini_vllm.model.tiny import build_tokenizer
from mini_vllm.model.tokenizer import Tokenizer


@pytest.fixture(scope="session")
def tokenizer() -> Tokenizer:
    raw = build_tokenizer()
    return Tokenizer(raw, [raw.token_to_id("<|return|>")])
