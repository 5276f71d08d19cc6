// Shared helpers for mini-vLLM's CUDA kernels.
//
// Why this header exists: every kernel module exposes a plain C ABI (extern "C", raw device pointers,
// sizes, a cudaStream_t passed as void*) so that Python can load it with ctypes and no torch headers
// are needed to build it. The helpers below keep the kernels' conventions identical: bf16 storage with
// fp32 math, 16-byte vector accesses, warp/block reductions, and an int return code (a cudaError_t).
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <stdint.h>

#define MV_API extern "C" __attribute__((visibility("default")))

namespace mv {

// 8 bf16 values = 16 bytes: the unit of every vectorised load/store.
struct alignas(16) Bf16x8 {
  __nv_bfloat162 h[4];
};

// One 128-bit read-only load (a struct copy of Bf16x8 may compile to four 32-bit loads).
__device__ __forceinline__ Bf16x8 ldg16(const Bf16x8* p) {
  const uint4 raw = __ldg(reinterpret_cast<const uint4*>(p));
  return *reinterpret_cast<const Bf16x8*>(&raw);
}

__device__ __forceinline__ void unpack8(const Bf16x8& v, float (&f)[8]) {
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    float2 p = __bfloat1622float2(v.h[i]);
    f[2 * i] = p.x;
    f[2 * i + 1] = p.y;
  }
}

__device__ __forceinline__ Bf16x8 pack8(const float (&f)[8]) {
  Bf16x8 v;
#pragma unroll
  for (int i = 0; i < 4; ++i) v.h[i] = __floats2bfloat162_rn(f[2 * i], f[2 * i + 1]);
  return v;
}

__device__ __forceinline__ float warp_sum(float x) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
  return x;
}

// Sum over the whole block; every thread gets the result. `scratch` holds >= 32 floats.
__device__ __forceinline__ float block_sum(float x, float* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  x = warp_sum(x);
  __syncthreads();  // scratch may still be read from a previous call
  if (lane == 0) scratch[warp] = x;
  __syncthreads();
  const int nwarps = (blockDim.x + 31) >> 5;
  x = lane < nwarps ? scratch[lane] : 0.f;
  return warp_sum(x);
}

// Block-strided copy of n 16-byte vectors (a KV-cache row: dst/src 16-byte aligned).
// src must not be written by the running kernel (read-only cache path).
__device__ __forceinline__ void copy_vec16(Bf16x8* __restrict__ dst, const Bf16x8* __restrict__ src, int n) {
  for (int i = threadIdx.x; i < n; i += blockDim.x)
    reinterpret_cast<uint4*>(dst)[i] = __ldg(reinterpret_cast<const uint4*>(src) + i);
}

inline bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

inline cudaStream_t as_stream(void* s) { return static_cast<cudaStream_t>(s); }

// The return code of every C entry point: the launch error, if any.
inline int launch_status() { return static_cast<int>(cudaGetLastError()); }

inline int ceil_div(int64_t a, int64_t b) { return static_cast<int>((a + b - 1) / b); }

}  // namespace mv
