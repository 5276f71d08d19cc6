// MoE routing for GPT-OSS: top-k of the router logits, softmax over the k selected.
//
// Why: transformers' GptOssTopKRouter does topk then softmax over the k values; with 32/128 experts
// and k=4 one warp per token is enough: each lane holds up to 8 logits in registers, k rounds of a
// warp arg-max (ties -> lower expert index) pick the experts, the softmax runs in fp32 on lane 0.
#include "mv_common.cuh"

namespace {

constexpr int kMaxPerLane = 8;  // up to 256 experts
constexpr int kMaxK = 8;
constexpr int kWarpsPerBlock = 4;

__global__ void route_topk_kernel(const __nv_bfloat16* __restrict__ logits, int32_t* __restrict__ indices,
                                  float* __restrict__ weights, int64_t num_tokens, int num_experts, int top_k) {
  const int lane = threadIdx.x & 31;
  const int64_t t = blockIdx.x * static_cast<int64_t>(kWarpsPerBlock) + (threadIdx.x >> 5);
  if (t >= num_tokens) return;
  const __nv_bfloat16* row = logits + t * num_experts;
  float v[kMaxPerLane];
#pragma unroll
  for (int i = 0; i < kMaxPerLane; ++i) {
    const int e = i * 32 + lane;
    v[i] = e < num_experts ? __bfloat162float(row[e]) : -INFINITY;
  }
  float top_val[kMaxK];
  int top_idx[kMaxK];
  unsigned taken = 0;  // bit i: v[i] already selected (a selected -inf or NaN logit is never re-picked)
  for (int r = 0; r < top_k; ++r) {
    float best = -INFINITY;
    int best_e = 0x7fffffff;
#pragma unroll
    for (int i = 0; i < kMaxPerLane; ++i) {
      const int e = i * 32 + lane;
      const bool free = e < num_experts && !((taken >> i) & 1u);
      if (free && (best_e == 0x7fffffff || v[i] > best || (v[i] == best && e < best_e))) {
        best = v[i];
        best_e = e;
      }
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
      const float ov = __shfl_xor_sync(0xffffffffu, best, o);
      const int oe = __shfl_xor_sync(0xffffffffu, best_e, o);
      if (oe != 0x7fffffff && (best_e == 0x7fffffff || ov > best || (ov == best && oe < best_e))) {
        best = ov;
        best_e = oe;
      }
    }
    top_val[r] = best;
    top_idx[r] = best_e;
    if ((best_e & 31) == lane) taken |= 1u << (best_e >> 5);
  }
  if (lane == 0) {
    float sum = 0.f;
    for (int r = 0; r < top_k; ++r) sum += __expf(top_val[r] - top_val[0]);
    for (int r = 0; r < top_k; ++r) {
      indices[t * top_k + r] = top_idx[r];
      weights[t * top_k + r] = __expf(top_val[r] - top_val[0]) / sum;
    }
  }
}

}  // namespace

// logits: bf16 [num_tokens, num_experts]; indices: int32 [num_tokens, top_k]; weights: fp32 [num_tokens, top_k].
MV_API int mv_route_topk(const void* logits, int32_t* indices, float* weights, int64_t num_tokens, int num_experts,
                         int top_k, void* stream) {
  if (num_tokens < 0 || num_experts <= 0 || num_experts > 32 * kMaxPerLane || top_k <= 0 || top_k > kMaxK ||
      top_k > num_experts)
    return cudaErrorInvalidValue;
  if (num_tokens == 0) return cudaSuccess;
  const int blocks = mv::ceil_div(num_tokens, kWarpsPerBlock);
  route_topk_kernel<<<blocks, 32 * kWarpsPerBlock, 0, mv::as_stream(stream)>>>(
      static_cast<const __nv_bfloat16*>(logits), indices, weights, num_tokens, num_experts, top_k);
  return mv::launch_status();
}
