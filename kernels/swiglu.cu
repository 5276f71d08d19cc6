// GPT-OSS clamped SwiGLU on the experts' interleaved gate_up output.
//
// Why its own kernel: gate and linear halves are interleaved column by column (even = gate, odd =
// linear) in the checkpoint, so a generic SiLU-and-mul does not apply. Semantics (transformers'
// GptOssExperts._apply_gate): g = min(g, limit); l = clamp(l, -limit, limit); out = g*sigmoid(alpha*g)*(l+1),
// fp32 math, one rounding. Each thread reads 16 bytes (4 gate/linear pairs) and writes 8 bytes.
#include "mv_common.cuh"

namespace {

constexpr int kThreads = 256;

__global__ void swiglu_kernel(__nv_bfloat16* __restrict__ out, const __nv_bfloat16* __restrict__ gate_up,
                              int64_t total_quads, float alpha, float limit) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total_quads;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    float f[8];
    mv::unpack8(reinterpret_cast<const mv::Bf16x8*>(gate_up)[i], f);
    float r[4];
#pragma unroll
    for (int p = 0; p < 4; ++p) {
      const float g = fminf(f[2 * p], limit);
      const float l = fminf(fmaxf(f[2 * p + 1], -limit), limit);
      r[p] = g / (1.f + __expf(-alpha * g)) * (l + 1.f);
    }
    uint2 o;
    reinterpret_cast<__nv_bfloat162*>(&o)[0] = __floats2bfloat162_rn(r[0], r[1]);
    reinterpret_cast<__nv_bfloat162*>(&o)[1] = __floats2bfloat162_rn(r[2], r[3]);
    reinterpret_cast<uint2*>(out)[i] = o;
  }
}

}  // namespace

// gate_up: [rows, 2*inter] interleaved (contiguous); out: [rows, inter] (contiguous).
MV_API int mv_swiglu_clamped(void* out, const void* gate_up, int64_t rows, int64_t inter, float alpha, float limit,
                             void* stream) {
  if (rows < 0 || inter <= 0 || inter % 4 != 0) return cudaErrorInvalidValue;
  if (!mv::aligned16(gate_up) || (reinterpret_cast<uintptr_t>(out) & 7u)) return cudaErrorMisalignedAddress;
  const int64_t quads = rows * inter / 4;
  if (quads == 0) return cudaSuccess;
  const int blocks = static_cast<int>(quads / kThreads + 1 < 132 * 16 ? quads / kThreads + 1 : 132 * 16);
  swiglu_kernel<<<blocks, kThreads, 0, mv::as_stream(stream)>>>(
      static_cast<__nv_bfloat16*>(out), static_cast<const __nv_bfloat16*>(gate_up), quads, alpha, limit);
  return mv::launch_status();
}
