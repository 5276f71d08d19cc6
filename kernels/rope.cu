// GPT-OSS rotary embedding (NeoX halves, YaRN-scaled frequencies): q and k rotated in place
// (mv_rope_neox), or - fused with the paged KV-cache write - q rotated into a contiguous q_out, k rotated
// in place and into its cache slot, v copied next to it (mv_rope_write_kv).
//
// Why this shape: the Python side precomputes one fp32 cos/sin cache [max_pos, head_dim] = [cos | sin]
// with YaRN's inverse frequencies and attention scaling (mscale) already folded in, exactly as
// transformers' GptOssRotaryEmbedding produces them; the kernel only gathers a row per token and
// rotates: x1' = x1*cos - x2*sin, x2' = x2*cos + x1*sin over the two halves of each head. q, k and v are
// addressed through a token stride, so they can be views into the fused qkv projection output.
// One block per token; the cos/sin row is staged in shared memory and reused by every head. The fused
// variant exists because at decode each launch costs 2-3 us of latency for ~10 KB of work; one launch
// per layer instead of three (rope, KV write, and the copy that made the strided q view of the qkv
// output contiguous for attention), and the rotated k goes straight to the cache (FA3 reads only it).
#include "mv_common.cuh"

namespace {

constexpr int kThreads = 128;

// Rotates num_heads heads of src (head_dim = 2*half, heads contiguous) into dst and, unless null, dst2
// (same layout; either may equal src). Each thread rotates 4 pairs: two 8-byte loads, 2-4 8-byte stores.
__device__ __forceinline__ void rotate_heads(const __nv_bfloat16* src, __nv_bfloat16* dst, __nv_bfloat16* dst2,
                                             int num_heads, int half, const float* cos_s, const float* sin_s) {
  const int nvec = half / 4;
  for (int w = threadIdx.x; w < num_heads * nvec; w += blockDim.x) {
    const int h = w / nvec, j = (w % nvec) * 4;
    const int64_t o1 = static_cast<int64_t>(h) * 2 * half + j, o2 = o1 + half;
    uint2 a = *reinterpret_cast<const uint2*>(src + o1), b = *reinterpret_cast<const uint2*>(src + o2);
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
    *reinterpret_cast<uint2*>(dst + o1) = a;
    *reinterpret_cast<uint2*>(dst + o2) = b;
    if (dst2 != nullptr) {
      *reinterpret_cast<uint2*>(dst2 + o1) = a;
      *reinterpret_cast<uint2*>(dst2 + o2) = b;
    }
  }
}

// The token's cos/sin row -> shared memory (head_dim floats: cos[half] | sin[half]).
__device__ __forceinline__ void stage_cos_sin(float* cs, const float* __restrict__ cos_sin, int64_t pos,
                                              int head_dim) {
  const float* row = cos_sin + pos * head_dim;
  for (int i = threadIdx.x; i < head_dim; i += blockDim.x) cs[i] = row[i];
  __syncthreads();
}

__global__ void rope_neox_kernel(__nv_bfloat16* __restrict__ q, __nv_bfloat16* __restrict__ k,
                                 const int64_t* __restrict__ positions, const float* __restrict__ cos_sin,
                                 int num_q_heads, int num_kv_heads, int head_dim, int64_t q_stride,
                                 int64_t k_stride) {
  extern __shared__ float cs[];
  const int64_t t = blockIdx.x;
  stage_cos_sin(cs, cos_sin, positions[t], head_dim);
  const int half = head_dim / 2;
  __nv_bfloat16* qt = q + t * q_stride;
  __nv_bfloat16* kt = k + t * k_stride;
  rotate_heads(qt, qt, nullptr, num_q_heads, half, cs, cs + half);
  rotate_heads(kt, kt, nullptr, num_kv_heads, half, cs, cs + half);
}

__global__ void rope_write_kv_kernel(const __nv_bfloat16* q, __nv_bfloat16* __restrict__ k,
                                     const __nv_bfloat16* __restrict__ v, __nv_bfloat16* q_out,
                                     __nv_bfloat16* __restrict__ k_cache,
                                     __nv_bfloat16* __restrict__ v_cache, const int64_t* __restrict__ positions,
                                     const int64_t* __restrict__ slot_mapping, const float* __restrict__ cos_sin,
                                     int num_q_heads, int num_kv_heads, int head_dim, int64_t q_stride,
                                     int64_t k_stride, int64_t v_stride, int64_t q_out_stride) {
  extern __shared__ float cs[];
  const int64_t t = blockIdx.x;
  const int64_t slot = slot_mapping[t];
  stage_cos_sin(cs, cos_sin, positions[t], head_dim);
  const int half = head_dim / 2;
  const int64_t row = static_cast<int64_t>(num_kv_heads) * head_dim;
  __nv_bfloat16* kt = k + t * k_stride;
  rotate_heads(q + t * q_stride, q_out + t * q_out_stride, nullptr, num_q_heads, half, cs, cs + half);
  // k is rotated in place too (same result as rope + write), and into its slot unless the slot is -1
  rotate_heads(kt, kt, slot >= 0 ? k_cache + slot * row : nullptr, num_kv_heads, half, cs, cs + half);
  if (slot >= 0)
    mv::copy_vec16(reinterpret_cast<mv::Bf16x8*>(v_cache + slot * row),
                   reinterpret_cast<const mv::Bf16x8*>(v + t * v_stride), static_cast<int>(row / 8));
}

bool bad_rope_args(int64_t num_tokens, int num_q_heads, int num_kv_heads, int head_dim, int64_t q_stride,
                   int64_t k_stride) {
  return num_tokens < 0 || head_dim <= 0 || head_dim % 8 != 0 || head_dim > 1024 || num_q_heads < 0 ||
         num_kv_heads < 0 || q_stride % 4 != 0 || k_stride % 4 != 0;
}

bool misaligned8(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 7u) != 0; }

}  // namespace

// q: [num_tokens, num_q_heads, head_dim] at token stride q_stride (elements), heads contiguous;
// k likewise. positions: int64 [num_tokens], each < max_pos of cos_sin_cache (fp32 [max_pos, head_dim]).
MV_API int mv_rope_neox(void* q, void* k, const int64_t* positions, const float* cos_sin_cache, int64_t num_tokens,
                        int num_q_heads, int num_kv_heads, int head_dim, int64_t q_stride, int64_t k_stride,
                        void* stream) {
  if (bad_rope_args(num_tokens, num_q_heads, num_kv_heads, head_dim, q_stride, k_stride))
    return cudaErrorInvalidValue;
  if (misaligned8(q) || misaligned8(k)) return cudaErrorMisalignedAddress;
  if (num_tokens == 0) return cudaSuccess;
  rope_neox_kernel<<<static_cast<unsigned>(num_tokens), kThreads, head_dim * sizeof(float), mv::as_stream(stream)>>>(
      static_cast<__nv_bfloat16*>(q), static_cast<__nv_bfloat16*>(k), positions, cos_sin_cache, num_q_heads,
      num_kv_heads, head_dim, q_stride, k_stride);
  return mv::launch_status();
}

// mv_rope_neox's rotation of q written to q_out (token stride q_out_stride; q_out may be q) and of k in
// place, then k (rotated) and v [num_tokens, num_kv_heads, head_dim] (token stride v_stride) written to
// k_cache/v_cache [num_slots, num_kv_heads, head_dim] at slot_mapping (int64; -1 = skip) - one launch.
// v and the caches 16-byte aligned, v_stride % 8 == 0; q/k/q_out as for mv_rope_neox.
MV_API int mv_rope_write_kv(const void* q, void* k, const void* v, void* q_out, void* k_cache, void* v_cache,
                            const int64_t* positions, const int64_t* slot_mapping, const float* cos_sin_cache,
                            int64_t num_tokens, int num_q_heads, int num_kv_heads, int head_dim, int64_t q_stride,
                            int64_t k_stride, int64_t v_stride, int64_t q_out_stride, void* stream) {
  if (bad_rope_args(num_tokens, num_q_heads, num_kv_heads, head_dim, q_stride, k_stride) || num_kv_heads <= 0 ||
      v_stride % 8 != 0 || q_out_stride % 4 != 0)
    return cudaErrorInvalidValue;
  if (misaligned8(q) || misaligned8(k) || misaligned8(q_out) || !mv::aligned16(v) || !mv::aligned16(k_cache) ||
      !mv::aligned16(v_cache))
    return cudaErrorMisalignedAddress;
  if (num_tokens == 0) return cudaSuccess;
  rope_write_kv_kernel<<<static_cast<unsigned>(num_tokens), kThreads, head_dim * sizeof(float),
                         mv::as_stream(stream)>>>(
      static_cast<const __nv_bfloat16*>(q), static_cast<__nv_bfloat16*>(k), static_cast<const __nv_bfloat16*>(v),
      static_cast<__nv_bfloat16*>(q_out), static_cast<__nv_bfloat16*>(k_cache), static_cast<__nv_bfloat16*>(v_cache),
      positions, slot_mapping, cos_sin_cache, num_q_heads, num_kv_heads, head_dim, q_stride, k_stride, v_stride,
      q_out_stride);
  return mv::launch_status();
}
