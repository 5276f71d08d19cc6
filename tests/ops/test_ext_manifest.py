"""The server learns what an extension build supports from the manifest.json beside it (never the builder's
config): FA3's runtime limits are required there, and a build without them is refused with what to do."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from mini_vllm.ops import ext

LIMITS = {"head_dim": 64, "dtype": "bfloat16", "max_q_heads_with_sinks": 64, "max_num_splits": 256}


def test_runtime_limits_are_read_from_the_manifest(tmp_path: Path) -> None:
    so = tmp_path / "mini_vllm_fa3.so"
    (tmp_path / "manifest.json").write_text(json.dumps({"mini_vllm_fa3": {"runtime": LIMITS}}))
    assert ext.build_runtime("mini_vllm_fa3", so) == LIMITS
    assert ext.build_runtime("mini_vllm_kernels", so) == {}          # needs none


@pytest.mark.parametrize("manifest", [None, "{not json", {"mini_vllm_fa3": {"sha256": "x"}},
                                      {"mini_vllm_fa3": {"runtime": {"head_dim": 64}}}])
def test_a_build_without_its_limits_is_refused(tmp_path: Path, manifest) -> None:  # type: ignore[no-untyped-def]
    if manifest is not None:
        (tmp_path / "manifest.json").write_text(manifest if isinstance(manifest, str) else json.dumps(manifest))
    with pytest.raises(ext.ExtensionError, match="max_num_splits.*rebuild with `invoke kernels`"):
        ext.build_runtime("mini_vllm_fa3", tmp_path / "mini_vllm_fa3.so")


def test_the_build_config_declares_what_the_loader_requires() -> None:
    from minibuild.config import load_config   # (tests may read both sides; the packages never do)

    fa3 = load_config().kernels["fa3"]
    assert set(ext.RUNTIME_KEYS[fa3.module]) == set(fa3.runtime)
