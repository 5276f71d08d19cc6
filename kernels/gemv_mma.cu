// Decode-sized MXFP4 MoE GEMVs on the tensor cores (mma.sync m16n8k16, bf16 in, fp32 accumulate), T <= 8 tokens:
//   mv_moe_gemv_gate_up act[slot, I] = swiglu(x[tok] . W1_e^T + b1_e)  (MXFP4 experts, GPT-OSS clamped SwiGLU)
//   mv_moe_gemv_down    part[slot, H] = w_slot * (act[slot] . W2_e^T + b2_e), fp32 (summed by the norm kernel)
//
// Why tensor cores for a GEMV: with N = 8 columns (tokens) one mma costs the same as one column, so a decode
// batch of 1..8 tokens reads each weight once and the arithmetic stays far below the memory time; what
// matters is bytes in flight, so every thread streams 16-byte weight loads (one MXFP4 32-value group) four
// iterations ahead, and the K order inside an mma is chosen to match the loads (any permutation of k is
// fine as long as A and B use the same one).
//
// Layout of one warp's work: 16 weight rows (mma M) x all K; lane (g = lane/4, t = lane%4) loads, at
// iteration j, group q = 4j + t (32 consecutive k) of rows g and g+8. Word i of an MXFP4 group holds
// elements 8i..8i+7 (nibble n = element 8i+n); it is decoded into four bf16x2 pairs (n0,n4) (n1,n5) (n2,n6)
// (n3,n7) - a shift and a mask per value, the nibble placed as a bf16 exponent/mantissa (= e2m1 x 2^-126,
// 0.5 as a bf16 subnormal), then one bf16x2 multiply by 2^(s-1) applies the e8m0 scale exactly (two
// multiplies when a tensor has scales > 128). mma (i, h) takes pairs (2h, 2h+1) of word i; the matching
// activations (x[8i+2h], x[8i+2h+4]) and (x[8i+2h+1], x[8i+2h+5]) come from the same 16 bytes of x by two
// byte permutes. (A dense bf16 mode for qkv / o_proj lost to cuBLAS 2-3x on the H100 and was removed.)
//
// MoE blocks: grid.y = routed slot s; a block whose expert an earlier slot already has exits, so every
// distinct expert is read once and its mma columns are the tokens routed to it (the others are zero).
// Activation rows for the block are staged in shared memory once. The down kernel writes one fp32 row per
// routed slot (weight and bias applied, as the Triton path does); mv_moe_sum_add_rms_norm adds them.
#include "mv_common.cuh"

namespace {

constexpr int kWarps = 4;
constexpr int kThreads = kWarps * 32;
constexpr int kMaxTokens = 8;
constexpr int kMaxK = 12288;  // 8 activation rows of K bf16 staged in shared memory: <= 192 KB

enum Mode : int { kGateUp = 1, kDown = 2 };

struct Params {
  const void* w;                 // uint8 blocks [E, N, K/32, 16]
  const uint8_t* scales;         // [E, N, K/32]
  const __nv_bfloat16* bias;     // [E, N]; may be null
  const __nv_bfloat16* x;        // gate_up: [T, K] rows at x_stride; down: act [T*k, K]
  int64_t x_stride;
  void* out;                     // gate_up: bf16 [T*k, N/2]; down: fp32 [T*k, N]
  int64_t out_stride;
  const int32_t* ids;            // [T, k] expert ids
  const float* topk_w;           // down: [T, k] routing weights
  int tokens, top_k, n, k;       // n: weight rows (per expert), k: reduction length (multiple of 32)
  float alpha, limit;            // SwiGLU
};

__device__ __forceinline__ uint32_t prmt(uint32_t a, uint32_t b, uint32_t sel) {
  uint32_t d;
  asm("prmt.b32 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(sel));
  return d;
}

__device__ __forceinline__ uint32_t bf16x2_mul(uint32_t a, uint32_t b) {
  uint32_t d;  // bf16 arithmetic keeps subnormals (no .ftz for bf16 in PTX)
  asm("mul.rn.bf16x2 %0, %1, %2;" : "=r"(d) : "r"(a), "r"(b));
  return d;
}

__device__ __forceinline__ void mma16816(float (&c)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                                         uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

// A 16-byte weight load that bypasses L1 (each byte is read once per step).
__device__ __forceinline__ uint4 ld_stream(const uint4* p) {
  uint4 v;
  asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "l"(p));
  return v;
}

// Nibbles (0,4) (1,5) (2,6) (3,7) of w as bf16x2 pairs worth e2m1 x 2^-126 (sign -> bit 15, e1 e0 m -> bits 8..6).
__device__ __forceinline__ void fp4_pairs(uint32_t w, uint32_t (&r)[4]) {
  r[0] = ((w << 6) & 0x01C001C0u) | ((w << 12) & 0x80008000u);
  r[1] = ((w << 2) & 0x01C001C0u) | ((w << 8) & 0x80008000u);
  r[2] = ((w >> 2) & 0x01C001C0u) | ((w << 4) & 0x80008000u);
  r[3] = ((w >> 6) & 0x01C001C0u) | (w & 0x80008000u);
}

// bf16x2 factor(s) that turn e2m1 x 2^-126 into e2m1 x 2^(s-127): 2^(s-1) in one multiply when s <= 128,
// else 2^126 then 2^(s-127).
template <bool kBigScale>
__device__ __forceinline__ void scale_pairs(uint32_t (&r)[4], uint32_t s) {
  if constexpr (kBigScale) {
    const uint32_t m1 = s > 128u ? 0x7E807E80u : ((s + 126u) << 7) * 0x10001u;
    const uint32_t m2 = s > 128u ? (s << 7) * 0x10001u : 0x3F803F80u;
#pragma unroll
    for (int i = 0; i < 4; ++i) r[i] = bf16x2_mul(bf16x2_mul(r[i], m1), m2);
  } else {
    const uint32_t m = ((s + 126u) << 7) * 0x10001u;
#pragma unroll
    for (int i = 0; i < 4; ++i) r[i] = bf16x2_mul(r[i], m);
  }
}

// The two mmas of word i of a 32-value group: A pairs ra (row g) / rb (row g+8), activations xi = x[8i .. 8i+7].
__device__ __forceinline__ void word_mma(float (&acc)[4], const uint32_t (&ra)[4], const uint32_t (&rb)[4],
                                         const uint4& xi) {
  mma16816(acc, ra[0], rb[0], ra[1], rb[1], prmt(xi.x, xi.z, 0x5410u), prmt(xi.x, xi.z, 0x7632u));
  mma16816(acc, ra[2], rb[2], ra[3], rb[3], prmt(xi.y, xi.w, 0x5410u), prmt(xi.y, xi.w, 0x7632u));
}

// One MXFP4 group (16 bytes of rows g and g+8, their scale bytes) against xv = x[32q .. 32q+31] of column g.
template <bool kBigScale>
__device__ __forceinline__ void fp4_group_mma(float (&acc)[4], const uint4& wa, const uint4& wb, uint32_t sa,
                                              uint32_t sb, const uint4 (&xv)[4]) {
  const uint32_t a[4] = {wa.x, wa.y, wa.z, wa.w}, b[4] = {wb.x, wb.y, wb.z, wb.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    uint32_t ra[4], rb[4];
    fp4_pairs(a[i], ra);
    fp4_pairs(b[i], rb);
    scale_pairs<kBigScale>(ra, sa);
    scale_pairs<kBigScale>(rb, sb);
    word_mma(acc, ra, rb, xv[i]);
  }
}

__device__ __forceinline__ float swiglu(float gate, float lin, float alpha, float limit) {
  gate = fminf(gate, limit);
  lin = fminf(fmaxf(lin, -limit), limit);
  return gate / (1.f + __expf(-alpha * gate)) * (lin + 1.f);
}

// One block: kWarps / KS tiles of 16 rows; KS warps split each tile's K range and add up in shared memory.
template <int kMode, int KS, bool kBigScale>
__global__ void __launch_bounds__(kThreads) gemv_mma_kernel(const Params p) {
  constexpr int kTiles = kWarps / KS;
  extern __shared__ __align__(16) unsigned char smem[];
  auto* xs = reinterpret_cast<__nv_bfloat16*>(smem);  // [kMaxTokens][k] activation columns
  __shared__ float red[kWarps][4][32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int g = lane >> 2, t = lane & 3;
  const int tile = warp / KS, ks = warp % KS;
  const int row0 = (blockIdx.x * kTiles + tile) * 16;

  const int slots = p.tokens * p.top_k, slot = blockIdx.y;
  const int expert = __ldg(p.ids + slot);
  const int id = lane < slots ? __ldg(p.ids + lane) : -1;
  const uint32_t match = __ballot_sync(0xffffffffu, id == expert);  // bit s: slot s goes to this expert
  if (match & ((1u << slot) - 1u)) return;  // an earlier slot has this expert: its block does the work
  const uint32_t kmask = (1u << p.top_k) - 1u;
  auto slots_of = [&](int c) -> uint32_t {  // bit j: slot c*k + j of token c goes to this expert
    return (match >> (c * p.top_k)) & kmask;
  };

  // stage the activation column of every token taking part (down: its act row; any matching slot's row)
  const int nvec = p.k / 8;
  for (int c = 0; c < p.tokens; ++c) {
    const uint32_t js = slots_of(c);
    if (!js) continue;
    const int64_t src_row = kMode == kDown ? static_cast<int64_t>(c) * p.top_k + (__ffs(js) - 1) : c;
    const auto* src = reinterpret_cast<const uint4*>(p.x + src_row * p.x_stride);
    auto* dst = reinterpret_cast<uint4*>(xs + static_cast<int64_t>(c) * p.k);
    for (int v = threadIdx.x; v < nvec; v += kThreads) dst[v] = __ldg(src + v);
  }
  __syncthreads();
  const bool live = g < p.tokens && slots_of(g) != 0;

  const int groups = p.k / 32;
  const int per = (groups + KS - 1) / KS;
  const int g_lo = ks * per, g_hi = min(groups, g_lo + per);
  const int iters = g_hi > g_lo ? (g_hi - g_lo + 3) / 4 : 0;
  const int ra = row0 + g, rb = row0 + g + 8;
  const bool rows_ok = row0 < p.n;  // n % 16 == 0 (host check): a tile is all in or all out
  float acc[4] = {0.f, 0.f, 0.f, 0.f};
  constexpr int kUnroll = 4;  // iterations whose loads are issued before the first mma
  const int64_t base = static_cast<int64_t>(expert) * p.n;
  const uint4* wa = reinterpret_cast<const uint4*>(p.w) + (base + ra) * groups;  // one 16-byte group per step
  const uint4* wb = reinterpret_cast<const uint4*>(p.w) + (base + rb) * groups;
  const uint8_t* sa = p.scales + (base + ra) * groups;
  const uint8_t* sb = p.scales + (base + rb) * groups;
  const auto* xcol = reinterpret_cast<const uint4*>(xs + static_cast<int64_t>(g) * p.k);
  for (int j0 = 0; j0 < iters; j0 += kUnroll) {
    uint4 va[kUnroll], vb[kUnroll];
    uint32_t s_a[kUnroll], s_b[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {  // all loads of kUnroll iterations first: bytes in flight
      const int q = g_lo + 4 * (j0 + u) + t;
      const bool ok = rows_ok && j0 + u < iters && q < g_hi;
      va[u] = ok ? ld_stream(wa + q) : make_uint4(0, 0, 0, 0);
      vb[u] = ok ? ld_stream(wb + q) : make_uint4(0, 0, 0, 0);
      s_a[u] = ok ? __ldg(sa + q) : 127u;
      s_b[u] = ok ? __ldg(sb + q) : 127u;
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int q = g_lo + 4 * (j0 + u) + t;
      const bool ok = j0 + u < iters && q < g_hi;
      uint4 xv[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) xv[i] = (ok && live) ? xcol[q * 4 + i] : make_uint4(0, 0, 0, 0);
      fp4_group_mma<kBigScale>(acc, va[u], vb[u], s_a[u], s_b[u], xv);
    }
  }

  if constexpr (KS > 1) {  // add the K-split partials in a fixed order (deterministic)
#pragma unroll
    for (int i = 0; i < 4; ++i) red[warp][i][lane] = acc[i];
    __syncthreads();
    if (ks != 0) return;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      float s = red[warp][i][lane];
#pragma unroll
      for (int w = 1; w < KS; ++w) s += red[warp + w][i][lane];
      acc[i] = s;
    }
  }
  if (!rows_ok) return;

  // acc[0], acc[1]: row ra, columns 2t, 2t+1; acc[2], acc[3]: row rb, same columns
  const float bias_a = p.bias ? __bfloat162float(p.bias[base + ra]) : 0.f;
  const float bias_b = p.bias ? __bfloat162float(p.bias[base + rb]) : 0.f;
  const float v[4] = {acc[0] + bias_a, acc[1] + bias_a, acc[2] + bias_b, acc[3] + bias_b};
  if constexpr (kMode == kGateUp) {
    float lin[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) lin[i] = __shfl_xor_sync(0xffffffffu, v[i], 4);  // row r+1 lives in lane g+1
    if (g & 1) return;  // even rows are gates; their lanes write
    auto* out = static_cast<__nv_bfloat16*>(p.out);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int c = 2 * t + (i & 1), col = (i < 2 ? ra : rb) >> 1;
      if (c >= p.tokens) continue;
      const __nv_bfloat16 y = __float2bfloat16(swiglu(v[i], lin[i], p.alpha, p.limit));
      for (uint32_t js = slots_of(c); js; js &= js - 1)
        out[(static_cast<int64_t>(c) * p.top_k + __ffs(js) - 1) * p.out_stride + col] = y;
    }
  } else {
    auto* out = static_cast<float*>(p.out);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int c = 2 * t + (i & 1), r = i < 2 ? ra : rb;
      if (c >= p.tokens) continue;
      for (uint32_t js = slots_of(c); js; js &= js - 1) {
        const int64_t slot = static_cast<int64_t>(c) * p.top_k + __ffs(js) - 1;
        out[slot * p.out_stride + r] = __ldg(p.topk_w + slot) * v[i];
      }
    }
  }
}

template <int kMode, int KS, bool kBig>
int launch_one(const Params& p, int blocks_x, int blocks_y, cudaStream_t stream) {
  const size_t smem = static_cast<size_t>(p.tokens) * p.k * sizeof(__nv_bfloat16);
  auto kernel = gemv_mma_kernel<kMode, KS, kBig>;
  static bool raised = false;  // the dynamic shared-memory cap is raised once per instantiation
  if (smem > 48 * 1024 && !raised) {  // to what the check() bound allows (sm_90 opt-in limit: 227 KB)
    const size_t most = static_cast<size_t>(kMaxTokens) * kMaxK * sizeof(__nv_bfloat16);
    cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(most));
    if (e != cudaSuccess) return static_cast<int>(e);
    raised = true;
  }
  kernel<<<dim3(blocks_x, blocks_y), kThreads, smem, stream>>>(p);
  return mv::launch_status();
}

template <int kMode>
int launch(const Params& p, int k_split, bool big_scale, int blocks_y, cudaStream_t stream) {
  const int tiles = p.n / 16;
  auto bx = [&](int ks) { return mv::ceil_div(tiles, kWarps / ks); };
  switch (k_split * 2 + (big_scale ? 1 : 0)) {
    case 2: return launch_one<kMode, 1, false>(p, bx(1), blocks_y, stream);
    case 3: return launch_one<kMode, 1, true>(p, bx(1), blocks_y, stream);
    case 4: return launch_one<kMode, 2, false>(p, bx(2), blocks_y, stream);
    case 5: return launch_one<kMode, 2, true>(p, bx(2), blocks_y, stream);
    case 8: return launch_one<kMode, 4, false>(p, bx(4), blocks_y, stream);
    case 9: return launch_one<kMode, 4, true>(p, bx(4), blocks_y, stream);
    default: return cudaErrorInvalidValue;
  }
}

int check(const Params& p, int k_split) {
  if (p.tokens < 1 || p.tokens > kMaxTokens || p.n <= 0 || p.n % 16 || p.k <= 0 || p.k % 32 || p.k > kMaxK) return cudaErrorInvalidValue;
  if (k_split != 1 && k_split != 2 && k_split != 4) return cudaErrorInvalidValue;
  if (!mv::aligned16(p.w) || !mv::aligned16(p.x) || p.x_stride % 8) return cudaErrorMisalignedAddress;
  return cudaSuccess;
}

}  // namespace

// act[T*k, I] (row stride act_stride) = swiglu(x[tok] . W1_e^T + b1_e) for every routed slot; blocks/scales:
// the checkpoint's gate_up_proj tensors [E, 2I, H/32, 16] / [E, 2I, H/32]; bias [E, 2I] or null.
MV_API int mv_moe_gemv_gate_up(void* act, int64_t act_stride, const void* x, int64_t x_stride, const void* blocks,
                               const void* scales, const void* bias, const int32_t* ids, int tokens, int top_k,
                               int two_i, int hidden, float alpha, float limit, int k_split, int big_scale,
                               void* stream) {
  Params p{blocks, static_cast<const uint8_t*>(scales), static_cast<const __nv_bfloat16*>(bias),
           static_cast<const __nv_bfloat16*>(x), x_stride, act, act_stride, ids, nullptr, tokens, top_k, two_i,
           hidden, alpha, limit};
  if (int err = check(p, k_split)) return err;
  if (top_k < 1 || tokens * top_k > 32 || two_i % 32) return cudaErrorInvalidValue;
  return launch<kGateUp>(p, k_split, big_scale != 0, tokens * top_k, mv::as_stream(stream));
}

// part[T*k, H] fp32 (row stride part_stride) = topk_w[slot] * (act[slot] . W2_e^T + b2_e) for every routed slot.
MV_API int mv_moe_gemv_down(void* part, int64_t part_stride, const void* act, int64_t act_stride, const void* blocks,
                            const void* scales, const void* bias, const int32_t* ids, const float* topk_w, int tokens,
                            int top_k, int hidden, int inter, int k_split, int big_scale, void* stream) {
  Params p{blocks, static_cast<const uint8_t*>(scales), static_cast<const __nv_bfloat16*>(bias),
           static_cast<const __nv_bfloat16*>(act), act_stride, part, part_stride, ids, topk_w, tokens, top_k,
           hidden, inter, 0.f, 0.f};
  if (int err = check(p, k_split)) return err;
  if (top_k < 1 || tokens * top_k > 32) return cudaErrorInvalidValue;
  return launch<kDown>(p, k_split, big_scale != 0, tokens * top_k, mv::as_stream(stream));
}
