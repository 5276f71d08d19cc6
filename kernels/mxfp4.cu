// MXFP4 -> bf16 dequantisation of GPT-OSS expert weights.
//
// Why: the checkpoint keeps experts as MXFP4 (4.25 bits/weight): per 32 values one 16-byte block of
// e2m1 nibbles (low nibble = element 2j, high = 2j+1; magnitudes [0,.5,1,1.5,2,3,4,6], bit 3 = sign)
// and one uint8 exponent scale (value = e2m1 * 2^(s-127)). This kernel expands [..., G, 16] + [..., G]
// into [..., G*32] bf16 for matmul paths that want bf16 weights; one thread per 32-value group:
// one 16-byte load, four 16-byte stores. Every product is exact in fp32 and rounds to bf16 like
// transformers' convert_moe_packed_tensors (which additionally transposes; we do not). Built with
// --use_fast_math, results below 2^-126 (scale bytes 0 and 1 only; never in real checkpoints) flush to 0.
#include "mv_common.cuh"

namespace {

constexpr int kThreads = 256;

// e2m1 -> fp32 in registers (a lookup table would be indexed dynamically and spill to local memory):
// exponent field e = bits 2..1, mantissa m = bit 0; e == 0: m * 0.5, else 2^(e-1) * (1 + m/2).
__device__ __forceinline__ float e2m1(unsigned nib) {
  const unsigned e = (nib >> 1) & 3u, m = nib & 1u;
  const float mag = e ? __uint_as_float(((e + 126u) << 23) | (m << 22)) : 0.5f * static_cast<float>(m);
  return (nib & 8u) ? -mag : mag;
}

__global__ void dequant_mxfp4_kernel(__nv_bfloat16* __restrict__ out, const uint8_t* __restrict__ blocks,
                                     const uint8_t* __restrict__ scales, int64_t groups) {
  for (int64_t g = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; g < groups;
       g += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const uint4 packed = reinterpret_cast<const uint4*>(blocks)[g];
    const float scale = ldexpf(1.f, static_cast<int>(scales[g]) - 127);
    const uint32_t words[4] = {packed.x, packed.y, packed.z, packed.w};
    auto* dst = reinterpret_cast<mv::Bf16x8*>(out + g * 32);
#pragma unroll
    for (int w = 0; w < 4; ++w) {  // 4 bytes -> 8 values -> one 16-byte store
      float f[8];
#pragma unroll
      for (int b = 0; b < 4; ++b) {
        const unsigned byte = (words[w] >> (8 * b)) & 0xffu;
        f[2 * b] = e2m1(byte & 0xfu) * scale;
        f[2 * b + 1] = e2m1(byte >> 4) * scale;
      }
      dst[w] = mv::pack8(f);
    }
  }
}

}  // namespace

// blocks: uint8 [groups, 16]; scales: uint8 [groups]; out: bf16 [groups, 32]. All contiguous.
MV_API int mv_dequant_mxfp4(void* out, const void* blocks, const void* scales, int64_t groups, void* stream) {
  if (groups < 0) return cudaErrorInvalidValue;
  if (!mv::aligned16(out) || !mv::aligned16(blocks)) return cudaErrorMisalignedAddress;
  if (groups == 0) return cudaSuccess;
  const int64_t want = (groups + kThreads - 1) / kThreads;
  const int nblocks = static_cast<int>(want < 132 * 32 ? want : 132 * 32);
  dequant_mxfp4_kernel<<<nblocks, kThreads, 0, mv::as_stream(stream)>>>(
      static_cast<__nv_bfloat16*>(out), static_cast<const uint8_t*>(blocks), static_cast<const uint8_t*>(scales),
      groups);
  return mv::launch_status();
}
