#!/usr/bin/env bash
# Compile-check the CUDA build of fastalign's extension without a GPU (what CI runs when nvcc is present).
#
#   1. nvcc -c every csrc/cuda/*.cu for sm_80 and sm_90 (torch's include dirs on the path, as a JIT build has).
#   2. The host compiler builds every csrc/*.cpp with -DFASTALIGN_WITH_CUDA, i.e. with their CUDA registrations.
#   3. Everything links into one shared library against torch and libcudart, and a fresh Python loads it with
#      torch.ops.load_library and checks that each op has a CPU and a CUDA kernel.
#
# This works with a CPU-only torch wheel, which ships no usable CUDA headers (c10/cuda misses its generated
# cuda_cmake_macros.h; ATen/cuda needs cuSPARSE/cuBLAS headers): the .cu files include only the CUDA runtime
# and fastalign's own torch-free headers (csrc/cuda/launch.h), and the .cpp files reach the current CUDA stream
# through c10's device-generic guard interface. Nothing here runs a kernel.
#
# Usage: csrc/check_cuda_build.sh            (env: PYTHON, CXX, CUDA_HOME, NVCC_ARCH_FLAGS override the defaults)
# Takes well under a minute on 2 cores.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
python="${PYTHON:-python}"
cxx="${CXX:-c++}"
cuda_home="${CUDA_HOME:-${CUDA_PATH:-/usr/local/cuda}}"
nvcc="$cuda_home/bin/nvcc"
[[ -x "$nvcc" ]] || nvcc="$(command -v nvcc)" || { echo "check_cuda_build: nvcc not found" >&2; exit 1; }
arch_flags=(${NVCC_ARCH_FLAGS:--gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90})

read -r torch_lib includes < <("$python" -c "
import os, torch
from torch.utils.cpp_extension import include_paths
print(os.path.join(os.path.dirname(torch.__file__), 'lib'), ' '.join(include_paths()))")
isystem=()
for dir in $includes; do isystem+=(-isystem "$dir"); done

out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
start=$SECONDS
pids=()

# 1. CUDA kernels (torch-free translation units).
for src in "$here"/cuda/*.cu; do
  "$nvcc" -c "$src" -o "$out/$(basename "$src").o" -std=c++20 -O3 -Xcompiler -fPIC "${arch_flags[@]}" \
    "${isystem[@]}" &
  pids+=($!)
done
# 2. Torch-side ops with their CUDA registrations (host compiler, as a JIT CUDA build compiles them).
for src in "$here"/*.cpp; do
  "$cxx" -c "$src" -o "$out/$(basename "$src").o" -std=c++20 -O3 -fPIC -fopenmp -Wall -Wextra \
    -DFASTALIGN_WITH_CUDA "${isystem[@]}" &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=1; done
[[ $status -eq 0 ]] || { echo "check_cuda_build: compilation failed" >&2; exit 1; }

# 3. Link and load.
library="$out/fastalign_ext_cuda.so"
"$cxx" -shared -fopenmp "$out"/*.o -o "$library" -L"$torch_lib" -lc10 -ltorch_cpu -ltorch \
  -L"$cuda_home/lib64" -lcudart -Wl,-rpath,"$cuda_home/lib64"
"$python" - "$library" <<'EOF'
import sys

import torch

torch.ops.load_library(sys.argv[1])
ops = ["segment_sum", "dpo_terms", "orpo_terms", "kto_terms", "cpo_terms", "bradley_terry_terms"]
missing = [
    f"{name}{suffix}:{key}"
    for name in ops
    for suffix in ("", "_backward")
    for key in ("CPU", "CUDA")
    if not torch._C._dispatch_has_kernel_for_dispatch_key(f"fastalign::{name}{suffix}", key)
]
if missing:
    sys.exit(f"check_cuda_build: kernels not registered: {', '.join(missing)}")
EOF
echo "check_cuda_build: OK ($(basename "$nvcc") $("$nvcc" --version | sed -n 's/.*release \([0-9.]*\).*/\1/p'), \
${arch_flags[*]}; $((SECONDS - start)) s)"
