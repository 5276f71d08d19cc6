// mini-vLLM's C-ABI entry point to the GPT-OSS subset of FlashAttention-3 (vllm-project fork 188be165).
//
// Why our own wrapper: the fork's hopper/flash_api.cpp is written against torch (at::Tensor, pybind,
// torch's CUDA context), which would tie the module to one torch build. This file does the same job for
// the one configuration GPT-OSS needs - bf16, head_dim 64, sm90, varlen q, paged KV, GQA, causal,
// sliding window, learned sinks (s_aux), split-KV + combine - from raw pointers, and dispatches only to
// the five instantiation units we build (build_config.yaml kernels.fa3). The parameter logic follows
// mha_fwd in flash_api.cpp (window normalisation, paged-KV TMA choice, pack-GQA, split heuristic,
// dynamic split scheduler, semaphore); it is re-expressed here, not copied, and must be re-checked
// when the fork pin moves.
//
// Errors never cross the C boundary as exceptions: a rejected argument returns cudaErrorInvalidValue
// and mv_fa3_last_error() tells why; CUDA failures return their cudaError_t.
#include <cuda_runtime.h>
#include <stdint.h>

#include <algorithm>
#include <cstdio>
#include <stdexcept>
#include <string>

#include <cutlass/numeric_types.h>

#include "flash.h"
#include "heuristics.h"
#include "tile_size.h"

#define MV_API extern "C" __attribute__((visibility("default")))

namespace {

using bf16 = cutlass::bfloat16_t;
constexpr int kHeadDim = 64;
constexpr int kMaxSplits = 256;
constexpr int kMaxDynamicSplitBatch = 992;  // prepare_varlen_num_blocks' limit (32 * 31)

thread_local std::string g_last_error;

size_t align256(size_t n) { return (n + 255) & ~size_t(255); }

// Caller-provided workspace, carved in this order: scheduler metadata (semaphore + per-batch dynamic
// split counts), softmax LSE [h, total_q], then for splits > 1 LSE partials [splits, h, total_q] and
// output partials [splits, h, total_q, d] (fp32).
struct WorkspaceLayout {
  size_t sem, lse, lse_accum, o_accum, total;
  WorkspaceLayout(int batch, int total_q, int h, int splits) {
    sem = 0;
    lse = align256(sizeof(int) * (1 + size_t(batch)));
    lse_accum = lse + align256(sizeof(float) * size_t(h) * total_q);
    const size_t n_acc = splits > 1 ? size_t(splits) * h * total_q : 0;
    o_accum = lse_accum + align256(sizeof(float) * n_acc);
    total = o_accum + align256(sizeof(float) * n_acc * kHeadDim);
  }
};

void require(bool cond, const char* what) {
  if (!cond) throw std::invalid_argument(what);
}

int round_up(int x, int m) { return (x + m - 1) / m * m; }

std::tuple<int, int, bool, bool> tile_for(const Flash_fwd_params& p, bool paged_non_tma) {
  return tile_size_fwd_sm90(p.d_rounded, p.dv_rounded, p.is_causal, p.is_local, 2, false, paged_non_tma,
                            false, use_one_mma_wg(p));
}

// Paged KV through TMA only when pages are whole kBlockN tiles and the query side is large enough
// (flash_api.cpp get_pagedkv_tma; never for local attention, which moves k_ptr per block).
bool choose_pagedkv_tma(const Flash_fwd_params& p) {
  if (!p.page_table || p.is_local) return false;
  auto tile = tile_for(p, false);
  return p.page_size % std::get<1>(tile) == 0 && p.seqlen_q * (p.h / p.h_k) > std::get<0>(tile);
}

bool choose_pack_gqa(const Flash_fwd_params& p) {
  if ((p.page_table && !p.pagedkv_tma) || p.num_splits > 1) return true;
  if (p.h / p.h_k == 8 && p.is_local) return true;  // the fork's hdim-64 / 8:1 GQA / local override
  if (p.h == p.h_k) return false;
  auto tile = tile_for(p, p.page_table && !p.pagedkv_tma);
  return should_pack_gqa(true, p.seqlen_q, p.h / p.h_k, std::get<0>(tile));
}

int choose_num_splits(const Flash_fwd_params& p) {
  auto tile = tile_for(p, p.page_table && !p.pagedkv_tma);
  const int block_m = std::get<0>(tile), block_n = std::get<1>(tile);
  const int seqlen_k_loaded =
      !p.is_local ? p.seqlen_k
                  : std::max(0, std::min(p.seqlen_k, p.window_size_right + p.window_size_left + 1 + block_m));
  const int n_blocks = (seqlen_k_loaded + block_n - 1) / block_n;
  const int m_blocks = (p.seqlen_q * (p.h / p.h_k) + block_m - 1) / block_m;
  const int one_kv_head = p.seqlen_k * (p.d + p.dv) * 2;
  const int total_mblocks = (p.num_splits_dynamic_ptr ? 1 : p.b) * p.h_k * m_blocks;
  return num_splits_heuristic(total_mblocks, p.num_sm, n_blocks, m_blocks, one_kv_head, p.is_causal || p.is_local,
                              128);
}

// The five units in build_config.yaml: <Split, PagedKVNonTMA, PackGQA> with Arch 90, bf16, d 64, no softcap.
void dispatch(Flash_fwd_params& p, cudaStream_t stream) {
  const bool split = p.num_splits > 1, paged_non_tma = p.page_table && !p.pagedkv_tma;
  const bool pack = p.pack_gqa || paged_non_tma || split;
  if (split) {
    if (paged_non_tma) return run_mha_fwd_<90, bf16, 64, 64, true, true, false, true>(p, stream);
    return run_mha_fwd_<90, bf16, 64, 64, true, false, false, true>(p, stream);
  }
  if (paged_non_tma) return run_mha_fwd_<90, bf16, 64, 64, false, true, false, true>(p, stream);
  if (pack) return run_mha_fwd_<90, bf16, 64, 64, false, false, false, true>(p, stream);
  return run_mha_fwd_<90, bf16, 64, 64, false, false, false, false>(p, stream);
}

__global__ void fa3_probe_kernel() {}

}  // namespace

MV_API const char* mv_fa3_last_error() { return g_last_error.c_str(); }

MV_API int mv_fa3_probe() {
  cudaFuncAttributes attr;
  return static_cast<int>(cudaFuncGetAttributes(&attr, fa3_probe_kernel));
}

// Bytes of workspace mv_fa3_fwd needs for up to `max_splits` KV splits (1 = never split).
MV_API size_t mv_fa3_workspace_bytes(int batch, int total_q, int num_heads_q, int head_dim, int max_splits) {
  if (batch < 0 || total_q < 0 || num_heads_q <= 0 || head_dim != kHeadDim) return 0;
  return WorkspaceLayout(batch, total_q, num_heads_q, std::min(std::max(max_splits, 1), kMaxSplits)).total;
}

// out, q: [total_q, Hq, 64] bf16 contiguous; k_cache/v_cache: [num_pages, page_size, Hkv, 64] bf16
// contiguous; page_table: int32 [batch, max_pages_per_seq]; cu_seqlens_q: int32 [batch+1];
// seqused_k: int32 [batch] (keys per sequence, queries are its last tokens: bottom-right causal);
// window_left: keys visible to the left of the query's own position (GPT-OSS sliding layers: 127), -1 = all;
// sinks: bf16 [Hq] or NULL; num_splits: 0 = heuristic, else forced (capped by the workspace and 256).
//
// Scheduler metadata shared across layers (sched_mode): the varlen scheduler's per-sequence split counts
// depend only on the step's batch and the attention kind (window), not on the layer, yet FA3 recomputes
// them (prepare_varlen_num_blocks, one launch) in every call. sched_mode 0: as FA3 does, in the
// workspace. 1: compute them into `sched` (int32 [batch]) and use them. 2: use `sched` as a previous
// mode-1 call with the same sizes, window, num_splits and workspace_bytes left it - no scheduler launch.
// In modes 1 and 2 `semaphore` (one int32, 0 on entry; a zeroed int per layer) is this call's tile
// counter, so the caller zeroes all layers' counters with one memset per step.
MV_API int mv_fa3_fwd(void* out, const void* q, const void* k_cache, const void* v_cache, const int* page_table,
                      int max_pages_per_seq, const int* cu_seqlens_q, const int* seqused_k, int batch, int total_q,
                      int max_seqlen_q, int max_seqlen_k, int num_heads_q, int num_heads_kv, int head_dim,
                      int num_pages, int page_size, float softmax_scale, int causal, int window_left,
                      const void* sinks, int num_splits, void* workspace, size_t workspace_bytes, int* sched,
                      int* semaphore, int sched_mode, void* stream_) {
  g_last_error.clear();
  try {
    const cudaStream_t stream = static_cast<cudaStream_t>(stream_);
    require(head_dim == kHeadDim, "this FA3 build supports head_dim 64 only");
    require(batch >= 0 && total_q >= 0 && max_seqlen_q >= 0 && max_seqlen_k >= 0, "negative size");
    require(num_heads_kv > 0 && num_heads_q % num_heads_kv == 0, "num_heads_q must be a multiple of num_heads_kv");
    require(page_table && page_size > 0 && num_pages > 0 && max_pages_per_seq > 0, "paged KV required");
    require(cu_seqlens_q && seqused_k, "cu_seqlens_q and seqused_k are required");
    require(!sinks || num_heads_q <= 64, "sinks need <= 64 query heads");
    require(num_splits >= 0 && num_splits <= kMaxSplits, "num_splits must be in [0, 256]");
    require(sched_mode >= 0 && sched_mode <= 2, "sched_mode must be 0, 1 or 2");
    require(sched_mode == 0 || (sched && semaphore), "sched_mode 1/2 need sched and semaphore");
    int device = 0, major = 0, minor = 0, sms = 0;
    if (cudaError_t e = cudaGetDevice(&device)) return e;
    cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device);
    cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device);
    cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
    if (major * 10 + minor != 90) {
      g_last_error = "this FA3 build runs on sm_90 (H100/H200) only";
      return cudaErrorNoKernelImageForDevice;
    }
    if (total_q == 0 || batch == 0) return cudaSuccess;
    WorkspaceLayout need1(batch, total_q, num_heads_q, 1);
    require(workspace && workspace_bytes >= need1.total, "workspace too small (see mv_fa3_workspace_bytes)");
    char* ws = static_cast<char*>(workspace);
    const int h = num_heads_q, hk = num_heads_kv, d = head_dim;
    if (max_seqlen_k == 0) {  // no keys: zero output, as mha_fwd does
      return cudaMemsetAsync(out, 0, sizeof(uint16_t) * size_t(total_q) * h * d, stream);
    }

    // Window normalisation as in mha_fwd: a window covering everything is no window; a single query row
    // without a window needs no causal mask.
    int wl = window_left >= 0 ? window_left : -1, wr = -1;
    if (wl >= max_seqlen_k - 1) wl = -1;
    bool is_causal = causal != 0;
    if (max_seqlen_q == 1 && wl == -1) is_causal = false;
    if (is_causal) wr = 0;
    if (!is_causal && wl >= 0) wr = -1;

    Flash_fwd_params p = {};
    p.is_bf16 = true;
    p.q_ptr = const_cast<void*>(q);
    p.k_ptr = const_cast<void*>(k_cache);
    p.v_ptr = const_cast<void*>(v_cache);
    p.o_ptr = out;
    p.q_row_stride = p.o_row_stride = int64_t(h) * d;
    p.q_head_stride = p.o_head_stride = d;
    p.k_row_stride = p.v_row_stride = int64_t(hk) * d;
    p.k_head_stride = p.v_head_stride = d;
    p.k_batch_stride = p.v_batch_stride = int64_t(page_size) * hk * d;  // one page
    p.v_dim_stride = 1;
    p.cu_seqlens_q = const_cast<int*>(cu_seqlens_q);
    p.seqused_k = const_cast<int*>(seqused_k);
    p.softmax_lse_ptr = ws + need1.lse;
    p.b = p.b_k = batch;
    p.h = h;
    p.h_k = hk;
    p.seqlen_q = max_seqlen_q;
    p.seqlen_k = max_seqlen_k;
    p.seqlen_q_rounded = round_up(max_seqlen_q, 128);
    p.seqlen_k_rounded = round_up(max_seqlen_k, 128);
    p.d = p.d_rounded = p.dv = p.dv_rounded = d;
    p.total_q = total_q;
    p.total_k = batch * page_size;
    p.scale_softmax = softmax_scale;
    p.p_dropout = 1.f;  // keep probability
    p.rp_dropout = 1.f;
    p.p_dropout_in_uint8_t = 255;
    p.is_causal = wl < 0 && wr == 0;
    p.is_local = (wl >= 0 || wr >= 0) && !p.is_causal;
    if (wl < 0 && wr >= 0) wl = max_seqlen_k - 1;
    if (wl >= 0 && wr < 0) wr = max_seqlen_q - 1;
    p.window_size_left = wl;
    p.window_size_right = wr;
    p.arch = 90;
    p.num_sm = sms;
    p.page_table = const_cast<int*>(page_table);
    p.page_table_batch_stride = max_pages_per_seq;
    p.page_size = page_size;
    p.num_pages = num_pages;
    p.s_aux_ptr = const_cast<void*>(sinks);
    p.cp_world_size = 1;

    const bool dynamic_split = batch <= kMaxDynamicSplitBatch && num_splits != 1;
    p.num_splits_dynamic_ptr = dynamic_split ? reinterpret_cast<int*>(1) : nullptr;  // the heuristic looks at it
    p.pagedkv_tma = choose_pagedkv_tma(p);
    int splits = num_splits > 0 ? num_splits : choose_num_splits(p);
    while (splits > 1 && WorkspaceLayout(batch, total_q, h, splits).total > workspace_bytes) --splits;
    p.num_splits = std::max(splits, 1);
    p.pack_gqa = choose_pack_gqa(p);

    int* sem = sched_mode ? semaphore : reinterpret_cast<int*>(ws + need1.sem);
    p.tile_count_semaphore = sem;  // varlen always uses the dynamic persistent scheduler
    p.num_splits_dynamic_ptr = !dynamic_split ? nullptr : sched_mode ? sched : sem + 1;
    p.skip_scheduler_metadata_computation = dynamic_split && sched_mode == 2;
    if (!dynamic_split && sched_mode == 0) {  // otherwise the scheduler kernel or the caller zeroes it
      if (cudaError_t e = cudaMemsetAsync(sem, 0, sizeof(int), stream)) return e;
    }
    if (p.num_splits > 1) {
      WorkspaceLayout lay(batch, total_q, h, p.num_splits);
      p.softmax_lseaccum_ptr = ws + lay.lse_accum;
      p.oaccum_ptr = ws + lay.o_accum;
      p.oaccum_split_stride = int64_t(h) * total_q * d;
      p.oaccum_head_stride = int64_t(total_q) * d;
      p.oaccum_row_stride = d;
      p.lseaccum_split_stride = int64_t(h) * total_q;
      p.lseaccum_head_stride = total_q;
    }
    dispatch(p, stream);
    if (p.num_splits > 1) run_mha_fwd_combine_<bf16, float, 64>(p, stream, true);  // partials -> out (bf16)
    return static_cast<int>(cudaGetLastError());
  } catch (const std::exception& e) {
    g_last_error = e.what();
    return cudaErrorInvalidValue;
  }
}
