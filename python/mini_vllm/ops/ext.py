"""Find and load mini-vLLM's CUDA extension modules (plain C ABI) with ctypes.

Why ctypes and not torch extensions: our modules export `extern "C"` functions that take raw device
pointers and a cudaStream_t, so they build without torch headers, their build-cache keys do not depend
on torch, and an object compiled against one torch version loads under another (docs/kernels.md).

Search order for `<module>.so`: the directory given to `use_ext_dir` (the engine passes
`--ext-dir`, EngineArgs.ext_dir, whose default is $MINI_VLLM_EXT_DIR), <repo>/build/ext, then next to this package
(`mini_vllm/_ext/`, where images install them). Problems are reported, never hidden: a missing module,
a module that fails to load, or one whose cubins target another GPU architecture raise ExtensionError
with the paths searched and what was found; `try_load` turns that into None for the CPU fallback.

What a module supports (FA3: head_dim, dtype, query heads with sinks, splits) is data the build wrote
into `manifest.json` beside it (build_config.yaml `kernels.<set>.runtime`); `Module.runtime` carries it,
so the server checks calls against the build it loaded and never reads the builder's config.
"""
from __future__ import annotations

import ctypes
import functools
import json
import struct
from dataclasses import dataclass, field
from pathlib import Path

_P, _I32, _I64, _F32 = ctypes.c_void_p, ctypes.c_int, ctypes.c_int64, ctypes.c_float
_SZ = ctypes.c_size_t

# Exported symbol -> (restype, argtypes). Every function returns a cudaError_t as int.
SIGNATURES: dict[str, dict[str, tuple[object, list[object]]]] = {
    "mini_vllm_kernels": {
        "mv_kernels_probe": (_I32, []),
        "mv_rms_norm": (_I32, [_P, _P, _P, _I64, _I64, _F32, _P]),
        "mv_fused_add_rms_norm": (_I32, [_P, _P, _P, _I64, _I64, _F32, _P]),
        "mv_rope_neox": (_I32, [_P, _P, _P, _P, _I64, _I32, _I32, _I32, _I64, _I64, _P]),
        "mv_write_kv_cache": (_I32, [_P, _P, _P, _P, _P, _I64, _I32, _I32, _I64, _I64, _P]),
        "mv_swiglu_clamped": (_I32, [_P, _P, _I64, _I64, _F32, _F32, _P]),
        "mv_dequant_mxfp4": (_I32, [_P, _P, _P, _I64, _P]),
        "mv_route_topk": (_I32, [_P, _P, _P, _I64, _I32, _I32, _P]),
        # x, w, bias, indices, weights, num_tokens, x_stride, hidden, num_experts, top_k, stream
        "mv_router_topk": (_I32, [_P, _P, _P, _P, _P, _I64, _I64, _I32, _I32, _I32, _P]),
        # q, k, v, q_out, k_cache, v_cache, positions, slot_mapping, cos_sin, num_tokens, hq, hk, head_dim,
        # q_stride, k_stride, v_stride, q_out_stride, stream
        "mv_rope_write_kv": (_I32, [_P, _P, _P, _P, _P, _P, _P, _P, _P, _I64, _I32, _I32, _I32, _I64, _I64, _I64,
                                    _I64, _P]),
        # act, act_stride, x, x_stride, blocks, scales, bias, ids, tokens, top_k, 2I, hidden, alpha, limit,
        # k_split, big_scale, stream
        "mv_moe_gemv_gate_up": (_I32, [_P, _I64, _P, _I64, _P, _P, _P, _P, _I32, _I32, _I32, _I32, _F32, _F32, _I32,
                                       _I32, _P]),
        # rows, rows_stride, act, act_stride, blocks, scales, bias, ids, topk_w, tokens, top_k, hidden, inter,
        # k_split, big_scale, stream
        "mv_moe_gemv_down": (_I32, [_P, _I64, _P, _I64, _P, _P, _P, _P, _P, _I32, _I32, _I32, _I32, _I32, _I32, _P]),
        # out, residual, rows, weight, num_tokens, rows_per_token, hidden, eps, stream
        "mv_moe_sum_add_rms_norm": (_I32, [_P, _P, _P, _P, _I64, _I64, _I64, _F32, _P]),
    },
    "mini_vllm_fa3": {
        "mv_fa3_probe": (_I32, []),
        "mv_fa3_last_error": (ctypes.c_char_p, []),
        "mv_fa3_workspace_bytes": (_SZ, [_I32, _I32, _I32, _I32, _I32]),
        "mv_fa3_fwd": (_I32, [
            _P, _P, _P, _P,            # out, q, k_cache, v_cache
            _P, _I32,                  # page_table, max_pages_per_seq
            _P, _P,                    # cu_seqlens_q, seqused_k
            _I32, _I32, _I32, _I32,    # batch, total_q, max_seqlen_q, max_seqlen_k
            _I32, _I32, _I32,          # num_heads_q, num_heads_kv, head_dim
            _I32, _I32,                # num_pages, page_size
            _F32, _I32, _I32,          # softmax_scale, causal, window_left
            _P, _I32,                  # sinks, num_splits
            _P, _SZ,                   # workspace, workspace_bytes
            _P, _P, _I32,              # sched, semaphore, sched_mode (scheduler metadata shared by layers)
            _P,                        # stream
        ]),
    },
}

CUDA_ERROR_NAMES = {1: "cudaErrorInvalidValue", 2: "cudaErrorMemoryAllocation", 98: "cudaErrorInvalidDeviceFunction",
                    209: "cudaErrorNoKernelImageForDevice", 716: "cudaErrorMisalignedAddress",
                    700: "cudaErrorIllegalAddress"}


class ExtensionError(RuntimeError):
    """A module is missing, does not load, or was built for another GPU architecture."""


class KernelError(RuntimeError):
    """A kernel entry point returned a CUDA error code."""


_EXT_DIR: Path | None = None      # searched first; set by use_ext_dir


def use_ext_dir(path: str | Path | None) -> None:
    """Search `path` first for extension modules (None: only the default places); forgets earlier loads."""
    global _EXT_DIR
    new = Path(path) if path else None
    if new != _EXT_DIR:
        _EXT_DIR = new
        try_load.cache_clear()


def search_dirs() -> list[Path]:
    dirs = []
    if _EXT_DIR is not None:
        dirs.append(_EXT_DIR)
    dirs.append(Path(__file__).resolve().parents[3] / "build" / "ext")
    dirs.append(Path(__file__).resolve().parents[1] / "_ext")
    return dirs


def find_module(name: str) -> Path:
    tried = []
    for d in search_dirs():
        p = d / f"{name}.so"
        tried.append(str(p))
        if p.is_file():
            return p
    raise ExtensionError(f"extension module {name}.so not found (looked in: {', '.join(tried)}); "
                         f"build it with `invoke kernels` or pass --ext-dir (default $MINI_VLLM_EXT_DIR)")


def fatbin_archs(path: Path) -> set[str]:
    """GPU architectures ('sm_90', ...) of the cubins embedded in an ELF shared object's .nv_fatbin."""
    data = path.read_bytes()
    if data[:4] != b"\x7fELF" or data[4] != 2:
        raise ExtensionError(f"{path}: not a 64-bit ELF shared object")
    shoff = struct.unpack_from("<Q", data, 0x28)[0]
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    secs = [struct.unpack_from("<IIQQQQ", data, shoff + i * shentsize) for i in range(shnum)]
    strtab = secs[shstrndx][4]
    archs: set[str] = set()
    for name_off, _t, _f, _a, offset, size in secs:
        name = data[strtab + name_off:data.index(b"\0", strtab + name_off)]
        if name != b".nv_fatbin":
            continue
        pos, end = offset, offset + size
        while pos + 16 <= end:
            magic, _ver, hsize, fsize = struct.unpack_from("<IHHQ", data, pos)
            if magic != 0xBA55ED50:
                pos += 8
                continue
            p, stop = pos + hsize, pos + hsize + fsize
            while p + 32 <= stop:
                kind, _u, ehsize, esize = struct.unpack_from("<HHIQ", data, p)
                arch = struct.unpack_from("<I", data, p + 28)[0]
                archs.add(f"{'sm' if kind == 2 else 'compute'}_{arch}")
                p += ehsize + esize
            pos = stop
    return archs


# The runtime limits a module's manifest entry must carry (written by `invoke kernels`).
RUNTIME_KEYS: dict[str, tuple[str, ...]] = {
    "mini_vllm_fa3": ("head_dim", "dtype", "max_q_heads_with_sinks", "max_num_splits"),
}


def build_runtime(name: str, path: Path) -> dict:
    """The `runtime` entry of `name` in the manifest.json beside `path` ({} for modules that need none)."""
    mpath = Path(path).parent / "manifest.json"
    try:
        entry = json.loads(mpath.read_text()).get(name) or {}
    except (OSError, ValueError, AttributeError):
        entry = {}
    runtime = dict(entry.get("runtime") or {}) if isinstance(entry, dict) else {}
    missing = [k for k in RUNTIME_KEYS.get(name, ()) if k not in runtime]
    if missing:
        raise ExtensionError(f"{mpath}: no {', '.join(missing)} for {name} (what the build supports; written by "
                             "`invoke kernels` since it installs the module): rebuild with `invoke kernels`")
    return runtime


@dataclass
class Module:
    """A loaded extension: its path, the ctypes library, the cubin architectures it carries, and what
    the build says it supports (its manifest entry's `runtime`)."""

    name: str
    path: Path
    lib: ctypes.CDLL
    archs: frozenset[str]
    runtime: dict = field(default_factory=dict)

    def fn(self, symbol: str):
        return getattr(self.lib, symbol)

    def call(self, symbol: str, *args) -> None:
        """Call an entry point; a non-zero cudaError_t becomes a KernelError naming it."""
        rc = getattr(self.lib, symbol)(*args)
        if rc:
            detail = ""
            if hasattr(self.lib, "mv_fa3_last_error") and symbol.startswith("mv_fa3"):
                detail = ": " + (self.lib.mv_fa3_last_error() or b"").decode(errors="replace")
            raise KernelError(f"{symbol} failed with CUDA error {rc} ({CUDA_ERROR_NAMES.get(rc, 'see cudaError_t')})"
                              f"{detail}")


def load(name: str, path: Path | None = None, device_arch: str | None = None) -> Module:
    """Load `name` (or the file at `path`), declare its signatures, check its architecture.

    device_arch ('sm_90'): when given, a module with no cubin for it is rejected before any call.
    """
    path = Path(path) if path else find_module(name)
    if name not in SIGNATURES:
        raise ExtensionError(f"unknown extension module {name!r}; known: {sorted(SIGNATURES)}")
    archs = frozenset(fatbin_archs(path))
    runtime = build_runtime(name, path)
    if device_arch and device_arch not in archs:
        raise ExtensionError(f"{path} was built for {sorted(archs) or 'no GPU architecture'}, "
                             f"this GPU is {device_arch}; rebuild with `invoke kernels`")
    try:
        lib = ctypes.CDLL(str(path))
    except OSError as exc:
        raise ExtensionError(f"{path}: cannot be loaded: {exc}") from exc
    missing = [s for s in SIGNATURES[name] if not hasattr(lib, s)]
    if missing:
        raise ExtensionError(f"{path}: missing symbols {missing} (stale or foreign build?)")
    for sym, (res, args) in SIGNATURES[name].items():
        f = getattr(lib, sym)
        f.restype, f.argtypes = res, args
    return Module(name, path, lib, archs, runtime)


def current_device_arch() -> str | None:
    """'sm_90' for the current CUDA device, None without CUDA."""
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    major, minor = torch.cuda.get_device_capability()
    return f"sm_{major}{minor}"


@functools.lru_cache(maxsize=None)
def try_load(name: str) -> Module | None:
    """The module ready for this GPU, or None (no CUDA, not built, wrong arch) - the CPU fallback.

    The reason is kept in `load_errors` so callers and `mini-vllm` diagnostics can show it.
    """
    arch = current_device_arch()
    if arch is None:
        load_errors[name] = "no CUDA device"
        return None
    try:
        mod = load(name, device_arch=arch)
        probe = "mv_kernels_probe" if name == "mini_vllm_kernels" else "mv_fa3_probe"
        mod.call(probe)
        return mod
    except (ExtensionError, KernelError) as exc:
        load_errors[name] = str(exc)
        return None


load_errors: dict[str, str] = {}
