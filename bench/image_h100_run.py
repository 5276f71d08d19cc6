"""The h100 server image, unpacked, run here (no GPU): what its Python sees, what its libraries need,
and whether its own `mini-vllm serve` answers the official openai client on the tiny model (CPU).

ldd: the image's own loader lists each library's dependencies (`ld.so --list`, chroot), so the
answer is about the image, not this machine. Our kernel modules must resolve everything; only the
driver's libcuda.so.1 may be missing (the NVIDIA container toolkit mounts it on a GPU node). The
server's own loader (mini_vllm.ops.ext.load) then opens every module build/ext/manifest.json names.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "image"))

from image_helpers import free_port  # noqa: E402
from rootfs_run import run_in, serving, unpack  # noqa: E402

PROBE = r"""
import json, torch, triton, sysconfig, shutil
info = {"python": sysconfig.get_python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(), "triton": triton.__version__,
        "cuda_available": torch.cuda.is_available(), "cc": shutil.which("gcc"),
        "torch_lib": torch.__file__.rsplit("/", 1)[0] + "/lib"}
try:
    info["nccl"] = ".".join(map(str, torch.cuda.nccl.version()))
except Exception as exc:
    info["nccl"] = f"unavailable: {exc}"
# triton's own run-time compile path (C compiler on PATH + Python.h), as its CUDA launcher stubs use it
import importlib.util, inspect, os, tempfile
from triton.runtime.build import _build
d = tempfile.mkdtemp()
src = os.path.join(d, "probe.c")
open(src, "w").write('#include <Python.h>\nstatic struct PyModuleDef m = {PyModuleDef_HEAD_INIT, "probe", 0, -1, 0};\n'
                     'PyMODINIT_FUNC PyInit_probe(void) { return PyModule_Create(&m); }\n')
args = ["probe", src, d, [], [], []] + [[]] * (len(inspect.signature(_build).parameters) - 6)
spec = importlib.util.spec_from_file_location("probe", _build(*args))
spec.loader.exec_module(importlib.util.module_from_spec(spec))
info["triton_build_c_extension"] = "ok"
# the server's own loader takes every module the manifest names (ctypes, symbols, runtime entry; no GPU)
from mini_vllm.ops import ext
ext_dir = os.environ.get("MINI_VLLM_EXT_DIR", "/opt/mini-vllm/ext")
manifest = json.load(open(os.path.join(ext_dir, "manifest.json")))
info["ext_loaded"] = {n: sorted(ext.load(n, path=os.path.join(ext_dir, e["file"])).archs) for n, e in manifest.items()}
print(json.dumps(info))
"""

LDD = r"""
import glob, json, subprocess, sys
out = {}
for pattern in sys.argv[1:]:
    for lib in sorted(glob.glob(pattern)):
        r = subprocess.run(["/usr/lib64/ld-linux-x86-64.so.2", "--list", lib], capture_output=True, text=True)
        out[lib] = sorted({ln.split()[0] for ln in r.stdout.splitlines() if "not found" in ln})
print(json.dumps(out))
"""


def run_check(layout: Path, bundle: Path) -> dict[str, Any]:
    from mini_vllm.model.tiny import write_tiny_checkpoint

    rootfs, process = unpack(layout, "server", bundle)
    env = list(process["env"])
    res: dict[str, Any] = {"entrypoint": process["args"], "user": process["user"]}
    probe = run_in(rootfs, ["/usr/bin/python3", "-c", PROBE], env)
    if probe.returncode != 0:
        raise RuntimeError(f"python in the image failed: {probe.stderr[-2000:]}")
    res["inside"] = json.loads(probe.stdout.strip().splitlines()[-1])
    ext = next((e.split("=", 1)[1] for e in env if e.startswith("MINI_VLLM_EXT_DIR=")), "/opt/mini-vllm/ext")
    torch_lib = res["inside"]["torch_lib"]
    site = torch_lib.rsplit("/torch/", 1)[0]
    ldd = run_in(rootfs, ["/usr/bin/python3", "-c", LDD, f"{ext}/*.so", f"{torch_lib}/libtorch_cuda.so",
                          f"{site}/nvidia/*/lib/*.so*", f"{site}/triton/_C/*.so"], env)
    if ldd.returncode != 0:
        raise RuntimeError(f"ldd in the image failed: {ldd.stderr[-2000:]}")
    unresolved: dict[str, list[str]] = json.loads(ldd.stdout.strip().splitlines()[-1])
    res["ldd_checked"] = len(unresolved)
    res["ldd_ours"] = {k: v for k, v in unresolved.items() if k.startswith(ext)}
    res["ldd_unresolved"] = {k: v for k, v in unresolved.items() if v}
    res["ldd_only_libcuda_missing"] = all(set(v) <= {"libcuda.so.1"} for v in unresolved.values())
    model = write_tiny_checkpoint(bundle.parent / "tiny-model")
    with serving(rootfs, process, model, free_port(), bundle.parent / "server.log",
                 ["--device", "cpu", "--served-model-name", "tiny"], timeout=600) as base:
        from openai import OpenAI

        client = OpenAI(base_url=f"{base}/v1", api_key="unused")
        out = client.completions.create(model="tiny", prompt="Hello from the h100 image", max_tokens=8, temperature=0)
        chat = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=4)
        res["serve"] = {"completion_tokens": out.usage.completion_tokens, "finish": out.choices[0].finish_reason,
                        "chat_finish": chat.choices[0].finish_reason}
    return res
