"""The harmony special tokens, looked up by name in the model's tokenizer (never hard-coded ids).

gpt-oss's o200k_harmony vocabulary has them at fixed ids, but a tiny test model or a re-trained
vocabulary may not: reading them from the tokenizer keeps render and parse correct for both.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


class TokenizerLike(Protocol):
    """The slice of the engine's tokenizer that harmony needs."""

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]: ...

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str: ...

    def token_to_id(self, token: str) -> int | None: ...


SPECIAL_NAMES = ("start", "end", "message", "channel", "return", "call", "constrain")


@dataclass(frozen=True)
class HarmonyTokens:
    """Ids of <|start|>, <|end|>, <|message|>, <|channel|>, <|return|>, <|call|>, <|constrain|>."""

    start: int
    end: int
    message: int
    channel: int
    return_: int
    call: int
    constrain: int

    @classmethod
    def from_tokenizer(cls, tokenizer: TokenizerLike) -> "HarmonyTokens":
        ids: dict[str, int] = {}
        missing = []
        for name in SPECIAL_NAMES:
            tid = tokenizer.token_to_id(f"<|{name}|>")
            if tid is None:
                missing.append(f"<|{name}|>")
            else:
                ids["return_" if name == "return" else name] = tid
        if missing:
            raise ValueError(f"tokenizer lacks the harmony special tokens {missing}: not a GPT-OSS tokenizer")
        return cls(**ids)

    @property
    def stop_ids(self) -> list[int]:
        """Generation of one assistant turn ends on <|return|> (answer) or <|call|> (tool call)."""
        return [self.return_, self.call]

    @property
    def all_ids(self) -> frozenset[int]:
        return frozenset((self.start, self.end, self.message, self.channel, self.return_, self.call,
                          self.constrain))
