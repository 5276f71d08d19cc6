// Paged KV-cache write: new keys/values land in their slots of the block-paged cache.
//
// Why this layout: the cache is [num_blocks, block_size, num_kv_heads, head_dim] per K and V - exactly
// what FlashAttention-3 reads with a page_table (hopper/flash_api.cpp: k is (num_pages, page_size, h_k, d)),
// so attention consumes the cache with no copy. slot = block * block_size + offset; slot -1 (padding or a
// token whose KV must not be stored) is skipped. One block per token copies its num_kv_heads*head_dim
// row with 16-byte accesses; key/value may be strided views into the fused qkv output.
#include "mv_common.cuh"

namespace {

constexpr int kThreads = 128;

__global__ void write_kv_kernel(const __nv_bfloat16* __restrict__ key, const __nv_bfloat16* __restrict__ value,
                                __nv_bfloat16* __restrict__ k_cache, __nv_bfloat16* __restrict__ v_cache,
                                const int64_t* __restrict__ slot_mapping, int row_elems, int64_t key_stride,
                                int64_t value_stride) {
  const int64_t t = blockIdx.x;
  const int64_t slot = slot_mapping[t];
  if (slot < 0) return;
  const int nvec = row_elems / 8;
  mv::copy_vec16(reinterpret_cast<mv::Bf16x8*>(k_cache + slot * row_elems),
                 reinterpret_cast<const mv::Bf16x8*>(key + t * key_stride), nvec);
  mv::copy_vec16(reinterpret_cast<mv::Bf16x8*>(v_cache + slot * row_elems),
                 reinterpret_cast<const mv::Bf16x8*>(value + t * value_stride), nvec);
}

}  // namespace

// key/value: [num_tokens, num_kv_heads, head_dim] at token strides key_stride/value_stride (elements);
// slot_mapping: int64 [num_tokens]; caches: [num_slots = num_blocks*block_size, num_kv_heads, head_dim].
MV_API int mv_write_kv_cache(const void* key, const void* value, void* k_cache, void* v_cache,
                             const int64_t* slot_mapping, int64_t num_tokens, int num_kv_heads, int head_dim,
                             int64_t key_stride, int64_t value_stride, void* stream) {
  const int64_t row = static_cast<int64_t>(num_kv_heads) * head_dim;
  if (num_tokens < 0 || row <= 0 || row % 8 != 0 || key_stride % 8 != 0 || value_stride % 8 != 0)
    return cudaErrorInvalidValue;
  if (!mv::aligned16(key) || !mv::aligned16(value) || !mv::aligned16(k_cache) || !mv::aligned16(v_cache))
    return cudaErrorMisalignedAddress;
  if (num_tokens == 0) return cudaSuccess;
  write_kv_kernel<<<static_cast<unsigned>(num_tokens), kThreads, 0, mv::as_stream(stream)>>>(
      static_cast<const __nv_bfloat16*>(key), static_cast<const __nv_bfloat16*>(value),
      static_cast<__nv_bfloat16*>(k_cache), static_cast<__nv_bfloat16*>(v_cache), slot_mapping,
      static_cast<int>(row), key_stride, value_stride);
  return mv::launch_status();
}
