"""Per-sequence incremental detokenisation and stop conditions.

Text grows through tokenizers' DecodeStream (handles UTF-8 split across tokens, special tokens), so a
step costs O(1) per sequence instead of re-decoding the whole output. Stop strings are searched only
in the freshly decoded tail; while a sequence runs, the last (longest stop - 1) characters are held
back from streaming so that a stop string split over tokens is never sent half.
"""
from __future__ import annotations

from tokenizers.decoders import DecodeStream

from mini_vllm.engine.sequence import Sequence, Status
from mini_vllm.model.tokenizer import Tokenizer


def start(seq: Sequence) -> None:
    seq.decoder = DecodeStream(skip_special_tokens=seq.params.skip_special_tokens)


def append_token(seq: Sequence, token_id: int, tokenizer: Tokenizer, eos_ids: frozenset[int],
                 max_model_len: int, at: int | None = None) -> None:
    """Add a sampled token: update the text and finish the sequence if a stop condition hits.

    `at`: the token's index when it is already in token_ids as a placeholder (async scheduling, where a
    newer placeholder may follow it: a stop drops those). Runs once per sequence per step, so attributes
    are read once into locals."""
    ids = seq.token_ids
    if at is None:
        ids.append(token_id)
        _check_stop(seq, token_id, tokenizer, eos_ids, max_model_len, len(ids))
    else:
        ids[at] = token_id
        _check_stop(seq, token_id, tokenizer, eos_ids, max_model_len, at + 1)
        if seq.status is Status.FINISHED and len(ids) > at + 1:
            del ids[at + 1:]


def _check_stop(seq: Sequence, token_id: int, tokenizer: Tokenizer, eos_ids: frozenset[int], max_model_len: int,
                n: int) -> None:
    """Detokenise the token; finish the sequence (n tokens long) if a stop condition hits."""
    p = seq.params
    piece = seq.decoder.step(tokenizer.raw, token_id) if token_id < tokenizer.vocab_size else None
    if piece:
        prev_len = len(seq.text)
        seq.text += piece
        stop = p.stop
        if stop:
            tail_from = max(0, prev_len - max(len(s) for s in stop) + 1)
            hit = _find_stop(seq.text, tail_from, stop)
            if hit is not None:
                pos, s = hit
                seq.text = seq.text[:pos + len(s)] if p.include_stop_str_in_output else seq.text[:pos]
                seq.finish("stop", s)
                return
    if token_id in p.stop_token_ids:
        seq.finish("stop", token_id)
    elif not p.ignore_eos and token_id in eos_ids:
        seq.finish("stop", None)
    elif n - seq.num_prompt_tokens >= seq.max_tokens or n >= max_model_len:
        seq.finish("length")


def _find_stop(text: str, start: int, stops: list[str]) -> tuple[int, str] | None:
    best: tuple[int, str] | None = None
    for s in stops:
        if not s:
            continue
        i = text.find(s, start)
        if i >= 0 and (best is None or i < best[0]):
            best = (i, s)
    return best


def visible_text_len(seq: Sequence) -> int:
    """How much of seq.text may be streamed now."""
    if seq.finish_reason is not None or not seq.params.stop:
        return len(seq.text)
    return max(seq.sent_text_len, len(seq.text) - (max(len(s) for s in seq.params.stop) - 1))
