// GPT-OSS rotary embedding (NeoX halves, YaRN-scaled frequencies) applied to q and k in place.
//
// Why this shape: the Python side precomputes one fp32 cos/sin cache [max_pos, head_dim] = [cos | sin]
// with YaRN's inverse frequencies and attention scaling (mscale) already folded in, exactly as
// transformers' GptOssRotaryEmbedding produces them; the kernel only gathers a row per token and
// rotates: x1' = x1*cos - x2*sin, x2' = x2*cos + x1*sin over the two halves of each head. q and k are
// addressed through a token stride, so they can be views into the fused qkv projection output.
// One block per token; the cos/sin row is staged in shared memory and reused by every head.
#include "mv_common.cuh"

namespace {

constexpr int kThreads = 128;

__device__ __forceinline__ void rotate_heads(__nv_bfloat16* base, int num_heads,
                                             int half, const float* cos_s, const float* sin_s) {
  const int nvec = half / 4;  // each thread rotates 4 pairs: two 8-byte loads, two 8-byte stores
  for (int w = threadIdx.x; w < num_heads * nvec; w += blockDim.x) {
    const int h = w / nvec, j = (w % nvec) * 4;
    __nv_bfloat16* x1p = base + static_cast<int64_t>(h) * 2 * half + j;
    __nv_bfloat16* x2p = x1p + half;
    uint2 a = *reinterpret_cast<const uint2*>(x1p), b = *reinterpret_cast<const uint2*>(x2p);
    auto* ah = reinterpret_cast<__nv_bfloat162*>(&a);
    auto* bh = reinterpret_cast<__nv_bfloat162*>(&b);
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      float2 x1 = __bfloat1622float2(ah[i]), x2 = __bfloat1622float2(bh[i]);
      const float c0 = cos_s[j + 2 * i], c1 = cos_s[j + 2 * i + 1];
      const float s0 = sin_s[j + 2 * i], s1 = sin_s[j + 2 * i + 1];
      ah[i] = __floats2bfloat162_rn(x1.x * c0 - x2.x * s0, x1.y * c1 - x2.y * s1);
      bh[i] = __floats2bfloat162_rn(x2.x * c0 + x1.x * s0, x2.y * c1 + x1.y * s1);
    }
    *reinterpret_cast<uint2*>(x1p) = a;
    *reinterpret_cast<uint2*>(x2p) = b;
  }
}

__global__ void rope_neox_kernel(__nv_bfloat16* __restrict__ q, __nv_bfloat16* __restrict__ k,
                                 const int64_t* __restrict__ positions, const float* __restrict__ cos_sin,
                                 int num_q_heads, int num_kv_heads, int head_dim, int64_t q_stride,
                                 int64_t k_stride) {
  extern __shared__ float cs[];  // head_dim floats: cos[half] | sin[half]
  const int64_t t = blockIdx.x;
  const int64_t pos = positions[t];
  const float* row = cos_sin + pos * head_dim;
  for (int i = threadIdx.x; i < head_dim; i += blockDim.x) cs[i] = row[i];
  __syncthreads();
  const int half = head_dim / 2;
  rotate_heads(q + t * q_stride, num_q_heads, half, cs, cs + half);
  rotate_heads(k + t * k_stride, num_kv_heads, half, cs, cs + half);
}

}  // namespace

// q: [num_tokens, num_q_heads, head_dim] at token stride q_stride (elements), heads contiguous;
// k likewise. positions: int64 [num_tokens], each < max_pos of cos_sin_cache (fp32 [max_pos, head_dim]).
MV_API int mv_rope_neox(void* q, void* k, const int64_t* positions, const float* cos_sin_cache, int64_t num_tokens,
                        int num_q_heads, int num_kv_heads, int head_dim, int64_t q_stride, int64_t k_stride,
                        void* stream) {
  if (num_tokens < 0 || head_dim <= 0 || head_dim % 8 != 0 || head_dim > 1024 || num_q_heads < 0 ||
      num_kv_heads < 0 || q_stride % 4 != 0 || k_stride % 4 != 0)
    return cudaErrorInvalidValue;
  if ((reinterpret_cast<uintptr_t>(q) & 7u) || (reinterpret_cast<uintptr_t>(k) & 7u)) return cudaErrorMisalignedAddress;
  if (num_tokens == 0) return cudaSuccess;
  rope_neox_kernel<<<static_cast<unsigned>(num_tokens), kThreads, head_dim * sizeof(float), mv::as_stream(stream)>>>(
      static_cast<__nv_bfloat16*>(q), static_cast<__nv_bfloat16*>(k), positions, cos_sin_cache, num_q_heads,
      num_kv_heads, head_dim, q_stride, k_stride);
  return mv::launch_status();
}
