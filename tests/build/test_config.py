"""build_config.yaml is read once, into frozen settings, with every environment override applied there."""
from __future__ import annotations

import ast
import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest

from build_helpers import ROOT
from minibuild.config import ConfigError, load_config, parse_config, read_document

YAML = ROOT / "build_config.yaml"


def test_defaults_are_typed_and_frozen(tmp_path: Path) -> None:
    cfg = load_config(YAML, environ={"XDG_CACHE_HOME": str(tmp_path)})
    assert cfg.store.root == tmp_path / "mini-vllm" and cfg.store.remote is None
    assert cfg.cluster.port == 8000 and cfg.cluster.state_dir == ROOT / "build/rollout"
    assert cfg.kernels["ours"].module == "mini_vllm_kernels" and cfg.kernels["fa3"].sources_used == ("cutlass", "fa3")
    assert cfg.sources["fa3"].commit.startswith("188be165") and cfg.images.select().name == "local"
    assert cfg.model.tiny_dir == ROOT / "build/models/tiny-gpt-oss" and cfg.cluster.api_key is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.cluster.port = 1  # type: ignore[misc]
    with pytest.raises(TypeError):
        cfg.kernels["x"] = cfg.kernels["ours"]  # type: ignore[index]


def test_every_environment_override_lands_in_one_place(tmp_path: Path) -> None:
    env = {"MINI_VLLM_CACHE": str(tmp_path / "c"), "MINI_VLLM_REMOTE_CACHE": "file:///r",
           "MINI_VLLM_MIRROR": str(tmp_path / "m"), "MINI_VLLM_NVCC": "/opt/nvcc", "MINI_VLLM_EXT_DIR": "/x/ext",
           "MINI_VLLM_IMAGE_PROFILE": "h100", "SOURCE_DATE_EPOCH": "1700000000", "MINI_VLLM_PORT": "9001",
           "MINI_VLLM_ROLLOUT_DIR": str(tmp_path / "roll"), "MINI_VLLM_API_KEY": "sk-test"}
    cfg = load_config(YAML, environ=env)
    assert (cfg.store.root, cfg.store.remote, cfg.store.root_from) == (tmp_path / "c", "file:///r", "$MINI_VLLM_CACHE")
    assert cfg.mirror_dir == tmp_path / "m" and cfg.toolchain.nvcc == "/opt/nvcc" and cfg.ext_dir == Path("/x/ext")
    assert cfg.images.profile == "h100" and cfg.images.epoch == 1700000000
    assert cfg.cluster.port == 9001 and cfg.cluster.state_dir == tmp_path / "roll" and cfg.cluster.api_key == "sk-test"
    assert "sk-test" not in repr(cfg)


@pytest.mark.parametrize("edit, env, named", [
    (lambda d: d["cluster"].update(port="eighty"), {}, "'cluster.port'"),
    (lambda d: d["sources"]["fa3"].pop("commit"), {}, "'sources.fa3.commit'"),
    (lambda d: d["kernels"]["ours"].update(sources=[]), {}, "'kernels.ours' lists no sources"),
    (lambda d: d["cluster"].update(verify="yes"), {}, "'cluster.verify' must be a mapping"),
    (lambda d: d["toolchain"].update(mem_reserve_gb=[1]), {}, "'toolchain.mem_reserve_gb'"),
    (lambda d: None, {"MINI_VLLM_PORT": "x"}, "$MINI_VLLM_PORT='x' is not valid (it overrides cluster.port)"),
    (lambda d: None, {"SOURCE_DATE_EPOCH": "soon"}, "$SOURCE_DATE_EPOCH"),
    (lambda d: None, {"MINI_VLLM_IMAGE_PROFILE": "gpu"}, "$MINI_VLLM_IMAGE_PROFILE: unknown image profile 'gpu' (have: local, h100, h100-registry)"),
])
def test_bad_values_name_the_key(edit, env, named) -> None:  # type: ignore[no-untyped-def]
    doc = read_document(YAML)
    edit(doc)
    with pytest.raises(ConfigError) as ei:
        parse_config(doc, ROOT, env)
    assert named in str(ei.value)


def test_a_bad_override_is_one_line_and_exit_1() -> None:
    env = {**os.environ, "MINI_VLLM_PORT": "http"}
    r = subprocess.run([str(Path(sys.executable).parent / "invoke"), "status"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 1
    assert "Traceback" not in r.stderr + r.stdout
    assert "MINI_VLLM_PORT" in r.stderr + r.stdout and len((r.stderr + r.stdout).strip().splitlines()) == 1


def _env_reads(tree: ast.AST) -> list[str]:
    """Names of environment variables a module reads (os.environ.get / os.environ[...] / os.getenv)."""
    names = []
    for node in ast.walk(tree):
        arg = None
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.args:
            f = ast.unparse(node.func)
            if f in ("os.environ.get", "os.getenv", "environ.get"):
                arg = node.args[0]
        elif isinstance(node, ast.Subscript) and ast.unparse(node.value) in ("os.environ", "environ"):
            arg = node.slice
        if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
            names.append(arg.value)
    return names


def test_no_builder_module_reads_our_knobs_from_the_environment() -> None:
    offenders = []
    for path in sorted((ROOT / "python/minibuild").rglob("*.py")):
        if path.parent.name == "config":
            continue
        for name in _env_reads(ast.parse(path.read_text())):
            if name.startswith("MINI_VLLM_") or name == "SOURCE_DATE_EPOCH":
                offenders.append(f"{path.relative_to(ROOT)} reads ${name}")
    assert offenders == []
