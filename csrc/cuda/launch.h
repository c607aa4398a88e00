// Host launchers of the CUDA kernels: raw pointers and a cudaStream_t passed as void*, nothing from torch.
//
// The .cu files include only this header, ../loss_heads.h and the CUDA runtime, so nvcc never parses torch
// headers: they compile against any torch (including a CPU-only wheel, which lacks c10/cuda's generated config)
// and in a fraction of the time. The torch-side op files (../segment_sum.cpp, ../loss_heads.cpp) check and
// allocate tensors and call these. Each launcher returns nullptr on success or the CUDA error string.
#pragma once

#include <stdint.h>

#include "../loss_heads.h"

namespace fastalign::cuda {

// out[s] = sum of values[t] over t in [cu_seqlens[s], cu_seqlens[s+1]) with mask[t] (divided by their count when
// ``mean``, 0 when there are none). One block per segment.
const char* segment_sum_forward(const float* values, const bool* mask, const int64_t* cu_seqlens, int64_t segments,
                                bool mean, float* out, void* stream);

// grad_values[t] = mask[t] ? grad[s] (/ count when ``mean``) : 0 for t in segment s. One block per segment.
const char* segment_sum_backward(const float* grad, const bool* mask, const int64_t* cu_seqlens, int64_t segments,
                                 bool mean, float* grad_values, void* stream);

// loss (0-dim) and metrics [Head::kMetrics] of a batch of n pairs, in one single-block launch.
template <class Head>
const char* head_forward(const Head& head, int64_t n, float* loss, float* metrics, void* stream);

// The gradients the head's backward pointers name, for dL/dloss = *grad_loss (read on the device).
template <class Head>
const char* head_backward(const Head& head, int64_t n, const float* grad_loss, void* stream);

}  // namespace fastalign::cuda
