"""Real nvcc builds of our CUDA sources for sm_90a, and the ctypes loader's behaviour on what they make.

Nothing CUDA can run here; what can be checked is checked: every kernel unit compiles with the flags in
build_config.yaml, the linked module exports exactly the C ABI python/mini_vllm/ops/ext.py declares, its
cubins are sm_90, ctypes loads it, the loader rejects a foreign architecture and a missing module with a
clear message, and our FA3 wrapper compiles against the pinned fork and references only the template
instances that the units listed in build_config.yaml provide.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import tarfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from mini_vllm.ops import ext
from minibuild.config import read_document

ROOT = Path(__file__).resolve().parents[2]
NVCC = os.environ.get("MINI_VLLM_NVCC") or shutil.which("nvcc")
MIRRORS = Path("/work/.mirror")
pytestmark = [pytest.mark.needs_nvcc, pytest.mark.skipif(NVCC is None, reason="nvcc not installed")]


def _nvcc_args(kset: dict, include_dirs: list[str]) -> list[str]:
    args = list(kset["flags"]) + [f"-D{d}" for d in kset["defines"]] + [f"-I{d}" for d in include_dirs]
    for g in kset["gencode"]:
        args += ["-gencode", g]
    return args


def _compile(src: Path, obj: Path, args: list[str]) -> None:
    proc = subprocess.run([NVCC, *args, "-c", str(src), "-o", str(obj)], capture_output=True, text=True)
    assert proc.returncode == 0, f"nvcc failed on {src}:\n{proc.stderr[-4000:]}"


@pytest.fixture(scope="module")
def kernels_so(tmp_path_factory) -> Path:
    kset = read_document()["kernels"]["ours"]
    out = tmp_path_factory.mktemp("ours")
    args = _nvcc_args(kset, [str(ROOT / d) for d in kset["include_dirs"]])
    objs = [out / (Path(s).stem + ".o") for s in kset["sources"]]
    with ThreadPoolExecutor(max_workers=2) as pool:
        list(pool.map(lambda so: _compile(ROOT / so[0], so[1], args), zip(kset["sources"], objs)))
    so = out / f"{kset['module']}.so"
    proc = subprocess.run([NVCC, "-shared", *kset["link_flags"], *[x for g in kset["gencode"] for x in ("-gencode", g)],
                           *map(str, objs), "-o", str(so)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return so


def test_module_exports_exactly_the_declared_c_abi(kernels_so):
    nm = subprocess.run(["nm", "-D", "--defined-only", str(kernels_so)], capture_output=True, text=True, check=True)
    exported = {line.split()[-1] for line in nm.stdout.splitlines() if line.split()[-2:-1] == ["T"]}
    mv = {s for s in exported if s.startswith("mv_")}
    assert mv == set(ext.SIGNATURES["mini_vllm_kernels"])


def test_cubins_are_sm90_and_ctypes_loads_them(kernels_so):
    assert ext.fatbin_archs(kernels_so) == {"sm_90"}
    mod = ext.load("mini_vllm_kernels", kernels_so, device_arch="sm_90")
    assert mod.fn("mv_rms_norm").argtypes[-1] is ext.ctypes.c_void_p
    # argument checks run on the host, before any CUDA call: bad sizes come back as cudaErrorInvalidValue
    assert mod.fn("mv_rms_norm")(None, None, None, 1, 7, 1e-5, None) == 1
    assert mod.fn("mv_route_topk")(None, None, None, 1, 32, 9, None) == 1
    with pytest.raises(ext.KernelError, match="cudaErrorInvalidValue"):
        mod.call("mv_swiglu_clamped", None, None, 1, 6, 1.702, 7.0, None)
    # the fused kernels: sizes they cannot take, and pointers off their 16-byte alignment
    router = mod.fn("mv_router_topk")  # x, w, bias, ids, weights, T, x_stride, hidden, E, k, stream
    assert router(16, 16, None, None, None, 0, 2880, 2880, 32, 4, None) == 0
    assert router(16, 16, None, None, None, 1, 2884, 2884, 32, 4, None) == 1      # hidden % 8
    assert router(16, 16, None, None, None, 1, 2880, 2880, 257, 4, None) == 1     # > 256 experts
    assert router(16, 16, None, None, None, 1, 2880, 2880, 32, 9, None) == 1      # k > 8
    assert router(8, 16, None, None, None, 1, 2880, 2880, 32, 4, None) == 716     # misaligned x
    rope_kv = mod.fn("mv_rope_write_kv")  # q, k, v, q_out, kc, vc, pos, slots, cos_sin, T, hq, hk, d, strides x4
    ptrs, shape = (16, 16, 16, 16, 16, 16, None, None, None), (64, 8, 64)
    assert rope_kv(*ptrs, 0, *shape, 5120, 5120, 5120, 4096, None) == 0
    assert rope_kv(*ptrs, 1, *shape, 5120, 5120, 5124, 4096, None) == 1                       # v stride % 8
    assert rope_kv(*ptrs, 1, *shape, 5120, 5120, 5120, 4098, None) == 1                       # q_out stride % 4
    assert rope_kv(*ptrs, 1, 64, 8, 60, 5120, 5120, 5120, 4096, None) == 1                    # head_dim % 8
    assert rope_kv(16, 16, 8, *ptrs[3:], 1, *shape, 5120, 5120, 5120, 4096, None) == 716      # v misaligned
    assert rope_kv(*ptrs[:3], 4, *ptrs[4:], 1, *shape, 5120, 5120, 5120, 4096, None) == 716   # q_out misaligned


def test_loader_rejects_foreign_arch_and_missing_module(kernels_so, tmp_path, monkeypatch):
    with pytest.raises(ext.ExtensionError, match=r"built for \['sm_90'\].*this GPU is sm_100"):
        ext.load("mini_vllm_kernels", kernels_so, device_arch="sm_100")
    # only this dir: a developer's own build/ext (which may hold the FA3 module) must not count here
    monkeypatch.setattr(ext, "search_dirs", lambda: [tmp_path])
    with pytest.raises(ext.ExtensionError, match=f"mini_vllm_fa3.so not found.*{tmp_path}.*invoke kernels"):
        ext.find_module("mini_vllm_fa3")
    bogus = tmp_path / "mini_vllm_kernels.so"
    bogus.write_bytes(b"not an elf")
    with pytest.raises(ext.ExtensionError, match="not a 64-bit ELF"):
        ext.load("mini_vllm_kernels", bogus)


def _extract(source: dict, subtree: str, dest: Path) -> Path:
    repo = MIRRORS / source["repo"].replace("/", "+") / "repo"
    if not repo.is_dir():
        pytest.skip(f"no local mirror of {source['repo']} at {repo}")
    dest.mkdir(parents=True, exist_ok=True)
    archive = dest / f"{subtree.replace('/', '_')}.tar"
    with archive.open("wb") as fh:
        subprocess.run(["git", "-C", str(repo), "archive", f"{source['commit']}:{subtree}", f"--prefix={subtree}/"],
                       stdout=fh, check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(dest, filter="data")
    return dest / subtree


def test_fa3_wrapper_compiles_and_needs_only_the_listed_units(tmp_path):
    cfg = read_document()
    kset, sources = cfg["kernels"]["fa3"], cfg["sources"]
    hopper = _extract(sources["fa3"], "hopper", tmp_path / "fa3")
    for patch in sources["fa3"].get("patches", []):   # as `invoke kernels` applies them
        subprocess.run(["patch", "-p1", "-s", "-f", "-d", str(hopper.parent), "-i", str(ROOT / patch)], check=True)
    cutlass = _extract(sources["cutlass"], "include", tmp_path / "cutlass")
    trees = {"fa3": hopper.parent, "cutlass": cutlass.parent}

    def resolve(d: str) -> str:
        if d.startswith("@"):
            name, _, sub = d[1:].partition("/")
            return str(trees[name] / sub)
        return str(ROOT / d)

    obj = tmp_path / "fa3_capi.o"
    _compile(ROOT / kset["extra_sources"][0], obj, _nvcc_args(kset, [resolve(d) for d in kset["include_dirs"]]) + ["-w"])
    nm = subprocess.run(["nm", "-C", "--undefined-only", str(obj)], capture_output=True, text=True, check=True).stdout
    needed = {re.sub(r"\s+", "", m) for m in re.findall(r"void (run_mha_fwd_(?:combine_)?<[^>]*>)", nm)}
    provided = set()
    for unit in kset["units"]:
        text = (trees["fa3"] / unit).read_text()
        provided |= {re.sub(r"\s+", "", m) for m in re.findall(r"template void (run_mha_fwd_(?:combine_)?<[^>]*>)", text)}
    assert needed, "the wrapper must call into FA3"
    assert needed <= provided, f"wrapper needs instances no listed unit builds: {needed - provided}"
    fwd_needed = {n for n in needed if "combine" not in n}
    assert len(fwd_needed) == 5 and "prepare_varlen_num_blocks" not in nm  # scheduler is called by the units
