#!/usr/bin/env bash
# The lead's one-call driver on the GPU machine (no internet; repo copied there, .carry/ carried in:
# .carry/mirror = source mirror from bench/make_source_mirror.py, .carry/wheels = wheels the device
# lacks, .carry/ext = modules from an earlier call). Steps are named on the command line:
#   bash bench/device_run.sh env build check triton moetune gptoss fa3peer tp
# Logs and JSON go to $OUT (comes back to the lead's machine).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD/python:/tmp/pydeps" OUT="${OUT:-/tmp/out}"
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export MINI_VLLM_EXT_DIR="$PWD/build/ext"
mkdir -p "$OUT" build/ext
step() { echo; echo "=== $1 ($(date +%T))"; }
for s in "$@"; do
  case "$s" in
    env)
      step env
      nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
      nproc; free -g | head -2; gcc --version | head -1; nvcc --version | tail -1
      python3 -c "import torch, triton, transformers; print('torch', torch.__version__, 'triton', triton.__version__, 'transformers', transformers.__version__)"
      # only what the device lacks (fastapi, uvicorn, pydantic, opentelemetry-api ...): the carried wheels,
      # no deps resolved, into /tmp/pydeps (on PYTHONPATH ahead of site-packages)
      if [ -d .carry/wheels ]; then
        python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/pydeps .carry/wheels/*.whl 2>&1 | grep -v "root user" | tail -3
        python3 -c "import fastapi, uvicorn, pydantic; print('server deps ok:', fastapi.__version__, uvicorn.__version__, pydantic.__version__)"
      fi ;;
    build)
      step "build: cold invoke kernels (FA3 GPT-OSS subset + ours)"
      if [ -d .carry/ext ] && ls .carry/ext/*.so >/dev/null 2>&1; then
        cp .carry/ext/* build/ext/ && echo "using carried modules: $(ls build/ext)"
      else
        bash bench/device_build_fa3.sh --mirror .carry/mirror --jobs 16 --sample 0 --ext-dir "$PWD/build/ext" 2>&1 | tee "$OUT/build.log"
        ls -la build/ext
        tar -C build -czf "$OUT/ext.tgz" ext && ls -la "$OUT/ext.tgz"
      fi ;;
    check)
      step "check: our kernels + FA3 vs torch references"
      timeout 120 python3 bench/device_check_kernels.py --ext-dir build/ext --json "$OUT/kernels.json" 2>&1 | tee "$OUT/check.log" ;;
    gemv)
      step "gemv: decode GEMV kernels vs cuBLAS / Triton"
      timeout 240 python3 bench/device_check_gemv.py --json "$OUT/gemv.json" 2>&1 | tee "$OUT/gemv.log" ;;
    triton)
      step "triton: MoE + paged attention"
      timeout 180 python3 bench/device_bench_triton.py 2>&1 | tee "$OUT/triton.log" ;;
    gptoss)
      step "gpt-oss-20b shapes: ${GPTOSS_PARTS:-check decode}"
      [ -f "$OUT/moe_configs.json" ] && export MINI_VLLM_MOE_CONFIGS="$OUT/moe_configs.json" && echo "using tuned $MINI_VLLM_MOE_CONFIGS"
      python3 bench/device_bench_gptoss.py ${GPTOSS_PARTS:-check decode} 2>&1 | tee "$OUT/gptoss.log" ;;
    moetune)
      step "MoE tuning sweep"
      timeout 300 python3 bench/device_tune_moe.py 2>&1 | tee "$OUT/moetune.log" ;;
    tp)
      step "tensor parallel: TP=1 vs TP=${TP_SIZES:-1,2} on the 20b-shaped checkpoint"
      python3 bench/make_gptoss_shaped.py /tmp/gptoss-20b-shaped --layers 24
      python3 bench/device_bench_tp.py --model /tmp/gptoss-20b-shaped --tp "${TP_SIZES:-1,2}" 2>&1 | tee "$OUT/tp.log" ;;
    fa3peer)
      step "peer: sample of the other FA3 sm90 units"
      bash bench/device_build_fa3.sh --mirror .carry/mirror --jobs 16 --sample 16 2>&1 | tee "$OUT/fa3peer.log" ;;
    *)
      if [ -f "bench/device_step_$s.sh" ]; then step "$s"; bash "bench/device_step_$s.sh"; else echo "unknown step $s"; fi ;;
  esac
done
