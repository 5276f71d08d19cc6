"""The tokenizer the API and the engine share: a thin wrapper over a model directory's tokenizer.json.

Reads stop ids from generation_config.json (and config.json), so harmony's <|return|>/<|call|> are
end-of-sequence for every consumer without anyone hard-coding an id.
"""
from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Tokenizer as _HFTokenizer


class Tokenizer:
    def __init__(self, raw: _HFTokenizer, eos_token_ids: list[int]):
        self.raw = raw
        self.eos_token_ids = eos_token_ids
        self.vocab_size = raw.get_vocab_size(with_added_tokens=True)

    @classmethod
    def from_pretrained(cls, model_dir: str | Path) -> "Tokenizer":
        d = Path(model_dir)
        path = d / "tokenizer.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: missing (the model directory needs a tokenizer.json)")
        raw = _HFTokenizer.from_file(str(path))
        eos: list[int] = []
        for name in ("generation_config.json", "config.json"):
            f = d / name
            if f.is_file():
                v = json.loads(f.read_text()).get("eos_token_id")
                for i in ([v] if isinstance(v, int) else (v or [])):
                    if i not in eos:
                        eos.append(int(i))
        return cls(raw, eos)

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return self.raw.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return self.raw.decode(ids, skip_special_tokens=skip_special_tokens)

    def token_to_id(self, token: str) -> int | None:
        return self.raw.token_to_id(token)

    def id_to_token(self, token_id: int) -> str | None:
        return self.raw.id_to_token(token_id)
