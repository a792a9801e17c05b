#!/usr/bin/env bash
# Everything a session with a GPU should run, in one call: correctness on the real compiler first,
# then memory safety, then speed. Made for the device tool (30 device-minutes a session, 10 a
# command, at most 8 files back from $OUT):
#
#   bash ../shared/device/fetch-wheels.sh                      # here, once: x-transformers wheels into .whl/
#   run(command="source .whl/prelude.sh && bash benchmarks/gpu_session.sh", carry=[".whl"])
#
# Steps can be picked: STEPS="tests bench" bash benchmarks/gpu_session.sh. Each writes one log to
# $OUT (default /tmp/up_fast_gpu); a failing step does not stop the later ones, and the exit status
# says whether any failed.
set -uo pipefail
cd "$(dirname "$0")/.."

OUT=${OUT:-/tmp/up_fast_gpu}
STEPS=${STEPS:-"tests memcheck bench ncu"}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
unset TRITON_INTERPRET          # the real compiler, not the interpreter
failed=0

step() {    # step NAME COMMAND...: run it if asked for, log to $OUT/NAME.log
    local name=$1; shift
    [[ " $STEPS " == *" $name "* ]] || return 0
    echo "== $name: $*" | tee "$OUT/$name.log"
    "$@" 2>&1 | tee -a "$OUT/$name.log"
    local status=${PIPESTATUS[0]}
    echo "== $name exited $status" | tee -a "$OUT/$name.log"
    [[ $status == 0 ]] || failed=1
}

if ! python3 -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "no CUDA device here: this script is for a machine with a GPU" | tee "$OUT/device.log"
    exit 2
fi
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())" | tee "$OUT/device.log"

# 1. the whole suite on the GPU: the kernel parity tests now run compiled, plus the GPU-only cases
step tests python3 -m pytest tests -q -p no:cacheprovider -rs

# 2. memory safety of the kernel (small shapes: memcheck slows everything down)
step memcheck compute-sanitizer --tool memcheck --error-exitcode 1 \
    python3 -m pytest tests/test_kernel_recurrent_sample.py -q -p no:cacheprovider -x -k "not large and not graph"

# 3. the benchmarks, reference first in each group, then the report (table + plot)
step bench bash -c "python3 -m pytest benchmarks --benchmark-only -q -p no:cacheprovider --benchmark-json='$OUT/gpu.json' \
    && python3 -m benchmarks.report '$OUT/gpu.json' --out '$OUT'"

# 4. Nsight Compute on the sampling kernel: registers, spills, occupancy, L2/DRAM throughput, stalls
step ncu ncu --nvtx --nvtx-include "up_fast/generate/" --set full -f -o "$OUT/generate" \
    python3 -m up_fast.profile --data-only --steps 1 --warmup 1 --backend triton

exit $failed
