"""A real byte-level BPE tokenizer carrying the harmony special tokens, for hand-built sequences.

Built with the `tokenizers` library (the same one the engine loads tokenizer.json with), trained on a
few lines, so that multi-byte characters split across tokens and specials sit at non-GPT-OSS ids.
"""
from __future__ import annotations

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

SPECIALS = ["<|endoftext|>", "<|return|>", "<|constrain|>", "<|channel|>", "<|start|>", "<|end|>",
            "<|message|>", "<|call|>"]
CORPUS = [
    "The weather in Paris is sunny today. Let me check the location first.",
    "analysis commentary final assistant user system developer functions to=functions.get_weather json",
    '{"location": "Paris", "unit": "celsius"} The answer is 42. héllo wörld 日本語 🙂',
]


class BPETokenizer:
    """encode/decode/token_to_id with the engine tokenizer's signatures."""

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
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(CORPUS, trainer)
    return BPETokenizer(tok)
