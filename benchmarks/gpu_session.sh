#!/usr/bin/env bash
# Every check that needs a GPU, in ONE run of at most 8 minutes: correctness on the real compiler
# first, then memory safety, then speed, then the kernel under Nsight Compute. On a machine with a
# GPU, from the repository root, after installing the test extra:
#
#   OUT=/tmp/up_fast_gpu bash benchmarks/gpu_session.sh
#
# Steps, in order, each under its own time limit (seconds) and all under BUDGET (default 440 s,
# which leaves room for installs inside 8 minutes):
#   tests      the whole suite on the GPU: the kernel tests run compiled, the multi-program
#              persistent mode and the GPU-only cases included; the compile gate too          170
#   compile    python -m benchmarks.compile_report under the machine's Triton (sm_90)          30
#   memcheck   compute-sanitizer memcheck on the kernel tests selected by SANITIZER_SELECTION   45
#              (small shapes, phase per launch or at most 4 programs a group: a spin barrier of
#              many programs may starve under instrumentation),
#              and the buffer kernels' parity cases
#   racecheck  compute-sanitizer racecheck (shared-memory hazards), same selection               45
#   step       python -m benchmarks.step_timing: one sampling step, length 1 vs 512 at the same
#              prefix (the example and batch 4096)                                                30
#   bench      pytest benchmarks --benchmark-only, then python -m benchmarks.report             110
#   ncu        Nsight Compute on the persistent kernel at the example: L1 hit rate of global
#              loads (the weights), long-scoreboard stalls, the samples in the barrier's lines    45
# Pick steps with STEPS="tests bench"; change a limit with e.g. LIMIT_tests=200. A failing step does
# not stop the later ones; a step that would get less than 15 s of the budget is skipped.
#
# In $OUT (at most 8 files, so that they are easy to carry back): session.log (every step's output),
# summary.json (device, versions, each step's status and seconds), gpu.json (pytest-benchmark),
# results.md and speedup.png (the benchmark report), compile.json, step.json, sample.ncu-rep.
# Exit status: 0 if every step that ran passed, 1 if one failed or timed out, 2 without a GPU.
set -uo pipefail
cd "$(dirname "$0")/.."

OUT=${OUT:-/tmp/up_fast_gpu}
STEPS=${STEPS:-"tests compile memcheck racecheck step bench ncu"}
BUDGET=${BUDGET:-440}
# pytest -k for the sanitizers: small shapes only (they slow every launch down many times)
# and small grids: the oracle cases in single-program and phase modes, the tiled plans (2 programs a group)
SANITIZER_SELECTION=${SANITIZER_SELECTION:-"injected_noise or tiled_plans or pytorch_twins"}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
unset TRITON_INTERPRET          # the real compiler, not the interpreter
LOG="$OUT/session.log"
STATUS="$OUT/steps.tsv"          # name, status, exit code, seconds, limit: made into summary.json
: > "$LOG"
: > "$STATUS"
start=$SECONDS
failed=0

declare -A LIMIT=([tests]=170 [compile]=30 [memcheck]=45 [racecheck]=45 [step]=30 [bench]=110 [ncu]=45)

summary() {     # summary.json from steps.tsv and the device line; steps.tsv is removed (at most 8 files in $OUT)
    python3 - "$OUT" "$1" <<'PY'
import json, os, sys
out, device_ok = sys.argv[1], sys.argv[2] == '1'
info = dict(device=None, torch=None, triton=None, cuda=None)
try:
    import torch, triton
    info.update(torch=torch.__version__, triton=triton.__version__, cuda=torch.version.cuda)
    if device_ok:
        props = torch.cuda.get_device_properties(0)
        info.update(device=torch.cuda.get_device_name(0), capability=f'{props.major}.{props.minor}',
                    sms=props.multi_processor_count)
except Exception as e:          # the summary must still be written
    info['error'] = repr(e)
steps = []
path = os.path.join(out, 'steps.tsv')
for line in open(path):
    name, status, code, seconds, limit = line.rstrip('\n').split('\t')
    steps.append(dict(name=name, status=status, exit_code=int(code), seconds=float(seconds), limit_s=int(limit)))
os.remove(path)
info.update(steps=steps, passed=device_ok and all(s['status'] in ('passed', 'skipped') for s in steps))
json.dump(info, open(os.path.join(out, 'summary.json'), 'w'), indent=1)
print(json.dumps(info, indent=1))
PY
}

step() {    # step NAME COMMAND...: run it if asked for, under its limit and the budget, log to session.log
    local name=$1; shift
    [[ " $STEPS " == *" $name "* ]] || return 0
    local limit=${LIMIT[$name]}
    local override="LIMIT_$name"
    limit=${!override:-$limit}
    local left=$((BUDGET - (SECONDS - start)))
    (( limit > left )) && limit=$left
    if (( limit < 15 )); then
        echo "== $name: skipped, ${left}s of the ${BUDGET}s budget left" | tee -a "$LOG"
        printf '%s\tskipped\t0\t0\t%s\n' "$name" "$limit" >> "$STATUS"
        return 0
    fi
    echo "== $name (limit ${limit}s): $*" | tee -a "$LOG"
    local t0=$SECONDS
    timeout --kill-after=10 "$limit" "$@" 2>&1 | tee -a "$LOG"
    local code=${PIPESTATUS[0]}
    local took=$((SECONDS - t0))
    local status=passed
    if [[ $code == 124 || $code == 137 ]]; then status=timeout; elif [[ $code != 0 ]]; then status=failed; fi
    echo "== $name: $status (exit $code) in ${took}s" | tee -a "$LOG"
    printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$status" "$code" "$took" "$limit" >> "$STATUS"
    [[ $status == passed ]] || failed=1
}

tool() {    # tool TOOL STEP: STEP is asked for and TOOL is on PATH, or STEP is marked unavailable
    [[ " $STEPS " == *" $2 "* ]] || return 1
    command -v "$1" >/dev/null && return 0
    echo "== $2: unavailable ($1 not on PATH)" | tee -a "$LOG"
    printf '%s\tunavailable\t127\t0\t0\n' "$2" >> "$STATUS"
    failed=1
    return 1
}

gpu=1
if ! python3 -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" >> "$LOG" 2>&1; then
    gpu=0
    echo "no CUDA device here: this script is for a machine with a GPU" | tee -a "$LOG"
    if [[ ${ALLOW_NO_GPU:-0} != 1 ]]; then     # ALLOW_NO_GPU=1: check the script's own machinery on a CPU
        summary 0 > /dev/null
        exit 2
    fi
fi
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name() if torch.cuda.is_available() else None)" | tee -a "$LOG"
if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,temperature.gpu --format=csv 2>&1 | tee -a "$LOG"
fi

# 1. the whole suite on the GPU, compiled (no Triton 3.6 side environment for the compile gate:
#    the machine runs 3.6 itself and has no package index)
UP_FAST_TRITON_SIDE=0 step tests python3 -m pytest tests -q -p no:cacheprovider -rs --maxfail=10 --durations=15

# 2. what ptxas allocated on the machine's own Triton, next to the floor the design implies
step compile python3 -m benchmarks.compile_report --arch 90 --json "$OUT/compile.json"

# 3-4. memory safety of the kernel on small shapes (the sanitizers slow everything down); a fresh
#    allocation per tensor so that memcheck sees out-of-bounds accesses inside the caching allocator
if tool compute-sanitizer memcheck; then
    PYTORCH_NO_CUDA_MEMORY_CACHING=1 step memcheck compute-sanitizer --tool memcheck --error-exitcode 1 \
        python3 -m pytest tests/test_kernel_recurrent_sample.py tests/test_kernel_buffer_ops.py::test_kernels_equal_the_pytorch_twins \
        -q -p no:cacheprovider -x -k "$SANITIZER_SELECTION"
fi
if tool compute-sanitizer racecheck; then
    step racecheck compute-sanitizer --tool racecheck --racecheck-report all --error-exitcode 1 \
        python3 -m pytest tests/test_kernel_recurrent_sample.py tests/test_kernel_buffer_ops.py::test_kernels_equal_the_pytorch_twins \
        -q -p no:cacheprovider -x -k "$SANITIZER_SELECTION"
fi

# 5. one sampling step: length 1 against length 512 at the same prefix (the difference / 511)
step step bash -c "python3 -m benchmarks.step_timing --json '$OUT/step.json' \
    && python3 -m benchmarks.step_timing --batch 4096 --length 128 --repeat 5"

# 6. the benchmarks, reference first in each group, then the report (table + plot)
step bench bash -c "python3 -m pytest benchmarks --benchmark-only -q -p no:cacheprovider --benchmark-json='$OUT/gpu.json' \
    && python3 -m benchmarks.report '$OUT/gpu.json' --out '$OUT'"

# 7. Nsight Compute on the persistent kernel at the example (length 64): the L1 hit rate of global
#    loads (streamed weight slices are re-read every step: each barrier's acquire invalidates L1), long-scoreboard
#    stalls (waits on L2), and per source line the samples in grid_barrier (barrier time). Clocks
#    left alone (--clock-control none, METHOD.md); the details and source pages go to the log.
NCU_METRICS=l1tex__t_sector_pipe_lsu_mem_global_op_ld_hit_rate.pct,smsp__average_warps_issue_stalled_long_scoreboard_per_issue_active.ratio,smsp__average_warps_issue_stalled_barrier_per_issue_active.ratio,smsp__average_warps_issue_stalled_membar_per_issue_active.ratio,gpu__time_duration.sum
if tool ncu ncu; then
    step ncu bash -c "ncu --clock-control none --kernel-name regex:recurrent_sample_kernel --launch-skip 2 --launch-count 1 \
        --import-source yes --section SourceCounters --section WarpStateStats --section MemoryWorkloadAnalysis \
        --metrics $NCU_METRICS -f -o '$OUT/sample' python3 -m benchmarks.step_timing --length 64 --repeat 1 --warmup 1 \
        && ncu -i '$OUT/sample.ncu-rep' --page details \
        && ncu -i '$OUT/sample.ncu-rep' --page source --csv --print-source cuda 2>&1 | grep -n -A3 -i 'grid_barrier\|volatile\|atomic' | head -80"
fi

echo "== session: $((SECONDS - start))s of the ${BUDGET}s budget" | tee -a "$LOG"
summary $gpu | tee -a "$LOG"
(( gpu )) || exit 2
exit $failed
