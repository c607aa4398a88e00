#!/usr/bin/env bash
# Everything a GPU session measures, in one call that fits ~9 minutes:   bash benchmarks/run_gpu.sh "$OUT"
#
#   1. carried wheels (.whl/*.whl) installed into /tmp/site, never touching torch    (benchmarks/GPU.md lists them)
#   2. device and library versions                                                   -> OUT/env.txt
#   3. the test suite with CUDA present (python -m pytest -q tests -x)               -> OUT/pytest.log
#   4. bench_linear_ce.py at the issue's size: Llama-3-8B head, 16k tokens, bf16     -> OUT/linear_ce.json, .log
#   5. bench_preference.py: DPO and ORPO, 8 pairs x 2048 tokens, same head, bf16     -> OUT/preference.json, .log
#   6. roofline.py: this GPU's bf16 matmul TFLOP/s, each method's fraction of it     -> OUT/roofline.json, .log
#   7. scaling.py: memory and time vs N (1k..64k) and vs V (32k..256k), PNGs        -> OUT/scaling*.{json,png}, .log
#
# Every step has its own time limit (seconds below) and a failing step does not stop the next; the exit codes are
# summarised at the end and in OUT/summary.txt. Total of the limits: 540 s. SKIP="pytest scaling" leaves steps out.
set -u
OUT=${1:?usage: bash benchmarks/run_gpu.sh OUT_DIR}
mkdir -p "$OUT"
cd "$(dirname "$0")/.."
SUMMARY="$OUT/summary.txt"
: >"$SUMMARY"

step() {  # step NAME LIMIT_S COMMAND...: run with a time limit, log to OUT/NAME.log, record the exit code
    local name=$1 limit=$2
    shift 2
    if [[ " ${SKIP:-} " == *" $name "* ]]; then echo "$name: skipped (SKIP)" | tee -a "$SUMMARY"; return; fi
    echo "=== $name (limit ${limit}s): $*"
    local start=$SECONDS
    timeout --kill-after=10 "$limit" "$@" >"$OUT/$name.log" 2>&1
    local rc=$?
    tail -n 25 "$OUT/$name.log"
    echo "$name: exit $rc in $((SECONDS - start)) s$([ $rc = 124 ] && echo ' (TIMED OUT)')" | tee -a "$SUMMARY"
}

# 1. Carried wheels: --no-deps, so pip never replaces the machine's torch.
if compgen -G ".whl/*.whl" >/dev/null; then
    step wheels 30 pip install --no-index --no-deps --target /tmp/site .whl/*.whl
fi
export PYTHONPATH="$PWD:/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
unset TRITON_INTERPRET

# 2. Device and versions.
step env 30 python - <<'EOF'
import importlib, platform, torch
print("python", platform.python_version(), "| torch", torch.__version__, "| cuda", torch.version.cuda)
print("device", torch.cuda.get_device_name() if torch.cuda.is_available() else "NO CUDA DEVICE")
for name in ("triton", "fastalign", "liger_kernel", "trl", "cut_cross_entropy", "bitsandbytes", "transformers"):
    try:
        module = importlib.import_module(name)
        print(f"{name} {getattr(module, '__version__', '?')} ({module.__file__})")
    except Exception as error:
        print(f"{name} MISSING: {type(error).__name__}: {error}")
EOF
cp "$OUT/env.log" "$OUT/env.txt"
nvidia-smi >>"$OUT/env.txt" 2>&1 || true

# 3. Tests, CUDA present (the cuda-marked tests run here and only here).
step pytest 140 python -m pytest -q tests -x

# 4-5. The kernel benchmarks at the issue's GPU sizes (their --device cuda defaults: Llama-3-8B head, bf16).
step linear_ce 100 python benchmarks/bench_linear_ce.py --device cuda --tokens 16384 --dim 4096 --vocab 128256 \
    --dtype bfloat16 --modes frozen,trainable,logprobs --out "$OUT"
step preference 80 python benchmarks/bench_preference.py --device cuda --pairs 8 --seq 2048 --dim 4096 \
    --vocab 128256 --dtype bfloat16 --out "$OUT"

# 6. Roofline: the matmul rate measured now, on this GPU, against the timings just taken.
step roofline 25 python benchmarks/roofline.py --device cuda --results "$OUT"

# 7. Scaling plots: 7 sizes, the GPU methods only, 3 reps, 25 s per size; scaling.json is written after every size,
#    so the re-plot below draws whatever was measured even if the sweep ran out of time.
step scaling 120 python benchmarks/scaling.py --device cuda --reps 3 --point-timeout 25 --out "$OUT" \
    --methods naive,torch_chunked,liger,cce,fastalign_triton
step replot 15 python benchmarks/scaling.py --device cuda --from-json "$OUT/scaling.json" --out "$OUT"

echo "=== summary"
cat "$SUMMARY"
ls -la "$OUT"
