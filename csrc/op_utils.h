// Torch-side helpers shared by the op files: input checks and, in CUDA builds, the current stream.
//
// Only generic c10 headers are used: the current CUDA stream is reached through the device-generic guard
// interface (c10::impl::VirtualGuardImpl), so no c10/cuda or ATen/cuda header is needed. That keeps every .cpp
// compilable against a CPU-only torch, and the CUDA kernels themselves are torch-free (cuda/launch.h).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/impl/VirtualGuardImpl.h>

namespace fastalign {

// ``t`` as a contiguous float32 [n] tensor on ``device`` (a copy only when it is strided).
inline at::Tensor f32_vector(const char* name, const at::Tensor& t, int64_t n, const at::Device& device) {
  TORCH_CHECK(t.scalar_type() == at::kFloat && t.dim() == 1 && t.size(0) == n && t.device() == device, "fastalign: ",
              name, " must be a float32 [", n, "] tensor on ", device, ", got ", t.scalar_type(), " ", t.sizes(),
              " on ", t.device());
  return t.contiguous();
}

// ``t`` as a 0-dim float32 tensor on ``device``.
inline at::Tensor f32_scalar(const char* name, const at::Tensor& t, const at::Device& device) {
  TORCH_CHECK(t.scalar_type() == at::kFloat && t.numel() == 1 && t.device() == device, "fastalign: ", name,
              " must be a one-element float32 tensor on ", device, ", got ", t.scalar_type(), " ", t.sizes(), " on ",
              t.device());
  return t.reshape({}).contiguous();
}

// ``t`` as a contiguous bool [n] tensor on ``device``.
inline at::Tensor bool_vector(const char* name, const at::Tensor& t, int64_t n, const at::Device& device) {
  TORCH_CHECK(t.scalar_type() == at::kBool && t.dim() == 1 && t.size(0) == n && t.device() == device, "fastalign: ",
              name, " must be a bool [", n, "] tensor on ", device, ", got ", t.scalar_type(), " ", t.sizes(), " on ",
              t.device());
  return t.contiguous();
}

#ifdef FASTALIGN_WITH_CUDA
// The stream PyTorch is currently using on ``device`` (a cudaStream_t), so kernels order with the caller's work.
inline void* cuda_stream(const at::Device& device) {
  return c10::impl::VirtualGuardImpl(device.type()).getStream(device).native_handle();
}

// Launchers in cuda/ return nullptr or the CUDA error string of their launch.
inline void check_launch(const char* error) { TORCH_CHECK(error == nullptr, "fastalign: CUDA launch failed: ", error); }
#endif

}  // namespace fastalign
