#!/usr/bin/env bash
# One prepared run of the whole GPU path (issue 19), for the first GPU machine available:
#
#   scripts/gpu_check.sh [--dry-run] [OUT]        # OUT: default $OUT, else out/gpu_check
#
# It runs with what the machine has (python3 with CUDA torch; numpy, onnx, onnxruntime, pytest,
# tqdm, matplotlib, scipy, grpcio, protobuf …) plus wheels carried in .whl/, never the project's
# pins. The wheels for the project's GPU machine (Python 3.12; 64 MiB travel with a command):
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_35_x86_64 --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 \
#       -d .whl nvidia-pytriton==0.7.0 tritonclient==2.73.0 python-rapidjson==1.25 onnxsim==0.8.1
# and carry .whl (device run: carry [".whl"], command "bash scripts/gpu_check.sh $OUT"). In order:
#   1. the tests marked gpu (pytest -m gpu: CUDA vs CPU refinement, precision guards, CUDA graphs,
#      bucketed compile, memory-budget chunks, KIND_GPU serving, TensorRT plans where tensorrt exists);
#   2. the refinement benchmark on CUDA, ffhq1024 shapes with seeded random weights (speed does not
#      depend on them): fp32 / tf32 / bf16 / channels_last and the naive baseline, batches 1, 8, 32;
#   3. if the embedded Triton server starts: the load sweep against `--start --gpu` (ffhq1024 shapes,
#      networks in-process on the GPU: --stages-via torch, since the machine has no onnxruntime-gpu);
#   4. the refinement benchmark with torch.compile and CUDA graphs, mobile1024 shapes.
# Each step gets what is left of GPU_CHECK_SECONDS (default 480: the 10-minute command limit less a
# margin for transfers) and is stopped at it; what the machine lacks is skipped with a printed
# reason. At most 8 files come back: gpu_check.log, gpu_tests.xml, refine_*_cuda.json, load.json,
# load.md and summary.md.
#
# --dry-run (any machine): prints the plan and checks that every command parses, running nothing.
set -uo pipefail
cd "$(dirname "$0")/.."

DRY=0
if [ "${1:-}" = "--dry-run" ]; then DRY=1; shift; fi
OUT=${1:-${OUT:-out/gpu_check}}
BUDGET=${GPU_CHECK_SECONDS:-480}
PY=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
START=$(date +%s)
mkdir -p "$OUT"
LOG="$OUT/gpu_check.log"
SUMMARY="$OUT/summary.md"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD:$PWD/client${PYTHONPATH:+:$PYTHONPATH}"

# What fits: the precision variants and the naive baseline on ffhq1024 (the headline's × naive and
# ms per item-step), the load sweep (faces/s, p50), then torch.compile and CUDA graphs on the
# cheaper mobile1024 shapes (each batch size compiles once, about a minute).
COMMON=(--device cuda --batches 1 8 32 --steps 5 --repeats 2 --out "$OUT")
FFHQ_ARGS=(--profile ffhq1024 "${COMMON[@]}" --precision fp32 tf32 bf16 --switches channels_last --naive)
MOBILE_ARGS=(--profile mobile1024 "${COMMON[@]}" --precision fp32 bf16 --switches loss_half compile cuda_graphs --stages refinement inversion)
LOAD_ARGS=(--start --gpu --profile ffhq1024 --stages-via torch --concurrency 1 4 16 --duration 20 --warmup 10
           --out "$OUT")
# name|share of the budget in %|command (each step also stops when the whole budget is spent)
STEPS=(
    "gpu_tests|30|$PY -m pytest -m gpu -q -rs -o addopts= --junitxml=$OUT/gpu_tests.xml tests"
    "refine_ffhq1024|25|$PY -m benchmarks.refine_bench ${FFHQ_ARGS[*]}"
    "load_sweep|25|$PY -m benchmarks.load ${LOAD_ARGS[*]}"
    "refine_mobile1024|20|$PY -m benchmarks.refine_bench ${MOBILE_ARGS[*]}"
)

say() { echo "[gpu_check $(($(date +%s) - START))s] $*" | tee -a "$LOG"; }
left() { echo $((BUDGET - ($(date +%s) - START))); }

if [ "$DRY" = 1 ]; then
    echo "plan (budget ${BUDGET}s, results in $OUT):"
    for step in "${STEPS[@]}"; do
        IFS='|' read -r name share command <<<"$step"
        echo "  $name (≤ ${share}% of the budget, at least what is left): $command"
    done
    # Every benchmark command must parse: its module's argparse parser with these arguments.
    "$PY" - "${FFHQ_ARGS[@]}" -- "${MOBILE_ARGS[@]}" -- "${LOAD_ARGS[@]}" <<'EOF' || exit 1
import sys
from benchmarks import load, refine_bench

ffhq, mobile, sweep = " ".join(sys.argv[1:]).split(" -- ")
for args in (ffhq, mobile):
    refine_bench.parser().parse_args(args.split())
load.parser().parse_args(sweep.split())
print("every command parses")
EOF
    "$PY" -m pytest -m gpu --collect-only -q -o addopts= tests | tail -n 1
    exit 0
fi

: >"$LOG"
say "machine: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo 'no nvidia-smi')"
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        >>"$LOG" 2>&1 && export PYTHONPATH="$PYTHONPATH:/tmp/site" && say "installed the carried wheels: $(ls .whl | tr '\n' ' ')"
fi
if ! "$PY" -c 'import torch, sys; sys.exit(not torch.cuda.is_available())' >>"$LOG" 2>&1; then
    say "no CUDA device visible to $PY: nothing to check"; exit 1
fi
"$PY" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name())' | tee -a "$LOG"

{ echo "# GPU check $(date -u +%Y-%m-%dT%H:%MZ)"; echo; echo "| step | status | seconds |"; echo "| --- | --- | --- |"; } >"$SUMMARY"
for step in "${STEPS[@]}"; do
    IFS='|' read -r name share command <<<"$step"
    limit=$((BUDGET * share / 100))
    [ "$limit" -gt "$(left)" ] && limit=$(left)
    if [ "$name" = load_sweep ] && ! "$PY" -c 'import pytriton' 2>/dev/null; then
        say "skip $name: no embedded Triton server (carry the nvidia-pytriton wheel in .whl/)"
        echo "| $name | skipped: no nvidia-pytriton | 0 |" >>"$SUMMARY"; continue
    fi
    if [ "$limit" -lt 20 ]; then
        say "skip $name: only $(left)s left"; echo "| $name | skipped: out of time | 0 |" >>"$SUMMARY"; continue
    fi
    say "start $name (at most ${limit}s): $command"
    began=$(date +%s)
    timeout --signal=INT --kill-after=15 "$limit" $command >>"$LOG" 2>&1
    rc=$?
    status=$([ $rc = 0 ] && echo ok || { [ $rc = 124 ] && echo "stopped at its limit" || echo "failed (exit $rc)"; })
    say "end $name: $status"
    echo "| $name | $status | $(($(date +%s) - began)) |" >>"$SUMMARY"
done
# At most 8 files come back: drop the sweep's extras (plots, csv) and keep the records.
find "$OUT" -maxdepth 1 -type f ! -name '*.json' ! -name '*.md' ! -name '*.xml' ! -name '*.log' -delete
say "done in $(($(date +%s) - START))s; files: $(ls "$OUT" | tr '\n' ' ')"
tail -n 30 "$LOG" | grep -E "passed|failed|skipped|ms_per_step|infer/s" || true
cat "$SUMMARY"
