#!/usr/bin/env bash
# Everything a GPU session measures, in one call that ends within a budget (default 480 s, ~8 min on an H100):
#
#   bash benchmarks/run_gpu.sh "$OUT"                  # on the GPU machine (benchmarks/GPU.md: timeout_s ~540)
#   DRY_RUN=1 bash benchmarks/run_gpu.sh /tmp/plan     # on CPU: print the plan, check every command line (~25 s)
#
# The steps, in priority order, each with its time limit and the least time worth starting it with (seconds):
#
#   prio step        limit  min  what                                                              -> OUT/
#   -    wheels         20   10  carried .whl/*.whl into /tmp/site, --no-deps (torch untouched)     wheels.log
#   -    env            20   10  date, git commit, device, driver, python/torch/triton/... versions env.txt
#   1    ext_build     100   30  build the C++/CUDA extension (python -m fastalign.ext)             ext_build.log
#   1    pytest        140   60  the GPU tests only: pytest -k "$PYTEST_SELECT" (below)             pytest.log, .xml
#   2    linear_ce      90   40  bench_linear_ce.py: Llama-3-8B head, 16k tokens, bf16, 3 modes      linear_ce.json
#   2    preference    110   45  bench_preference.py: DPO + ORPO, 8 pairs x 2048, same head, bf16    preference.json
#   3    qlora_tests    45   20  pytest -k "$QLORA_SELECT": the 4-bit/8-bit LoRA models on the GPU   qlora_tests.log
#   3    sft_step       60   30  bench_sft_step.py: one QLoRA (nf4) optimizer step, hf vs fastalign  sft_step.json
#   4    roofline       20   10  roofline.py: measured bf16 matmul rate, each method's fraction      roofline.json
#   4    scaling       120   30  scaling.py: memory/time vs N and vs V, on what is left (-15 s)      scaling.json
#   4    replot         15    5  scaling.py --from-json: the PNGs from whatever the sweep measured    scaling_*.png
#
# Budget: the script counts seconds from its start. A step starts only if at least `min` seconds of the budget are
# left, and runs for at most min(limit, seconds left); otherwise it is recorded as "skipped: budget". The limits up
# to priority 2 add up to the budget, so those always start; 3 and 4 run on whatever the earlier steps leave. Every
# benchmark rewrites its JSON after each method or case ("complete": false until the end), so a step cut off by its
# limit still banks what it measured. A failing step does not stop the next. OUT/summary.txt gets one line per step
# as it ends.
#
# Environment: GPU_BUDGET_S (default 480); SKIP="scaling replot" leaves steps out; PYTHON (default: python on
# PATH); DRY_RUN=1: nothing runs, the plan is printed as if every step used its whole limit, and every command line
# is checked instead: each script parses exactly these flags (and method names), the env script compiles, each
# pytest selection collects > 0 tests here, and with CUDA pretended the kernel selection holds the Triton backend,
# the extension ops on cuda and the fused heads on cuda. DRY_RUN=plan prints the plan only (~0 s).
set -u
OUT=${1:?usage: bash benchmarks/run_gpu.sh OUT_DIR   (DRY_RUN=1 to check the plan on CPU)}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
cd "$(dirname "$0")/.."
BUDGET_S=${GPU_BUDGET_S:-480}
DRY_RUN=${DRY_RUN:-0}
CHECK=0  # DRY_RUN=1 checks the command lines too; DRY_RUN=plan only prints the plan
[[ $DRY_RUN == 1 ]] && CHECK=1
[[ $DRY_RUN == plan ]] && DRY_RUN=1
PY=${PYTHON:-$(command -v python || command -v python3)}
SUMMARY="$OUT/summary.txt"
PLANNED="$OUT/dry_run_commands.tsv"  # DRY_RUN: one line per planned command, tab-separated, for the checks
# The tests that exercise the GPU (kernels and their float64 references): -k matches test names, parametrization
# ids and marker names, so this takes the `cuda`-marked tests, every `*-cuda` / `[cuda-...]` parametrization
# (head_cases.IMPLEMENTATIONS, test_ext.py's device fixture) and tests/test_triton_backend.py, whose tests run on
# the GPU whenever there is one. The rest of the suite runs on CPU in CI and says nothing new here.
PYTEST_SELECT="cuda or triton_backend"
QLORA_SELECT="qlora or quantized"
: >"$SUMMARY"
[[ $DRY_RUN == 1 ]] && : >"$PLANNED"
CLOCK=0  # DRY_RUN: the simulated elapsed time, every step taking its whole limit

elapsed() { if [[ $DRY_RUN == 1 ]]; then echo "$CLOCK"; else echo "$SECONDS"; fi; }
record() { echo "$1" | tee -a "$SUMMARY"; }

step() {  # step NAME LIMIT MIN COMMAND...: run within min(LIMIT, budget left), log to OUT/NAME.log
    local name=$1 limit=$2 min=$3
    shift 3
    local now left
    now=$(elapsed)
    left=$((BUDGET_S - now))
    if [[ $DRY_RUN == 1 ]]; then  # every command line is checked, also those of steps the plan skips
        if [[ "${*: -1}" == "-" ]]; then cat >"$OUT/$name.stdin.py"; fi  # a script on stdin: compiled by the check
        { printf '%s' "$name"; printf '\t%s' "$@"; printf '\n'; } >>"$PLANNED"
    fi
    if [[ " ${SKIP:-} " == *" $name "* ]]; then record "$name: skipped: SKIP"; return; fi
    if ((left < min)); then record "$name: skipped: budget (${left} s left at ${now} s, needs ${min} s)"; return; fi
    ((limit > left)) && limit=$left
    if [[ $DRY_RUN == 1 ]]; then
        record "$name: planned at ${now} s, limit ${limit} s: ${*@Q}"
        CLOCK=$((CLOCK + limit))
        return
    fi
    echo "=== $name (limit ${limit} s, at ${now} s of ${BUDGET_S} s): $*"
    local start=$SECONDS
    timeout --kill-after=10 "$limit" "$@" >"$OUT/$name.log" 2>&1
    local rc=$?
    tail -n 25 "$OUT/$name.log"
    record "$name: exit $rc in $((SECONDS - start)) s (limit ${limit} s)$([[ $rc == 124 || $rc == 137 ]] && echo ' (TIMED OUT)')"
}

echo "budget ${BUDGET_S} s$([[ $DRY_RUN == 1 ]] && echo ', DRY RUN'), started $(date -u +%FT%TZ)" | tee -a "$SUMMARY"

# Carried wheels: --no-deps, so pip never replaces the machine's torch (GPU.md lists them).
if compgen -G ".whl/*.whl" >/dev/null; then
    step wheels 20 10 "$PY" -m pip install --no-index --no-deps --target /tmp/site .whl/*.whl
else
    record "wheels: none in .whl/"
fi
export PYTHONPATH="$PWD:/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
[[ $DRY_RUN == 1 ]] || unset TRITON_INTERPRET

# Device and versions, first, so that every result below can be matched to them.
step env 20 10 "$PY" - <<'EOF'
import datetime, importlib, platform, subprocess
import torch
print("date", datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
git = subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True, text=True).stdout.strip()
print("git", git or "?")
print("python", platform.python_version(), "| torch", torch.__version__, "| cuda", torch.version.cuda)
print("device", torch.cuda.get_device_name() if torch.cuda.is_available() else "NO CUDA DEVICE")
for name in ("triton", "fastalign", "transformers", "peft", "liger_kernel", "cut_cross_entropy", "trl",
             "bitsandbytes", "accelerate", "datasets", "pytest"):
    try:
        module = importlib.import_module(name)
        print(f"{name} {getattr(module, '__version__', '?')} ({module.__file__})")
    except Exception as error:
        print(f"{name} MISSING: {type(error).__name__}: {error}")
EOF
if [[ $DRY_RUN != 1 ]]; then
    cp "$OUT/env.log" "$OUT/env.txt"
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv >>"$OUT/env.txt" 2>&1 || true
    nvidia-smi >>"$OUT/env.txt" 2>&1 || true
fi

# 1. The GPU tests: the extension is built first (nvcc + the C++ ops, its own limit), then the kernels against
#    their float64 references. -v names every test in the log as it passes, so a cut-off run still shows how far.
step ext_build 100 30 "$PY" -m fastalign.ext
step pytest 140 60 "$PY" -m pytest tests -v -p no:cacheprovider -k "$PYTEST_SELECT" --durations=15 \
    --junitxml="$OUT/pytest.xml"

# 2. The headline benchmarks at the issue's GPU sizes (Llama-3-8B head, bf16), 10 timed steps after 2 warm-up ones.
step linear_ce 90 40 "$PY" benchmarks/bench_linear_ce.py --device cuda --tokens 16384 --dim 4096 --vocab 128256 \
    --dtype bfloat16 --modes frozen,trainable,logprobs --reps 10 --warmup 2 --out "$OUT"
step preference 110 45 "$PY" benchmarks/bench_preference.py --device cuda --pairs 8 --seq 2048 --dim 4096 \
    --vocab 128256 --dtype bfloat16 --methods naive,liger,liger_eager,fastalign_triton --reps 10 --warmup 2 \
    --out "$OUT"

# 3. QLoRA end to end: the quantized-model tests on the GPU, then one nf4 LoRA optimizer step, hf vs fastalign.
step qlora_tests 45 20 "$PY" -m pytest tests/test_integration_transformers.py tests/test_lm_head.py -v \
    -p no:cacheprovider -k "$QLORA_SELECT"
step sft_step 60 30 "$PY" benchmarks/bench_sft_step.py --device cuda --quantization nf4 --dtype bfloat16 \
    --vocab 128256 --dim 1024 --layers 2 --tokens 8192 --warmup 1 --out "$OUT/sft_step.json"

# 4. Roofline from the JSON just written, then the scaling sweep on whatever time is left (15 s kept for the plots).
step roofline 20 10 "$PY" benchmarks/roofline.py --device cuda --results "$OUT"
left=$((BUDGET_S - $(elapsed) - 15))
sweep=$((left < 120 ? left : 120))
step scaling "$sweep" 30 "$PY" benchmarks/scaling.py --device cuda --reps 3 --point-timeout 25 \
    --time-budget "$((sweep > 10 ? sweep - 10 : 1))" --out "$OUT" --methods naive,torch_chunked,liger,cce,fastalign_triton
if [[ $DRY_RUN == 1 || -f "$OUT/scaling.json" ]]; then
    step replot 15 5 "$PY" benchmarks/scaling.py --device cuda --from-json "$OUT/scaling.json" --out "$OUT"
else
    record "replot: skipped: no scaling.json"
fi

if [[ $DRY_RUN == 1 && $CHECK == 0 ]]; then exit 0; fi
if [[ $DRY_RUN == 1 ]]; then
    echo "=== checks (nothing ran; the plan takes ${CLOCK} s of ${BUDGET_S} s if every step uses its whole limit)"
    "$PY" - "$PLANNED" "$OUT" "$PYTEST_SELECT" "$PY" <<'EOF' || { echo "DRY RUN FAILED"; exit 1; }
"""Check every planned command line without running it: scripts parse their flags, pytest selections collect."""
import argparse, importlib.util, py_compile, re, subprocess, sys, time
from pathlib import Path

planned, out, kernel_select, python = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], sys.argv[4]
start, failures = time.monotonic(), []
# Collection with CUDA pretended: the `*-cuda` parametrizations exist only when torch sees a GPU. bitsandbytes,
# peft and transformers probe CUDA at import, so they are imported first, with the real answer.
PRETEND_CUDA = """import sys, torch
for name in ("bitsandbytes", "peft", "transformers.training_args"):
    try:
        __import__(name)
    except Exception:
        pass
torch.cuda.is_available = lambda: True
import pytest
sys.exit(pytest.main(sys.argv[1:]))"""
# What the GPU selection must hold (node id patterns), as collected with CUDA pretended.
REQUIRED = {"Triton backend": r"^tests/test_triton_backend\.py::", "extension ops on cuda": r"^tests/test_ext\.py::.*\[cuda",
            "fused heads, triton on cuda": r"triton-cuda", "fused heads, torch on cuda": r"torch-cuda"}


def report(name, ok, what):
    print(f"  {'ok  ' if ok else 'FAIL'} {name}: {what}", flush=True)
    if not ok:
        failures.append(name)


class Parsed(Exception):
    pass


def check_script(name, script, args):
    """Import the script and parse exactly these flags: its parse_args() (which also checks method and mode
    names) when it has one, else main() with ArgumentParser.parse_args stopping right after parsing."""
    sys.path.insert(0, str(Path(script).parent.resolve()))
    spec = importlib.util.spec_from_file_location(Path(script).stem, script)
    module = sys.modules[spec.name] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    original = argparse.ArgumentParser.parse_args
    try:
        if callable(getattr(module, "parse_args", None)):
            module.parse_args(args)
        else:

            def parse_then_stop(self, argv=None, namespace=None):
                original(self, argv, namespace)
                raise Parsed

            argparse.ArgumentParser.parse_args = parse_then_stop
            sys.argv = [script, *args]
            try:
                module.main()
                raise RuntimeError("main() returned without parsing its arguments")
            except Parsed:
                pass
    except SystemExit as error:
        return report(name, False, f"{script} rejects its flags (exit {error.code})")
    finally:
        argparse.ArgumentParser.parse_args = original
    report(name, True, f"{script} parses {' '.join(args)}")


def collect_command(args, pretend):
    keep = [a for a in args if a not in ("-v",) and not a.startswith(("--durations", "--junitxml"))]
    head = [sys.executable, "-c", PRETEND_CUDA] if pretend else [sys.executable, "-m", "pytest"]
    return head + keep + ["--collect-only", "-q", "-p", "no:warnings"]


def collected(process):
    text = process.communicate()[0]
    ids = [line for line in text.splitlines() if "::" in line and not line.startswith(("ERROR", " "))]
    found = re.search(r"(\d+)(?:/\d+)? tests? collected", text)
    return (int(found.group(1)) if found else 0), ids, process.returncode, text


lines = [line.rstrip("\n").split("\t") for line in planned.read_text().splitlines() if line.strip()]
collections = {}  # name -> (cpu process, pretended-CUDA process or None), started together: they take ~10 s each
for name, *command in lines:
    if command[:3] == [python, "-m", "pytest"]:
        pretend = kernel_select in command
        run = lambda cmd: subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        collections[name] = (run(collect_command(command[3:], False)),
                             run(collect_command(command[3:], True)) if pretend else None)
for name, *command in lines:
    if command[:2] == [python, "-"]:
        py_compile.compile(str(out / f"{name}.stdin.py"), doraise=True)
        report(name, True, "its script compiles")
    elif command[:2] == [python, "-m"] and command[2] != "pytest":
        found = importlib.util.find_spec(command[2] + ".__main__") or importlib.util.find_spec(command[2])
        report(name, found is not None, f"python -m {command[2]} " + ("is importable" if found else "NOT FOUND"))
    elif command[:1] == [python] and command[1].endswith(".py"):
        check_script(name, command[1], command[2:])
    elif command[:3] != [python, "-m", "pytest"]:
        report(name, False, f"no check for {command[:2]}")
for name, (cpu, pretended) in collections.items():
    count, _, code, text = collected(cpu)
    report(name, code == 0 and count > 0, f"collects {count} tests on this CPU" + ("" if code == 0 else "\n" + text[-2000:]))
    if pretended is not None:
        count, ids, code, text = collected(pretended)
        files = {}
        for node in ids:
            files[node.split("::")[0]] = files.get(node.split("::")[0], 0) + 1
        report(name, count > 0, f"collects {count} tests with CUDA pretended: "
               + ", ".join(f"{Path(f).name} {n}" for f, n in sorted(files.items())))
        for what, pattern in REQUIRED.items():
            hits = sum(bool(re.search(pattern, node)) for node in ids)
            report(name, hits > 0, f"  of which {what}: {hits}")
print(f"checked {len(lines)} commands in {time.monotonic() - start:.0f} s; "
      + (f"FAILED: {', '.join(failures)}" if failures else "all ok"))
sys.exit(1 if failures else 0)
EOF
    echo "dry run passed"
    exit 0
fi
record "total: $SECONDS s of ${BUDGET_S} s"
echo "=== summary"
cat "$SUMMARY"
ls -la "$OUT"
