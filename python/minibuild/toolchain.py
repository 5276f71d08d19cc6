"""The toolchain fingerprint that goes into every compile and link key.

Why these fields and no others: an object depends on the nvcc release, the host compiler (it compiles
the host side and supplies the system headers, which are therefore *not* hashed one by one) and the
target arch. torch's version, its C++11 ABI flag and the Python version matter only to objects that
include torch headers, so they are added only for kernel sets with `uses_torch: true`. Our modules
are a plain C ABI loaded with ctypes: objects built here (torch 2.13) and on the GPU machine
(torch 2.11) share keys and are interchangeable, which is what makes the cache portable.

Detection runs `nvcc --version` and `<cc> --version` (~20 ms) and is cached in the store's meta,
keyed by the binaries' path, size and mtime, so a no-op build does not spawn them.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from typing import Any

from .config import ToolchainConfig
from .actions import Input
from .store import Store


class ToolchainError(RuntimeError):
    """nvcc or the host compiler is missing or unusable; the message says which and how to fix."""


@dataclass(frozen=True)
class Toolchain:
    nvcc: str
    nvcc_version: str      # "13.0.88"
    host_cc: str
    host_version: str      # first line of `g++ --version`
    arch: str              # "sm_90a"
    ccbin: str = ""        # explicit -ccbin (toolchain.host_compiler), "" = nvcc's default

    @property
    def nvcc_release(self) -> str:
        return ".".join(self.nvcc_version.split(".")[:2])

    def inputs(self, uses_torch: bool) -> list[Input]:
        out = [Input("toolchain", "nvcc", self.nvcc_version), Input("toolchain", "host compiler", self.host_version),
               Input("toolchain", "arch", self.arch)]
        if uses_torch:
            out += [Input("toolchain", k, v) for k, v in torch_fingerprint().items()]
        return out


def _stat_sig(path: str) -> list[Any]:
    st = os.stat(path)
    return [path, st.st_size, st.st_mtime_ns]


def _which(name: str, what: str) -> str:
    found = name if os.path.isabs(name) else shutil.which(name)
    if not found or not os.access(found, os.X_OK):
        raise ToolchainError(f"{what} '{name}' not found (set toolchain.{'nvcc' if what == 'nvcc' else 'host_compiler'} "
                             "in build_config.yaml or MINI_VLLM_NVCC, or put it on PATH)")
    return os.path.realpath(found)


def detect(tc: ToolchainConfig, store: Store | None = None) -> Toolchain:
    nvcc = _which(tc.nvcc, "nvcc")
    host = _which(tc.host_compiler or "g++", "host compiler")
    arch = tc.arch
    sig = [_stat_sig(nvcc), _stat_sig(host), arch]
    if store is not None:
        hit = store.get_meta("toolchain", repr(sig))
        if hit:
            return Toolchain(**hit)
    try:
        nv = subprocess.run([nvcc, "--version"], capture_output=True, text=True, check=True).stdout
        hv = subprocess.run([host, "--version"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        raise ToolchainError(f"cannot run the toolchain: {exc}") from exc
    m = re.search(r"V(\d+\.\d+\.\d+)", nv) or re.search(r"release (\d+\.\d+)", nv)
    if not m:
        raise ToolchainError(f"cannot read the nvcc version from: {nv.strip()[-200:]}")
    result = Toolchain(nvcc=nvcc, nvcc_version=m.group(1), host_cc=host,
                       host_version=hv.splitlines()[0].strip() if hv else "unknown", arch=arch,
                       ccbin=host if tc.host_compiler else "")
    if store is not None:
        store.put_meta("toolchain", repr(sig), result.__dict__)
    return result


_TORCH: dict[str, str] | None = None


def torch_fingerprint() -> dict[str, str]:
    """torch version, C++11 ABI flag, Python version (only for sets that include torch headers)."""
    global _TORCH
    if _TORCH is None:
        code = "import torch,sys;print(torch.__version__);print(int(torch._C._GLIBCXX_USE_CXX11_ABI))"
        try:
            out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                 check=True).stdout.split()
        except (OSError, subprocess.CalledProcessError) as exc:
            raise ToolchainError(f"a kernel set has uses_torch: true but torch cannot be imported: {exc}") from exc
        _TORCH = {"torch": out[0], "cxx11 abi": out[1], "python": f"{sys.version_info[0]}.{sys.version_info[1]}"}
    return _TORCH
