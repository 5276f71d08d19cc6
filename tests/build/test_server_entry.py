"""The builder makes the tiny model through the server's own entry, as a process (never an import)."""
from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from build_helpers import ROOT
from minibuild.config import load_config
from minibuild.server_entry import ServerEntryError, write_tiny_model


def _digests(d: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.iterdir())}


def test_one_path_writes_the_tiny_model(tmp_path: Path) -> None:
    from mini_vllm.model.tiny import write_tiny_checkpoint   # (the test may import both sides)

    cfg = load_config(ROOT / "build_config.yaml")
    a, written = write_tiny_model(cfg, tmp_path / "a")
    assert written and (a / "config.json").is_file() and (a / "model.safetensors").is_file()
    from_the_server = write_tiny_checkpoint(tmp_path / "b")   # the same bytes as the server's own function
    assert _digests(a) == _digests(from_the_server)
    before = (a / "config.json").stat().st_mtime_ns
    assert write_tiny_model(cfg, a, force=False) == (a, False)             # present: left alone
    assert (a / "config.json").stat().st_mtime_ns == before


def test_a_failing_entry_is_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(ServerEntryError) as ei:
        write_tiny_model(load_config(ROOT / "build_config.yaml"), blocker / "tiny")
    msg = str(ei.value)
    assert "mini_vllm.model.tiny" in msg and "\n" not in msg and "exited 1" in msg
