// RMSNorm and fused residual-add + RMSNorm for GPT-OSS (eps 1e-5, bf16 in/out, fp32 math).
//
// Why a kernel: the norm runs twice per layer on every decode step; unfused it is three memory passes
// (add, reduce, scale). One block owns one row: 16-byte loads, the row kept in shared memory as fp32 so
// global memory is read once, a block reduction, then one 16-byte store pass. Semantics match
// transformers' GptOssRMSNorm: y = w * (x * rsqrt(mean(x^2) + eps)) computed in fp32, rounded once.
// The fused variant follows vLLM: residual <- bf16(x + residual); x <- rmsnorm(residual) (both in place),
// the norm taken of the *rounded* sum, exactly as the bf16 model adds then normalises.
// The MoE variant first adds a token's R fp32 expert rows (in row order, rounded once to bf16, as the MoE
// sum kernel does) and uses that as x: one launch instead of moe_sum + fused add + RMSNorm.
#include "mv_common.cuh"

namespace {

constexpr int kThreads = 256;

template <bool kFusedAdd, int kSumRows = 0>
__global__ void rms_norm_kernel(__nv_bfloat16* out, __nv_bfloat16* x,  // may alias
                                __nv_bfloat16* __restrict__ residual, const __nv_bfloat16* __restrict__ weight,
                                int hidden, float eps, const float* __restrict__ rows_f32 = nullptr,
                                int sum_rows = 0) {
  extern __shared__ float row[];  // hidden floats
  __shared__ float scratch[32];
  const int64_t base = static_cast<int64_t>(blockIdx.x) * hidden;
  const int nvec = hidden / 8;
  const auto* xv = reinterpret_cast<const mv::Bf16x8*>(x + base);
  float ss = 0.f;
  for (int v = threadIdx.x; v < nvec; v += blockDim.x) {
    float f[8];
    if constexpr (kSumRows) {  // x = bf16(sum of this token's sum_rows fp32 rows), the MoE sum
      const float* src = rows_f32 + (static_cast<int64_t>(blockIdx.x) * sum_rows) * hidden + v * 8;
#pragma unroll
      for (int i = 0; i < 8; ++i) f[i] = 0.f;
      for (int j = 0; j < sum_rows; ++j) {
        const float4 a = __ldg(reinterpret_cast<const float4*>(src + static_cast<int64_t>(j) * hidden));
        const float4 b = __ldg(reinterpret_cast<const float4*>(src + static_cast<int64_t>(j) * hidden + 4));
        f[0] += a.x; f[1] += a.y; f[2] += a.z; f[3] += a.w;
        f[4] += b.x; f[5] += b.y; f[6] += b.z; f[7] += b.w;
      }
      mv::unpack8(mv::pack8(f), f);
    } else {
      mv::unpack8(xv[v], f);
    }
    if constexpr (kFusedAdd) {
      auto* rv = reinterpret_cast<mv::Bf16x8*>(residual + base);
      float r[8];
      mv::unpack8(rv[v], r);
#pragma unroll
      for (int i = 0; i < 8; ++i) f[i] += r[i];
      mv::Bf16x8 sum = mv::pack8(f);
      rv[v] = sum;
      mv::unpack8(sum, f);  // normalise the rounded sum, as the bf16 model does
    }
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      row[v * 8 + i] = f[i];
      ss += f[i] * f[i];
    }
  }
  const float inv = rsqrtf(mv::block_sum(ss, scratch) / hidden + eps);
  const auto* wv = reinterpret_cast<const mv::Bf16x8*>(weight);
  auto* ov = reinterpret_cast<mv::Bf16x8*>(out + base);
  for (int v = threadIdx.x; v < nvec; v += blockDim.x) {
    float w[8], f[8];
    mv::unpack8(wv[v], w);
#pragma unroll
    for (int i = 0; i < 8; ++i) f[i] = w[i] * (row[v * 8 + i] * inv);
    ov[v] = mv::pack8(f);
  }
}

int check(const void* a, const void* b, const void* c, int64_t rows, int64_t hidden) {
  if (rows < 0 || hidden <= 0 || hidden % 8 != 0 || hidden > 12000) return cudaErrorInvalidValue;
  if (!mv::aligned16(a) || !mv::aligned16(b) || !mv::aligned16(c)) return cudaErrorMisalignedAddress;
  return cudaSuccess;
}

}  // namespace

// out[rows, hidden] = rmsnorm(x) * weight. out may equal x.
MV_API int mv_rms_norm(void* out, const void* x, const void* weight, int64_t rows, int64_t hidden, float eps,
                       void* stream) {
  if (int err = check(out, x, weight, rows, hidden)) return err;
  if (rows == 0) return cudaSuccess;
  rms_norm_kernel<false><<<static_cast<unsigned>(rows), kThreads, hidden * sizeof(float), mv::as_stream(stream)>>>(
      static_cast<__nv_bfloat16*>(out), const_cast<__nv_bfloat16*>(static_cast<const __nv_bfloat16*>(x)), nullptr,
      static_cast<const __nv_bfloat16*>(weight), static_cast<int>(hidden), eps);
  return mv::launch_status();
}

// residual <- x + residual; x <- rmsnorm(residual) * weight. Both in place.
MV_API int mv_fused_add_rms_norm(void* x, void* residual, const void* weight, int64_t rows, int64_t hidden,
                                 float eps, void* stream) {
  if (int err = check(x, residual, weight, rows, hidden)) return err;
  if (rows == 0) return cudaSuccess;
  rms_norm_kernel<true><<<static_cast<unsigned>(rows), kThreads, hidden * sizeof(float), mv::as_stream(stream)>>>(
      static_cast<__nv_bfloat16*>(x), static_cast<__nv_bfloat16*>(x), static_cast<__nv_bfloat16*>(residual),
      static_cast<const __nv_bfloat16*>(weight), static_cast<int>(hidden), eps);
  return mv::launch_status();
}

// residual <- bf16(bf16(sum_j rows[t*R + j]) + residual); out <- rmsnorm(residual) * weight. rows: fp32
// [num_tokens * R, hidden] (the MoE's per-slot outputs); out and residual bf16 [num_tokens, hidden].
MV_API int mv_moe_sum_add_rms_norm(void* out, void* residual, const void* rows, const void* weight, int64_t num_tokens,
                                   int64_t sum_rows, int64_t hidden, float eps, void* stream) {
  if (int err = check(out, residual, weight, num_tokens, hidden)) return err;
  if (!mv::aligned16(rows)) return cudaErrorMisalignedAddress;
  if (sum_rows < 1 || sum_rows > 64) return cudaErrorInvalidValue;
  if (num_tokens == 0) return cudaSuccess;
  rms_norm_kernel<true, 1><<<static_cast<unsigned>(num_tokens), kThreads, hidden * sizeof(float),
                             mv::as_stream(stream)>>>(
      static_cast<__nv_bfloat16*>(out), nullptr, static_cast<__nv_bfloat16*>(residual),
      static_cast<const __nv_bfloat16*>(weight), static_cast<int>(hidden), eps, static_cast<const float*>(rows),
      static_cast<int>(sum_rows));
  return mv::launch_status();
}
