"""KV cache blocks: allocation, ref counts, and the prefix cache over full blocks.

A full block is identified by a hash chain (hash of the previous block's hash and this block's token
ids), so equal prefixes map to equal blocks. Freed blocks keep their hash and sit in an LRU free list:
a later request with the same prefix revives them; allocation takes the least recently freed first.
The block's token ids are stored and compared on a hit, so a hash collision can never serve wrong KV.
"""
from __future__ import annotations

from collections import OrderedDict

from mini_vllm.engine.block_tables import BlockTableArray
from mini_vllm.engine.sequence import Sequence


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True,
                 max_blocks_per_seq: int | None = None):
        """max_blocks_per_seq: also mirror block tables in a numpy array (`tables`) that wide."""
        self.num_blocks, self.block_size = num_blocks, block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.ref_count = [0] * num_blocks
        self.block_hash: list[int | None] = [None] * num_blocks
        self.block_tokens: list[tuple[int, ...] | None] = [None] * num_blocks
        self.hash_to_block: dict[int, int] = {}
        self.free: OrderedDict[int, None] = OrderedDict((i, None) for i in range(num_blocks))
        self.queries = 0     # prompt tokens looked up in the prefix cache (cumulative)
        self.hits = 0        # of which served from it
        self.tables = BlockTableArray(max_blocks_per_seq) if max_blocks_per_seq else None

    # ---- accounting ----------------------------------------------------------------------------
    @property
    def num_free(self) -> int:
        return len(self.free)

    def usage(self) -> float:
        return 1.0 - len(self.free) / self.num_blocks if self.num_blocks else 0.0

    @staticmethod
    def _chain(prev: int | None, tokens: tuple[int, ...]) -> int:
        return hash((prev, tokens))

    # ---- allocation ----------------------------------------------------------------------------
    def _take_free(self) -> int:
        bid, _ = self.free.popitem(last=False)
        h = self.block_hash[bid]
        if h is not None and self.hash_to_block.get(h) == bid:
            del self.hash_to_block[h]
        self.block_hash[bid] = self.block_tokens[bid] = None
        self.ref_count[bid] = 1
        return bid

    def _cached_prefix(self, seq: Sequence) -> list[int]:
        """Blocks holding a prefix of seq's tokens (never all of them: the last token is always computed)."""
        if not self.enable_prefix_caching:
            return []
        bs, found, prev = self.block_size, [], None
        for i in range((len(seq) - 1) // bs):
            tokens = tuple(seq.token_ids[i * bs:(i + 1) * bs])
            h = self._chain(prev, tokens)
            bid = self.hash_to_block.get(h)
            if bid is None or self.block_tokens[bid] != tokens:
                break
            found.append(bid)
            prev = h
        return found

    def allocate(self, seq: Sequence) -> bool:
        """Give a waiting seq blocks for all its tokens, reusing cached ones. False if they don't fit."""
        assert not seq.block_table
        cached = self._cached_prefix(seq)
        revive = sum(1 for b in cached if self.ref_count[b] == 0)
        need = -(-len(seq) // self.block_size) - len(cached)
        if need + revive > len(self.free):
            return False
        for bid in cached:
            if self.ref_count[bid] == 0:
                del self.free[bid]
            self.ref_count[bid] += 1
        seq.block_table = cached + [self._take_free() for _ in range(need)]
        if self.tables is not None:
            self.tables.write(seq)
        seq.num_computed_tokens = len(cached) * self.block_size
        seq.num_hashed_blocks = len(cached)
        if seq.req.num_cached_tokens == 0 and seq.index == 0:
            seq.req.num_cached_tokens = seq.num_computed_tokens
        self.queries += len(seq)
        self.hits += seq.num_computed_tokens
        return True

    def ensure(self, seq: Sequence, num_tokens: int) -> bool:
        """Make room for the seq's first num_tokens tokens; False (nothing taken) if blocks ran out."""
        need = -(-num_tokens // self.block_size) - len(seq.block_table)
        if need > len(self.free):
            return False
        if need > 0:
            start = len(seq.block_table)
            for _ in range(need):
                seq.block_table.append(self._take_free())
            if self.tables is not None:
                self.tables.write(seq, start)
        return True

    def free_seq(self, seq: Sequence) -> None:
        for bid in reversed(seq.block_table):
            self.ref_count[bid] -= 1
            if self.ref_count[bid] == 0:
                self.free[bid] = None       # most recently freed last: reused last
        if self.tables is not None:
            self.tables.release(seq)
        seq.block_table = []
        seq.num_computed_tokens = 0
        seq.num_hashed_blocks = 0

    def register_full_blocks(self, seq: Sequence) -> None:
        """Enter the seq's newly computed full blocks into the prefix cache."""
        if not self.enable_prefix_caching:
            return
        bs = self.block_size
        full = seq.num_computed_tokens // bs
        i = seq.num_hashed_blocks
        if i >= full:
            return
        prev = self.block_hash[seq.block_table[i - 1]] if i > 0 else None
        for i in range(i, full):
            bid = seq.block_table[i]
            tokens = tuple(seq.token_ids[i * bs:(i + 1) * bs])
            h = self._chain(prev, tokens)
            if self.block_hash[bid] is None:
                self.block_hash[bid], self.block_tokens[bid] = h, tokens
                self.hash_to_block.setdefault(h, bid)
            prev = h
        seq.num_hashed_blocks = full

    def reset_prefix_cache(self) -> None:
        for bid in self.free:
            self.block_hash[bid] = self.block_tokens[bid] = None
        self.hash_to_block = {h: b for h, b in self.hash_to_block.items() if self.ref_count[b] > 0}
