"""Read tensors (or just one rank's slice of them) from a safetensors model directory.

Handles the published layouts: a single `model.safetensors`, or shards listed in
`model.safetensors.index.json`. Slices are read through safetensors' lazy `get_slice`, so a
tensor-parallel rank never materialises the parts of a tensor it does not hold.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open


class CheckpointReader:
    def __init__(self, model_dir: str | Path):
        self.dir = Path(model_dir)
        index = self.dir / "model.safetensors.index.json"
        if index.is_file():
            weight_map: dict[str, str] = json.loads(index.read_text())["weight_map"]
        else:
            files = sorted(self.dir.glob("*.safetensors"))
            if not files:
                raise FileNotFoundError(f"{self.dir}: no *.safetensors weights")
            weight_map = {}
            for f in files:
                with safe_open(f, framework="pt") as h:
                    weight_map.update({k: f.name for k in h.keys()})
        self.weight_map = weight_map
        self._handles: dict[str, object] = {}

    def _file(self, name: str):
        try:
            fname = self.weight_map[name]
        except KeyError:
            raise KeyError(f"{self.dir}: checkpoint has no tensor {name!r}") from None
        h = self._handles.get(fname)
        if h is None:
            h = safe_open(self.dir / fname, framework="pt")
            self._handles[fname] = h
        return h

    def has(self, name: str) -> bool:
        return name in self.weight_map

    def get(self, name: str, dim: int | None = None, start: int = 0, end: int | None = None) -> torch.Tensor:
        """The tensor, or its [start:end) slice along `dim`."""
        h = self._file(name)
        if dim is None:
            return h.get_tensor(name)
        sl = h.get_slice(name)
        idx = [slice(None)] * len(sl.get_shape())
        idx[dim] = slice(start, end)
        return sl[tuple(idx)]

    def close(self) -> None:
        self._handles.clear()
