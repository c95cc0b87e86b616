#!/usr/bin/env bash
# GPU check: one prepared run on a CUDA machine without network access, < 8 minutes, one summary at the end.
#
#   1. the exactness tests (tests/test_samplers.py, test_loss.py, test_conversion.py, test_trainer_grpo.py; they
#      pin the semantics in float64 / fp32 on the CPU side of the machine, so they prove the installed stack);
#   2. benchmarks/cuda_exactness.py: the same identities on CUDA (float64 exact, bf16 to bf16 precision);
#   3. benchmarks/decode_throughput.py in bf16 on CUDA with a larger model (~25M parameters, trained 60 s).
#
# Stage time limits (180 + 50 + 210 s) keep the worst case under 8 minutes; a stage over its limit fails.
#
# Install without network: bring wheels made on a connected machine of the same platform/Python, e.g.
#   pip download -d wheels/ torch==2.13.0     # on Linux x86_64 the PyPI wheel is a CUDA build (or use a
#                                             # https://download.pytorch.org/whl/cuXXX index matching the driver)
#   pip wheel -w wheels/ ".[dev]"             # this package and every other dependency, as wheels
# then on the GPU machine, from the repository root:
#   python3 -m venv .venv-gpu && . .venv-gpu/bin/activate
#   pip install --no-index --find-links wheels/ torch "dgr2-trl[dev]"
#   bash benchmarks/gpu_check.sh            # PYTHON=/path/to/python to use another interpreter
#
# Written without a GPU at hand (the CPU parts ran here; the CUDA parts were not run): it refuses to start
# without CUDA rather than benchmarking the CPU. Exit status: 0 only if every stage passed.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
OUT=${GPU_CHECK_OUT:-benchmarks/results/gpu_check}
mkdir -p "$OUT"

if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "gpu_check: FAILED: CUDA is not available to $PY ($("$PY" -c 'import torch; print("torch", torch.__version__)' 2>&1))." >&2
    echo "gpu_check: install a CUDA build of torch (see the header of this script) on a machine with an NVIDIA GPU." >&2
    exit 2
fi
"$PY" -c 'import torch; print("gpu_check:", torch.cuda.get_device_name(0), "| torch", torch.__version__, "| CUDA", torch.version.cuda)'

declare -a SUMMARY
FAILED=0
stage() {  # stage NAME TIMEOUT_S COMMAND...: run, time and record one stage, its log in $OUT/NAME.log
    local name=$1 limit=$2; shift 2
    local start=$SECONDS status
    timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
    status=$?
    local took=$((SECONDS - start))
    if [ $status -eq 0 ]; then
        SUMMARY+=("PASS  $name (${took}s)")
    else
        [ $status -eq 124 ] && SUMMARY+=("FAIL  $name: timed out after ${limit}s") || SUMMARY+=("FAIL  $name: exit $status (${took}s), see $OUT/$name.log")
        FAILED=1
        tail -20 "$OUT/$name.log"
    fi
}

# 1. exactness tests (one process; ~3 min on 2 shared CPU cores here, less on a server CPU)
stage exactness_tests 180 "$PY" -m pytest -p no:cacheprovider -q -p no:warnings \
    tests/test_samplers.py tests/test_loss.py tests/test_conversion.py tests/test_trainer_grpo.py

# 2. the same identities on CUDA
stage cuda_exactness 50 "$PY" benchmarks/cuda_exactness.py --device cuda

# 3. decode throughput, bf16 on CUDA, larger model: 60 s of training, then 16 prompts x 2 batch sizes x 5 samplers
stage decode_benchmark 210 "$PY" benchmarks/decode_throughput.py --device cuda --dtype bfloat16 \
    --hidden-size 512 --num-layers 8 --num-heads 8 --num-kv-heads 2 --intermediate-size 1536 \
    --train-seconds 60 --train-batch-size 32 --num-prompts 16 --thresholds 1.0 0.9 0.5 --repeats 1 \
    --out "$OUT/decode_throughput.json"

echo
echo "================ gpu_check summary ($SECONDS s) ================"
printf '%s\n' "${SUMMARY[@]}"
grep -h '^{' "$OUT/cuda_exactness.log" 2>/dev/null | sed 's/^/cuda_exactness: /'
if [ -f "$OUT/decode_throughput.json" ]; then
    "$PY" - "$OUT/decode_throughput.json" <<'EOF'
import json, sys
report = json.load(open(sys.argv[1]))
print(f"decode ({report['machine'].get('gpu')}, {report['model']['parameters'] / 1e6:.1f}M params, "
      f"{report['model']['dtype']}, {report['model']['train_steps']} train steps):")
for r in report["results"]:
    tau = "" if r["threshold"] is None else f" tau={r['threshold']}"
    print(f"  batch {r['batch_size']:>2} {r['sampler']}{tau}: {r['tokens_per_s']:.0f} tok/s, "
          f"{r['speedup_vs_ar_sampler']:.2f}x AR sampler, {r['forward_passes_per_token']:.3f} passes/token, "
          f"exact match {r['exact_match']:.2f}")
EOF
fi
[ $FAILED -eq 0 ] && echo "gpu_check: ALL PASSED" || echo "gpu_check: FAILED (logs in $OUT)"
exit $FAILED
