// MoE routing for GPT-OSS: top-k of the router logits, softmax over the k selected - alone
// (mv_route_topk, logits from a separate GEMM) or fused with the router GEMM (mv_router_topk).
//
// Why: transformers' GptOssTopKRouter does topk then softmax over the k values; with 32/128 experts
// and k=4 one warp per token is enough: each lane holds up to 8 logits in registers, k rounds of a
// warp arg-max (ties -> lower expert index) pick the experts, the softmax runs in fp32 on lane 0.
// At decode batch sizes the router GEMM (x [T, 2880] @ W^T [E, 2880], cuBLAS split-K) plus this kernel
// are two launches of ~4 + 3 us per layer for a few KFLOP, so mv_router_topk does both in one launch:
// an 8-block thread-block cluster (sm_90) per group of 8 tokens, each warp of the cluster computes the
// logits of E/32 experts for those tokens (fp32 accumulation, + bias, rounded to bf16 like the GEMM's
// output) and stores them into the shared memory of the cluster's block 0 (distributed shared memory),
// which then runs the same warp top-k. The router weights (184 KB for 32 experts) are read by 8 SMs
// per token group instead of one, and nothing is written to global memory but ids and weights.
#include <cooperative_groups.h>

#include "mv_common.cuh"

namespace cg = cooperative_groups;

namespace {

constexpr int kMaxPerLane = 8;  // up to 256 experts
constexpr int kMaxExperts = 32 * kMaxPerLane;
constexpr int kMaxK = 8;
constexpr int kWarpsPerBlock = 4;

// One warp: v[i] holds the logit of expert i*32+lane (-inf past num_experts). Writes the top_k expert
// ids (descending logit, ties -> lower id) and their softmax weights from lane 0.
__device__ __forceinline__ void warp_topk_softmax(const float (&v)[kMaxPerLane], int num_experts, int top_k,
                                                  int32_t* __restrict__ indices, float* __restrict__ weights) {
  const int lane = threadIdx.x & 31;
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
      indices[r] = top_idx[r];
      weights[r] = __expf(top_val[r] - top_val[0]) / sum;
    }
  }
}

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
  warp_topk_softmax(v, num_experts, top_k, indices + t * top_k, weights + t * top_k);
}

// ---- fused router GEMM + top-k ---------------------------------------------------------------------
constexpr int kCluster = 8;        // blocks per token group (portable cluster size on sm_90)
constexpr int kRouterTokens = 8;   // tokens per cluster: each router weight load feeds 8 dot products
constexpr int kVecPerLane = 12;    // 16-byte weight vectors a lane holds at once: 3072 of hidden per pass

__global__ void __cluster_dims__(kCluster, 1, 1) __launch_bounds__(32 * kWarpsPerBlock)
    router_topk_kernel(const __nv_bfloat16* __restrict__ x, const __nv_bfloat16* __restrict__ w,
                       const __nv_bfloat16* __restrict__ bias, int32_t* __restrict__ indices,
                       float* __restrict__ weights, int64_t num_tokens, int64_t x_stride, int hidden,
                       int num_experts, int top_k) {
  __shared__ float s_logits[kRouterTokens][kMaxExperts];  // used in the cluster's block 0
  cg::cluster_group cluster = cg::this_cluster();
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t t0 = static_cast<int64_t>(blockIdx.y) * kRouterTokens;
  const int nt = num_tokens - t0 < kRouterTokens ? static_cast<int>(num_tokens - t0) : kRouterTokens;
  const int nvec = hidden / 8;
  float* dst = cluster.map_shared_rank(&s_logits[0][0], 0);
  cluster.sync();  // block 0 has started: its shared memory may be written

  const int nwarps = kCluster * kWarpsPerBlock;
  for (int e = static_cast<int>(cluster.block_rank()) * kWarpsPerBlock + warp; e < num_experts; e += nwarps) {
    const auto* wrow = reinterpret_cast<const mv::Bf16x8*>(w + static_cast<int64_t>(e) * hidden);
    float acc[kRouterTokens];
#pragma unroll
    for (int t = 0; t < kRouterTokens; ++t) acc[t] = 0.f;
    for (int base = 0; base < nvec; base += 32 * kVecPerLane) {
      // the lane's slice of the weight row is loaded before any use: one memory round trip per chunk
      // (the router weights are cold in L2 at decode - each step streams the whole model through it)
      mv::Bf16x8 wv[kVecPerLane];
#pragma unroll
      for (int j = 0; j < kVecPerLane; ++j) {
        const int i = base + j * 32 + lane;
        if (i < nvec) wv[j] = mv::ldg16(wrow + i);
      }
#pragma unroll
      for (int t = 0; t < kRouterTokens; ++t) {
        if (t >= nt) continue;
        const auto* xrow = reinterpret_cast<const mv::Bf16x8*>(x + (t0 + t) * x_stride);
#pragma unroll
        for (int j = 0; j < kVecPerLane; ++j) {
          const int i = base + j * 32 + lane;
          if (i < nvec) {
            float wf[8], xf[8];
            mv::unpack8(wv[j], wf);
            mv::unpack8(mv::ldg16(xrow + i), xf);
#pragma unroll
            for (int q = 0; q < 8; ++q) acc[t] = fmaf(wf[q], xf[q], acc[t]);
          }
        }
      }
    }
    const float b = bias ? __bfloat162float(bias[e]) : 0.f;
#pragma unroll
    for (int t = 0; t < kRouterTokens; ++t) {
      const float s = mv::warp_sum(acc[t]);
      // rounded to bf16 like the GEMM's output, so ties and choices match the two-launch path
      if (lane == 0 && t < nt) dst[t * kMaxExperts + e] = __bfloat162float(__float2bfloat16(s + b));
    }
  }
  cluster.sync();  // all logits are in block 0
  if (cluster.block_rank() != 0) return;
  for (int t = warp; t < nt; t += kWarpsPerBlock) {
    float v[kMaxPerLane];
#pragma unroll
    for (int i = 0; i < kMaxPerLane; ++i) {
      const int e = i * 32 + lane;
      v[i] = e < num_experts ? s_logits[t][e] : -INFINITY;
    }
    warp_topk_softmax(v, num_experts, top_k, indices + (t0 + t) * top_k, weights + (t0 + t) * top_k);
  }
}

bool bad_topk_args(int64_t num_tokens, int num_experts, int top_k) {
  return num_tokens < 0 || num_experts <= 0 || num_experts > kMaxExperts || top_k <= 0 || top_k > kMaxK ||
         top_k > num_experts;
}

}  // namespace

// logits: bf16 [num_tokens, num_experts]; indices: int32 [num_tokens, top_k]; weights: fp32 [num_tokens, top_k].
MV_API int mv_route_topk(const void* logits, int32_t* indices, float* weights, int64_t num_tokens, int num_experts,
                         int top_k, void* stream) {
  if (bad_topk_args(num_tokens, num_experts, top_k)) return cudaErrorInvalidValue;
  if (num_tokens == 0) return cudaSuccess;
  const int blocks = mv::ceil_div(num_tokens, kWarpsPerBlock);
  route_topk_kernel<<<blocks, 32 * kWarpsPerBlock, 0, mv::as_stream(stream)>>>(
      static_cast<const __nv_bfloat16*>(logits), indices, weights, num_tokens, num_experts, top_k);
  return mv::launch_status();
}

// x: bf16 [num_tokens, hidden] at token stride x_stride (elements); w: bf16 [num_experts, hidden] contiguous;
// bias: bf16 [num_experts] or NULL. Same outputs as mv_route_topk over bf16(x @ w^T + bias).
// hidden % 8 == 0, x/w 16-byte aligned, x_stride % 8 == 0. Grid: (8, ceil(num_tokens / 8)) - fixed for a
// fixed num_tokens, no allocation: capturable in a CUDA graph.
MV_API int mv_router_topk(const void* x, const void* w, const void* bias, int32_t* indices, float* weights,
                          int64_t num_tokens, int64_t x_stride, int hidden, int num_experts, int top_k,
                          void* stream) {
  if (bad_topk_args(num_tokens, num_experts, top_k) || hidden <= 0 || hidden % 8 != 0 || x_stride % 8 != 0 ||
      x_stride < hidden)
    return cudaErrorInvalidValue;
  if (!mv::aligned16(x) || !mv::aligned16(w)) return cudaErrorMisalignedAddress;
  if (num_tokens == 0) return cudaSuccess;
  const dim3 grid(kCluster, mv::ceil_div(num_tokens, kRouterTokens));
  if (grid.y > 65535u) return cudaErrorInvalidValue;
  router_topk_kernel<<<grid, 32 * kWarpsPerBlock, 0, mv::as_stream(stream)>>>(
      static_cast<const __nv_bfloat16*>(x), static_cast<const __nv_bfloat16*>(w),
      static_cast<const __nv_bfloat16*>(bias), indices, weights, num_tokens, x_stride, hidden, num_experts, top_k);
  return mv::launch_status();
}
