// Load-time check for the kernels module: does this GPU run the cubins we carry?
//
// Why: a module built for another architecture loads fine and only fails at the first launch; the
// Python loader calls this once so a mismatch is reported at start-up (cudaErrorNoKernelImageForDevice).
#include "mv_common.cuh"

namespace {
__global__ void probe_kernel() {}
}  // namespace

MV_API int mv_kernels_probe() {
  cudaFuncAttributes attr;
  return static_cast<int>(cudaFuncGetAttributes(&attr, probe_kernel));
}
