"""The tiny GPT-OSS checkpoint's real tokenizer (byte-level BPE + the harmony specials, at non-GPT-OSS
ids), with the engine tokenizer's method signatures, for hand-built harmony sequences."""
from __future__ import annotations

import pytest
from tokenizers import Tokenizer

from mini_vllm.model.tiny import build_tokenizer


class BPETokenizer:
    def __init__(self, tok: Tokenizer) -> None:
        self.tok = tok

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return self.tok.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return self.tok.decode(ids, skip_special_tokens=skip_special_tokens)

    def token_to_id(self, token: str) -> int | None:
        return self.tok.token_to_id(token)


@pytest.fixture(scope="session")
def tokenizer() -> BPETokenizer:
    return BPETokenizer(build_tokenizer())
