// fastalign::segment_sum: per-sequence reduction of token log-probs, forward and backward.
//
//   out[s]      = sum_{t in seg s, mask[t]} values[t]          (/ n_s when mean, n_s = #{t in seg s : mask[t]})
//   d out / dv  = mask[t] (/ n_s when mean) for t in seg s,     seg s = [cu_seqlens[s], cu_seqlens[s+1])
//
// An empty segment (n_s = 0) gives 0.0, never NaN. Masked-out positions are skipped, not multiplied by 0, so a
// padding value of -inf or NaN there cannot leak into the result. The CPU twin parallelises over segments and
// accumulates each in double; the CUDA kernels (cuda/segment_sum.cu) use one block per segment.
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/core/DeviceGuard.h>
#include <torch/library.h>

#include "op_utils.h"
#ifdef FASTALIGN_WITH_CUDA
#include "cuda/launch.h"
#endif

namespace fastalign {
namespace {

struct Segments {
  at::Tensor mask, cu_seqlens;
  int64_t total, count;
};

Segments check_segments(const at::Tensor& mask, const at::Tensor& cu_seqlens, int64_t total,
                        const at::Device& device) {
  TORCH_CHECK(cu_seqlens.scalar_type() == at::kLong && cu_seqlens.dim() == 1 && cu_seqlens.size(0) >= 1 &&
                  cu_seqlens.device() == device,
              "fastalign: cu_seqlens must be an int64 [S+1] tensor on ", device, ", got ", cu_seqlens.scalar_type(),
              " ", cu_seqlens.sizes(), " on ", cu_seqlens.device());
  return {bool_vector("mask", mask, total, device), cu_seqlens.contiguous(), total, cu_seqlens.size(0) - 1};
}

at::Tensor segment_sum(const at::Tensor& values, const at::Tensor& mask, const at::Tensor& cu_seqlens, bool mean) {
  TORCH_CHECK(values.dim() == 1, "fastalign: values must be 1-D [total], got ", values.sizes());
  const at::Device device = values.device();
  const at::Tensor v = f32_vector("values", values, values.size(0), device);
  const Segments seg = check_segments(mask, cu_seqlens, v.size(0), device);
  at::Tensor out = at::empty({seg.count}, v.options());
  const float* pv = v.const_data_ptr<float>();
  const bool* pm = seg.mask.const_data_ptr<bool>();
  const int64_t* cu = seg.cu_seqlens.const_data_ptr<int64_t>();
  float* po = out.mutable_data_ptr<float>();
#ifdef FASTALIGN_WITH_CUDA
  if (values.is_cuda()) {
    const c10::DeviceGuard guard(device);
    check_launch(cuda::segment_sum_forward(pv, pm, cu, seg.count, mean, po, cuda_stream(device)));
    return out;
  }
#endif
  at::parallel_for(0, seg.count, 1, [&](int64_t begin, int64_t end) {
    for (int64_t s = begin; s < end; ++s) {
      double sum = 0.0;
      int64_t n = 0;
      for (int64_t t = cu[s]; t < cu[s + 1]; ++t) {
        if (pm[t]) {
          sum += pv[t];
          ++n;
        }
      }
      po[s] = static_cast<float>(mean ? (n > 0 ? sum / n : 0.0) : sum);
    }
  });
  return out;
}

// Tokens outside [cu_seqlens[0], cu_seqlens[S]) (none when the contract holds) get zero gradient.
at::Tensor segment_sum_backward(const at::Tensor& grad, const at::Tensor& mask, const at::Tensor& cu_seqlens,
                                bool mean) {
  const at::Device device = grad.device();
  const Segments seg = check_segments(mask, cu_seqlens, mask.numel(), device);
  const at::Tensor g = f32_vector("grad", grad, seg.count, device);
  at::Tensor grad_values = at::zeros({seg.total}, g.options());
  const float* pg = g.const_data_ptr<float>();
  const bool* pm = seg.mask.const_data_ptr<bool>();
  const int64_t* cu = seg.cu_seqlens.const_data_ptr<int64_t>();
  float* pv = grad_values.mutable_data_ptr<float>();
#ifdef FASTALIGN_WITH_CUDA
  if (grad.is_cuda()) {
    const c10::DeviceGuard guard(device);
    check_launch(cuda::segment_sum_backward(pg, pm, cu, seg.count, mean, pv, cuda_stream(device)));
    return grad_values;
  }
#endif
  at::parallel_for(0, seg.count, 1, [&](int64_t begin, int64_t end) {
    for (int64_t s = begin; s < end; ++s) {
      float scale = pg[s];
      if (mean) {
        int64_t n = 0;
        for (int64_t t = cu[s]; t < cu[s + 1]; ++t) n += pm[t];
        scale = n > 0 ? scale / static_cast<float>(n) : 0.0f;
      }
      for (int64_t t = cu[s]; t < cu[s + 1]; ++t) pv[t] = pm[t] ? scale : 0.0f;
    }
  });
  return grad_values;
}

}  // namespace
}  // namespace fastalign

// One function per op serves both devices: it branches on the tensors' device.
TORCH_LIBRARY_IMPL(fastalign, CPU, m) {
  m.impl("segment_sum", &fastalign::segment_sum);
  m.impl("segment_sum_backward", &fastalign::segment_sum_backward);
}

#ifdef FASTALIGN_WITH_CUDA
TORCH_LIBRARY_IMPL(fastalign, CUDA, m) {
  m.impl("segment_sum", &fastalign::segment_sum);
  m.impl("segment_sum_backward", &fastalign::segment_sum_backward);
}
#endif
