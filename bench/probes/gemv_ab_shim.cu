// bench/probes/gemv_ab.py's other kernel: the tensor-core GEMV of an earlier revision, compiled in a
// namespace of its own beside the current build. The directory holding that revision's
// quant_gemv_tc.cu and kernels.h comes first on the include path; the other headers are today's.
// Its launcher must take (..., bias, residual, out, partials, counters, M, K, N, group_size, splits,
// stream): revisions up to 2b518fc.
#include <c10/cuda/CUDAStream.h>
#include <torch/extension.h>

#define exlsp exlsp_old
#include "quant_gemv_tc.cu"
#undef exlsp

namespace {

void old_gemv(torch::Tensor x, torch::Tensor qweight, torch::Tensor scales, torch::Tensor zeros, torch::Tensor out,
              int64_t group_size) {
  const int M = x.size(0), K = x.size(1), N = qweight.size(1);
  const cudaError_t err = exlsp_old::launch_quant_gemv_tc(
      exlsp_old::Dtype::kHalf, x.data_ptr(), qweight.data_ptr<int32_t>(), scales.data_ptr(), zeros.data_ptr(),
      nullptr, nullptr, out.data_ptr(), nullptr, nullptr, M, K, N, (int)group_size, 1,
      c10::cuda::getCurrentCUDAStream());
  TORCH_CHECK(err == cudaSuccess, cudaGetErrorString(err));
}

void old_pdl(int64_t mode) { exlsp_old::set_pdl_mode((int)mode); }

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("gemv", &old_gemv);
  m.def("set_pdl", &old_pdl);
}
