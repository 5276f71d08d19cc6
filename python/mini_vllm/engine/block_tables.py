"""The running sequences' block tables mirrored in one int32 numpy array, kept current as blocks move.

Why: the GPU step needs a step's block tables as one padded int32 [sequences, width] array. Building it
from Python lists costs a Python-int conversion per entry every step (256 sequences x 64 blocks is 16k
entries, ~0.3 ms); a table only changes when a block is added (once per block_size tokens), so the
BlockManager writes each change here as it happens, and a step gathers its rows with one numpy index.

Each sequence holding blocks owns a row (`Sequence.block_row`); entries past its table's length are 0,
which is what a padded table holds.
"""
from __future__ import annotations

import numpy as np

from mini_vllm.engine.sequence import Sequence


class BlockTableArray:
    def __init__(self, max_blocks_per_seq: int, rows: int = 64):
        self.array = np.zeros((max(1, rows), max(1, max_blocks_per_seq)), dtype=np.int32)
        self._free_rows = list(range(self.array.shape[0] - 1, -1, -1))   # pop() gives the lowest row

    def _fit(self, rows: int, cols: int) -> None:
        """Grow (doubling) so that `rows` rows and `cols` columns exist; existing contents stay."""
        r, c = self.array.shape
        if rows <= r and cols <= c:
            return
        nr, nc = max(r, rows if rows <= r else max(rows, 2 * r)), max(c, cols)
        grown = np.zeros((nr, nc), dtype=np.int32)
        grown[:r, :c] = self.array
        self.array = grown
        self._free_rows = list(range(nr - 1, r - 1, -1)) + self._free_rows

    def write(self, seq: Sequence, start: int = 0) -> None:
        """seq.block_table[start:] has changed (appended): copy it in, giving seq a row if it has none."""
        table = seq.block_table
        if seq.block_row < 0:
            if not self._free_rows:
                self._fit(self.array.shape[0] + 1, 0)
            seq.block_row = self._free_rows.pop()
            start = 0
        if len(table) > self.array.shape[1]:
            self._fit(0, len(table))
        self.array[seq.block_row, start:len(table)] = table[start:]

    def release(self, seq: Sequence) -> None:
        """seq gives its blocks back: zero its row (padding stays 0) and free the row."""
        row = seq.block_row
        if row < 0:
            return
        self.array[row, :len(seq.block_table)] = 0
        self._free_rows.append(row)
        seq.block_row = -1

    def gather(self, seqs: list[Sequence], width: int) -> np.ndarray:
        """The block tables of seqs (in that order), [len(seqs), width] int32, zero-padded / truncated."""
        rows = np.fromiter((s.block_row for s in seqs), dtype=np.intp, count=len(seqs))
        if width > self.array.shape[1]:
            self._fit(0, width)
        return self.array[rows, :width]
