// RMSNorm and fused residual-add + RMSNorm for GPT-OSS (eps 1e-5, bf16 in/out, fp32 math).
//
// Why a kernel: the norm runs twice per layer on every decode step; unfused it is three memory passes
// (add, reduce, scale). One block owns one row: 16-byte loads, the row kept in shared memory as fp32 so
// global memory is read once, a block reduction, then one 16-byte store pass. Semantics match
// transformers' GptOssRMSNorm: y = w * (x * rsqrt(mean(x^2) + eps)) computed in fp32, rounded once.
// The fused variant follows vLLM: residual <- bf16(x + residual); x <- rmsnorm(residual) (both in place),
// the norm taken of the *rounded* sum, exactly as the bf16 model adds then normalises.
#include "mv_common.cuh"

namespace {

constexpr int kThreads = 256;

template <bool kFusedAdd>
__global__ void rms_norm_kernel(__nv_bfloat16* out, __nv_bfloat16* x,  // may alias
                                __nv_bfloat16* __restrict__ residual, const __nv_bfloat16* __restrict__ weight,
                                int hidden, float eps) {
  extern __shared__ float row[];  // hidden floats
  __shared__ float scratch[32];
  const int64_t base = static_cast<int64_t>(blockIdx.x) * hidden;
  const int nvec = hidden / 8;
  const auto* xv = reinterpret_cast<const mv::Bf16x8*>(x + base);
  float ss = 0.f;
  for (int v = threadIdx.x; v < nvec; v += blockDim.x) {
    float f[8];
    mv::unpack8(xv[v], f);
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
