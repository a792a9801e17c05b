#!/usr/bin/env bash
# Everything a session with a GPU should run, in ONE call of at most 8 minutes: correctness on the
# real compiler first, then memory safety, then speed, then the kernel under Nsight Compute.
# Made for the device tool (15 device-minutes a task, 10 a command, at most 8 files back from $OUT):
#
#   bash ../shared/device/fetch-wheels.sh                      # here, once: x-transformers wheels into .whl/
#   run(command="source .whl/prelude.sh && bash benchmarks/gpu_session.sh", carry=[".whl"], timeout_s=540)
#
# Steps, in order, each under its own time limit (seconds) and all under BUDGET (default 440 s,
# which leaves the prelude's installs room inside 8 minutes):
#   tests      the whole suite on the GPU: the kernel tests run compiled, the multi-program
#              persistent mode and the GPU-only cases included; the compile gate too          170
#   compile    python -m benchmarks.compile_report under the machine's Triton (sm_90)          30
#   memcheck   compute-sanitizer memcheck on the kernel tests selected by SANITIZER_SELECTION   45
#              (the sampling kernel's, and the buffer kernels' parity cases)
#   racecheck  compute-sanitizer racecheck (shared-memory hazards), same selection               45
#   bench      pytest benchmarks --benchmark-only, then python -m benchmarks.report             110
#   ncu        Nsight Compute on the sampling kernel of one data step                            40
# Pick steps with STEPS="tests bench"; change a limit with e.g. LIMIT_tests=200. A failing step does
# not stop the later ones; a step that would get less than 15 s of the budget is skipped.
#
# Back in $OUT (the device tool returns at most 8 files): session.log (every step's output),
# summary.json (device, versions, each step's status and seconds), gpu.json (pytest-benchmark),
# results.md and speedup.png (the benchmark report), compile.json, generate.ncu-rep.
# Exit status: 0 if every step that ran passed, 1 if one failed or timed out, 2 without a GPU.
set -uo pipefail
cd "$(dirname "$0")/.."

OUT=${OUT:-/tmp/up_fast_gpu}
STEPS=${STEPS:-"tests compile memcheck racecheck bench ncu"}
BUDGET=${BUDGET:-440}
# pytest -k for the sanitizers: small shapes only (they slow every launch down many times)
SANITIZER_SELECTION=${SANITIZER_SELECTION:-"not graph and not chi_square and not batch4096 and not vocab32768 and not vocab5000 and not hidden1000"}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
unset TRITON_INTERPRET          # the real compiler, not the interpreter
LOG="$OUT/session.log"
STATUS="$OUT/steps.tsv"          # name, status, exit code, seconds, limit: made into summary.json
: > "$LOG"
: > "$STATUS"
start=$SECONDS
failed=0

declare -A LIMIT=([tests]=170 [compile]=30 [memcheck]=45 [racecheck]=45 [bench]=110 [ncu]=40)

summary() {     # summary.json from steps.tsv and the device line; steps.tsv is removed (8 files back)
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

# 5. the benchmarks, reference first in each group, then the report (table + plot)
step bench bash -c "python3 -m pytest benchmarks --benchmark-only -q -p no:cacheprovider --benchmark-json='$OUT/gpu.json' \
    && python3 -m benchmarks.report '$OUT/gpu.json' --out '$OUT'"

# 6. Nsight Compute on the sampling kernel: registers, spills, occupancy, L2/DRAM throughput,
#    stalls. Clocks left alone (--clock-control none, METHOD.md); the details page goes to the log.
if tool ncu ncu; then
    step ncu bash -c "ncu --clock-control none --nvtx --nvtx-include 'up_fast/generate/' --launch-count 2 --set full \
        -f -o '$OUT/generate' python3 -m up_fast.profiling --data-only --steps 1 --warmup 1 --backend triton \
        && ncu -i '$OUT/generate.ncu-rep' --page details"
fi

echo "== session: $((SECONDS - start))s of the ${BUDGET}s budget" | tee -a "$LOG"
summary $gpu | tee -a "$LOG"
(( gpu )) || exit 2
exit $failed
