#!/usr/bin/env bash
# Every check that needs a GPU, in ONE run of at most 8 minutes, the most valuable first: the
# kernels' first-use check and token parity, then per-step timing and the headline ratios against
# the reference, then Nsight Compute, then the sanitizers on small shapes, then the rest of the suite,
# the rest of the benchmarks and the compile report. On a machine with a GPU, from the repository
# root, after installing the test extra:
#
#   OUT=/tmp/up_fast_gpu bash benchmarks/gpu_session.sh
#   bash benchmarks/gpu_session.sh --dry-run      # every step at tiny sizes on a CPU (the kernels
#                                                 # under TRITON_INTERPRET=1), every tool and path checked
#
# Steps, in order, each under its own time limit (seconds) and all under BUDGET (default 440 s,
# which leaves room for installs inside 8 minutes); a step that would get less than 15 s is skipped:
#   firstuse   python -m benchmarks.first_use_report: backend='auto' decides each cell's path at the
#              example (the first-use check, compiling both launch modes), then tokens against the
#              PyTorch path, greedy and sampled                                                    75
#   parity     the kernels' parity, launch-count and first-use tests, compiled                      120
#   step       python -m benchmarks.step_timing: one sampling step, length 1 vs 512 at the same
#              prefix (the example and batch 4096)                                                  30
#   headline   the example's generate and data-share benchmarks against the reference, and the report 60
#   ncu        Nsight Compute on the persistent kernel at the example: L1 hit rate of global loads
#              (the weights), long-scoreboard stalls, the samples in the barrier's lines               45
#   memcheck   compute-sanitizer memcheck on the kernel tests selected by SANITIZER_SELECTION
#              (small shapes, phase per launch or at most 4 programs a group: a spin barrier of
#              many programs may starve under instrumentation), and the buffer kernels' parity cases 40
#   racecheck  compute-sanitizer racecheck (shared-memory hazards), same selection                   40
#   tests      the rest of the suite on the GPU (the GPU-only cases included)                        120
#   bench      pytest benchmarks --benchmark-only, then python -m benchmarks.report                  90
#   compile    python -m benchmarks.compile_report under the machine's Triton (sm_90)                30
# Pick steps with STEPS="firstuse headline"; change a limit with e.g. LIMIT_tests=200. A failing step
# does not stop the later ones. The first seven steps can take the whole budget: tests, bench and
# compile then run in what is left, or in a second run (STEPS="tests bench compile"). Compilation is
# inside each limit: a cell's first-use check compiles 3 variants of the persistent kernel and 3 of
# each phase kernel, about 13 s a cell with the sm_90 compile of benchmarks/aot_compile.py on a busy
# 2-core CPU (3.7 s the persistent example, 0.2 to 1.3 s a phase kernel).
#
# In $OUT, written as each step ends (what finished survives a timeout of the whole run): session.log
# (every step's output, as it goes), summary.json (device, versions, each finished step's status and
# seconds), first_use.json, step.json, headline.json and gpu.json (pytest-benchmark), results.md and
# speedup.png (the report), sample.ncu-rep, compile.json.
# Exit status: 0 if every step that ran passed, 1 if one failed or timed out, 2 without a GPU (not
# in a dry run).
set -uo pipefail
cd "$(dirname "$0")/.."

DRY=0
for arg in "$@"; do
    case $arg in
        --dry-run) DRY=1 ;;
        -h|--help) sed -n '2,/^set -uo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "unknown argument '$arg': the one option is --dry-run (see --help)" >&2; exit 2 ;;
    esac
done

OUT=${OUT:-/tmp/up_fast_gpu}
STEPS=${STEPS:-"firstuse parity step headline ncu memcheck racecheck tests bench compile"}
BUDGET=${BUDGET:-440}
# pytest -k for the sanitizers: small shapes only (they slow every launch down many times)
# and small grids: the oracle cases in single-program and phase modes, the tiled plans (2 programs a group)
SANITIZER_SELECTION=${SANITIZER_SELECTION:-"injected_noise or tiled_plans or pytorch_twins"}
PARITY_TESTS="tests/test_kernel_recurrent_sample.py tests/test_kernel_buffer_ops.py tests/test_kernel_launch_count.py tests/test_first_use.py"
SANITIZED_TESTS="tests/test_kernel_recurrent_sample.py tests/test_kernel_buffer_ops.py::test_kernels_equal_the_pytorch_twins"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if (( DRY )); then
    export TRITON_INTERPRET=1   # the kernels under the interpreter: a dry run needs no GPU
else
    unset TRITON_INTERPRET      # the real compiler, not the interpreter
fi
LOG="$OUT/session.log"
STATUS=$(mktemp)                # name, status, exit code, seconds, limit: made into summary.json after each step
trap 'rm -f "$STATUS"' EXIT
: > "$LOG"
start=$SECONDS
failed=0

declare -A LIMIT=([firstuse]=75 [parity]=120 [step]=30 [headline]=60 [ncu]=45 [memcheck]=40 [racecheck]=40
                  [tests]=120 [bench]=90 [compile]=30)
(( DRY )) && LIMIT=([firstuse]=150 [parity]=150 [step]=120 [headline]=300 [ncu]=120 [memcheck]=60 [racecheck]=60
                    [tests]=120 [bench]=120 [compile]=600) && BUDGET=${DRY_BUDGET:-1800}

summary() {     # summary.json from the steps so far and the device
    python3 - "$OUT" "$STATUS" "$1" "$DRY" <<'PY'
import json, os, sys
out, status, device_ok, dry = sys.argv[1], sys.argv[2], sys.argv[3] == '1', sys.argv[4] == '1'
info = dict(dry_run=dry, device=None, torch=None, triton=None, cuda=None)
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
for line in open(status):
    name, state, code, seconds, limit = line.rstrip('\n').split('\t')
    steps.append(dict(name=name, status=state, exit_code=int(code), seconds=float(seconds), limit_s=int(limit)))
info.update(steps=steps, passed=(device_ok or dry) and all(s['status'] in ('passed', 'skipped') for s in steps))
with open(os.path.join(out, 'summary.json.tmp'), 'w') as f:
    json.dump(info, f, indent=1)
os.replace(os.path.join(out, 'summary.json.tmp'), os.path.join(out, 'summary.json'))
print(json.dumps(info, indent=1))
PY
}

record() {  # record NAME STATUS CODE SECONDS LIMIT, and rewrite summary.json
    printf '%s\t%s\t%s\t%s\t%s\n' "$@" >> "$STATUS"
    summary $gpu > /dev/null
}

asked() { [[ " $STEPS " == *" $1 "* ]]; }

step() {    # step NAME COMMAND...: run it if asked for, under its limit and the budget, log to session.log
    local name=$1; shift
    asked "$name" || return 0
    local limit=${LIMIT[$name]}
    local override="LIMIT_$name"
    limit=${!override:-$limit}
    local left=$((BUDGET - (SECONDS - start)))
    (( limit > left )) && limit=$left
    if (( limit < 15 )); then
        echo "== $name: skipped, ${left}s of the ${BUDGET}s budget left" | tee -a "$LOG"
        record "$name" skipped 0 0 "$limit"
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
    record "$name" "$status" "$code" "$took" "$limit"
    [[ $status == passed ]] || failed=1
}

tool() {    # tool TOOL STEP: STEP is asked for and TOOL is on PATH, or STEP is marked unavailable
    asked "$2" || return 1
    command -v "$1" >/dev/null && return 0
    if (( DRY )); then          # a CPU machine may lack it; the GPU machine must have it
        echo "== $2: $1 not on PATH here (the GPU machine needs it); checking the step's other parts" | tee -a "$LOG"
        return 1
    fi
    echo "== $2: unavailable ($1 not on PATH)" | tee -a "$LOG"
    record "$2" unavailable 127 0 0
    failed=1
    return 1
}

for needed in python3 timeout tee; do
    command -v "$needed" >/dev/null || { echo "this script needs $needed on PATH" >&2; exit 2; }
done
gpu=1
if ! python3 -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" >> "$LOG" 2>&1; then
    gpu=0
    if (( ! DRY )); then
        echo "no CUDA device here: this script is for a machine with a GPU (--dry-run checks it on a CPU)" | tee -a "$LOG"
        summary 0 > /dev/null
        exit 2
    fi
fi
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name() if torch.cuda.is_available() else None)" | tee -a "$LOG"
if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,temperature.gpu --format=csv 2>&1 | tee -a "$LOG"
elif (( ! DRY )); then
    echo "nvidia-smi not on PATH: no clocks or driver in the log" | tee -a "$LOG"
fi
(( DRY )) && echo "== dry run: tiny sizes on $(python3 -c 'import torch; print("cuda" if torch.cuda.is_available() else "cpu")'), kernels under the interpreter" | tee -a "$LOG"
PYTEST="python3 -m pytest -q -p no:cacheprovider"
DEVICE=$( (( gpu )) && echo cuda || echo cpu)

# 1. the first-use check through backend='auto', and the tokens against the PyTorch path
if (( DRY )); then
    step firstuse python3 -m benchmarks.first_use_report --tiny --device "$DEVICE" --json "$OUT/first_use.json"
else
    step firstuse python3 -m benchmarks.first_use_report --json "$OUT/first_use.json"
fi

# 2. the kernels' parity tests, compiled (a dry run: the launch counts and the first-use tests)
if (( DRY )); then
    step parity $PYTEST tests/test_kernel_launch_count.py tests/test_first_use.py -x \
        -k "launch or passed_its_check or broken_kernel"
else
    step parity $PYTEST $PARITY_TESTS -rs --maxfail=5
fi

# 3. one sampling step: length 1 against length 512 at the same prefix (the difference / 511)
if (( DRY )); then
    step step python3 -m benchmarks.step_timing --batch 4 --hidden 16 --num-tokens 20 --prefix 2 --length 4 \
        --repeat 1 --warmup 0 --device "$DEVICE" --json "$OUT/step.json"
else
    step step bash -c "python3 -m benchmarks.step_timing --json '$OUT/step.json' \
        && python3 -m benchmarks.step_timing --batch 4096 --length 128 --repeat 5"
fi

# 4. the headline: the example's generate and data share against the reference, then the report
HEADLINE="benchmarks/test_generate.py benchmarks/test_data_share.py"
HEADLINE_K=$( (( DRY )) && echo "example and not gru" || echo "example")
step headline bash -c "$PYTEST $HEADLINE --benchmark-only -k '$HEADLINE_K' --benchmark-json='$OUT/headline.json' \
    && python3 -m benchmarks.report '$OUT/headline.json' --out '$OUT'"

# 5. Nsight Compute on the persistent kernel at the example (length 64): the L1 hit rate of global
#    loads (streamed weight slices are re-read every step: each barrier's acquire invalidates L1), long-scoreboard
#    stalls (waits on L2), and per source line the samples in grid_barrier (barrier time). Clocks
#    left alone (--clock-control none); the details and source pages go to the log.
NCU_KERNEL=recurrent_sample_kernel
NCU_METRICS=l1tex__t_sector_pipe_lsu_mem_global_op_ld_hit_rate.pct,smsp__average_warps_issue_stalled_long_scoreboard_per_issue_active.ratio,smsp__average_warps_issue_stalled_barrier_per_issue_active.ratio,smsp__average_warps_issue_stalled_membar_per_issue_active.ratio,gpu__time_duration.sum
if tool ncu ncu; then
    step ncu bash -c "ncu --clock-control none --kernel-name regex:$NCU_KERNEL --launch-skip 2 --launch-count 1 \
        --import-source yes --section SourceCounters --section WarpStateStats --section MemoryWorkloadAnalysis \
        --metrics $NCU_METRICS -f -o '$OUT/sample' python3 -m benchmarks.step_timing --length 64 --repeat 1 --warmup 1 \
        && ncu -i '$OUT/sample.ncu-rep' --page details \
        && ncu -i '$OUT/sample.ncu-rep' --page source --csv --print-source cuda 2>&1 | grep -n -A3 -i 'grid_barrier\|volatile\|atomic' | head -80"
elif (( DRY )) && asked ncu; then
    # what ncu would profile: the kernel it names exists, and the profiled command runs
    step ncu bash -c "python3 -c 'from up_fast.kernels import recurrent_sample as rs; rs.$NCU_KERNEL' \
        && python3 -m benchmarks.step_timing --batch 4 --hidden 16 --num-tokens 20 --length 4 --repeat 1 --warmup 1 --device $DEVICE"
fi

# 6-7. memory safety of the kernels on small shapes (the sanitizers slow everything down); a fresh
#    allocation per tensor so that memcheck sees out-of-bounds accesses inside the caching allocator
for check in memcheck racecheck; do
    if tool compute-sanitizer $check; then
        extra=$([[ $check == racecheck ]] && echo "--racecheck-report all")
        PYTORCH_NO_CUDA_MEMORY_CACHING=1 step $check compute-sanitizer --tool $check $extra --error-exitcode 1 \
            $PYTEST $SANITIZED_TESTS -x -k "$SANITIZER_SELECTION"
    elif (( DRY )) && asked $check; then
        # the selection must still pick tests, or the sanitizer would check nothing
        step $check bash -c "$PYTEST $SANITIZED_TESTS --collect-only -k '$SANITIZER_SELECTION' | tail -1 | grep -E '^[1-9][0-9]*(/[0-9]+)? tests? collected'"
    fi
done

# 8. the rest of the suite, compiled (no Triton side environment for the compile gate: the machine
#    runs its own Triton and may have no package index)
IGNORE=$(for t in $PARITY_TESTS; do printf -- '--ignore=%s ' "$t"; done)
if (( DRY )); then
    step tests $PYTEST tests --collect-only
else
    UP_FAST_TRITON_SIDE=0 step tests $PYTEST tests $IGNORE -rs --maxfail=10 --durations=15
fi

# 9. all the benchmarks, reference first in each group, then the report (table + plot)
if (( DRY )); then
    step bench $PYTEST benchmarks --collect-only
else
    step bench bash -c "$PYTEST benchmarks --benchmark-only --benchmark-json='$OUT/gpu.json' \
        && python3 -m benchmarks.report '$OUT/gpu.json' --out '$OUT'"
fi

# 10. what ptxas allocated on the machine's own Triton, next to the floor the design implies
step compile python3 -m benchmarks.compile_report --arch 90 --json "$OUT/compile.json"

echo "== session: $((SECONDS - start))s of the ${BUDGET}s budget" | tee -a "$LOG"
summary $gpu | tee -a "$LOG"
(( gpu || DRY )) || exit 2
exit $failed
