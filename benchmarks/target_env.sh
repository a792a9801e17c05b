#!/usr/bin/env bash
# A CPU environment with the versions of the GPU machines up_fast targets (Python 3.12, torch 2.11.0,
# Triton 3.6.0, x-transformers and einops from wheel files), to rehearse a first run on a GPU without
# one: the test suite and a dry run of benchmarks/gpu_session.sh, the kernels under the interpreter.
# torch 2.11.0 from the registry is a CUDA build; it runs on a CPU as well.
#
#   bash benchmarks/target_env.sh                 # build it (once), then run the suite and the dry run
#   bash benchmarks/target_env.sh build           # build only
#   bash benchmarks/target_env.sh run [ARGS...]   # the suite only, pytest ARGS (default: tests -q)
#   bash benchmarks/target_env.sh dry-run         # the dry run only
#
# PYTHON=/path/to/python3.12 picks the interpreter (default: python3.12 on PATH, else pyenv's 3.12);
# WHEELS=dir installs torch, triton, x-transformers and einops from wheel files in dir, as on a machine
# with no registry (the test tools still come from the configured index); ENV_DIR moves the
# environment (default .cache/target-env, git-ignored).
set -euo pipefail
cd "$(dirname "$0")/.."

TORCH_VERSION=2.11.0
TRITON_VERSION=3.6.0
ENV_DIR=${ENV_DIR:-.cache/target-env}
what=${1:-all}
[[ $# -gt 0 ]] && shift

is_python_312() { "$1" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))' 2>/dev/null; }

find_python() {
    if [[ -n ${PYTHON:-} ]]; then
        is_python_312 "$PYTHON" || { echo "PYTHON=$PYTHON is not a working Python 3.12" >&2; exit 1; }
        echo "$PYTHON"; return
    fi
    local pyenv_root=${PYENV_ROOT:-$HOME/.pyenv}
    local candidate
    # a pyenv shim on PATH may name a 3.12 that is not the selected version: try each until one runs
    for candidate in $(command -v python3.12 || true) $(ls -d "$pyenv_root"/versions/3.12*/bin/python3 2>/dev/null | sort -rV); do
        if is_python_312 "$candidate"; then echo "$candidate"; return; fi
    done
    echo "no Python 3.12 found: install one (e.g. pyenv install 3.12) or set PYTHON=/path/to/python3.12" >&2
    exit 1
}

build() {
    local python
    python=$(find_python)
    if [[ ! -x $ENV_DIR/bin/python ]]; then
        echo "== creating $ENV_DIR with $python"
        "$python" -m venv "$ENV_DIR"
    fi
    local pip=("$ENV_DIR/bin/python" -m pip install -q --disable-pip-version-check)
    local from=()
    [[ -n ${WHEELS:-} ]] && from=(--find-links "$WHEELS")
    echo "== torch $TORCH_VERSION, triton $TRITON_VERSION, x-transformers, einops${WHEELS:+ (from $WHEELS)}"
    "${pip[@]}" "${from[@]}" "torch==$TORCH_VERSION" "triton==$TRITON_VERSION" x-transformers einops
    echo "== up_fast (editable, no dependencies) and the test tools"
    "${pip[@]}" --no-deps -e .
    # Triton 3.6's interpreter turns a 1-element array into a loop bound with int(), which NumPy 2.3
    # refuses ("only 0-dimensional arrays can be converted"; later Tritons squeeze first): every
    # kernel test under TRITON_INTERPRET=1 would fail on that, not on the kernels
    "${pip[@]}" "${from[@]}" pytest pytest-benchmark hypothesis tqdm matplotlib "numpy<2.3"
    "$ENV_DIR/bin/python" - <<PY
import sys, torch, triton, x_transformers, einops, up_fast
assert torch.__version__.split('+')[0] == '$TORCH_VERSION', torch.__version__
assert triton.__version__ == '$TRITON_VERSION', triton.__version__
print(f'python {sys.version.split()[0]}, torch {torch.__version__} (CUDA {torch.version.cuda}), triton {triton.__version__}, '
      f'up_fast {up_fast.__version__}: ready in $ENV_DIR')
PY
}

run_suite() {
    local args=("$@")
    [[ ${#args[@]} -gt 0 ]] || args=(tests -q -p no:cacheprovider)
    echo "== the suite under Python 3.12, torch $TORCH_VERSION, Triton $TRITON_VERSION"
    # the environment's bin first, as an activated one would be (the tests run its `up-fast`)
    PATH="$PWD/$ENV_DIR/bin:$PATH" "$ENV_DIR/bin/python" -m pytest "${args[@]}"
}

dry_run() {
    echo "== benchmarks/gpu_session.sh --dry-run"
    PATH="$PWD/$ENV_DIR/bin:$PATH" bash benchmarks/gpu_session.sh --dry-run
}

case $what in
    all) build; status=0; run_suite || status=$?; dry_run || status=$?; exit $status ;;
    build) build ;;
    run) run_suite "$@" ;;
    dry-run) dry_run ;;
    *) echo "usage: bash benchmarks/target_env.sh [all|build|run [pytest args]|dry-run]" >&2; exit 2 ;;
esac
