"""The engine side of constrained decoding: an llguidance matcher per sequence, masks on the logits.

A sequence whose SamplingParams carry a grammar gets its own LLMatcher when added. Each step, before
sampling, its row of logits keeps only the tokens the matcher allows (on a copy: the logits may be a CUDA
graph's output buffer); after sampling the chosen token is fed to the matcher. The tokenizer's llguidance
form is built once per tokenizer (~1 s for o200k, milliseconds for the tiny model) and shared.
"""
from __future__ import annotations

import threading
import weakref
from typing import Any

import numpy as np
import torch

_LOCK = threading.Lock()
_CACHE: "weakref.WeakKeyDictionary[Any, Any]" = weakref.WeakKeyDictionary()


def ll_tokenizer(tokenizer: Any) -> Any:
    """llguidance's view of our Tokenizer (its tokenizer.json, vocabulary size and stop ids), cached."""
    import llguidance

    with _LOCK:
        ll = _CACHE.get(tokenizer)
        if ll is None:
            # one end token is enough for "the grammar is complete, stop here" (older llguidance takes one);
            # the engine stops on all of the tokenizer's end ids anyway
            eos = list(tokenizer.eos_token_ids)
            ll = llguidance.LLTokenizer(tokenizer.raw.to_str(), n_vocab=int(tokenizer.vocab_size),
                                        eos_token=eos[0] if eos else None)
            _CACHE[tokenizer] = ll
        return ll


def grammar_error(grammar: str, tokenizer: Any) -> str | None:
    """None if llguidance can use `grammar` with this tokenizer, else its first line of complaint."""
    import llguidance

    msg = llguidance.LLMatcher.validate_grammar(grammar, ll_tokenizer(tokenizer))
    if not msg or msg.startswith("WARNING"):
        return None
    first = msg.strip().splitlines()[0]
    return first.split(": ", 1)[1] if first.startswith("at ") and ": " in first else first


def new_matcher(grammar: str, tokenizer: Any) -> Any:
    import llguidance

    m = llguidance.LLMatcher(ll_tokenizer(tokenizer), grammar, log_level=0)
    if m.is_error():
        raise ValueError(f"grammar: {m.get_error()}")
    return m


def allowed_mask(matcher: Any, vocab: int) -> torch.Tensor:
    """Bool [vocab]: the tokens `matcher` allows next (ids past the tokenizer's vocabulary: never)."""
    bits = np.unpackbits(np.frombuffer(matcher.compute_bitmask(), dtype=np.uint8), bitorder="little")
    out = np.zeros(vocab, dtype=bool)
    n = min(vocab, bits.shape[0])
    out[:n] = bits[:n].astype(bool)
    return torch.from_numpy(out)


def apply_masks(logits: torch.Tensor, matchers: list[Any]) -> torch.Tensor:
    """A copy of logits with each constrained row's disallowed tokens at -inf (rows without a matcher: as is)."""
    out = logits.clone()
    vocab = logits.shape[-1]
    for i, m in enumerate(matchers):
        if m is not None:
            out[i].masked_fill_(~allowed_mask(m, vocab).to(logits.device), float("-inf"))
    return out
