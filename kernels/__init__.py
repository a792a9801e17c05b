"""Triton kernels of up_fast, installed as ``up_fast.kernels``.

Each kernel keeps a plain-PyTorch twin with the same signature (the semantic reference the tests
compare it to): `recurrent_sample.fused_recurrent_sample` is `up_fast.sampling.FoldedRecurrentNet.sample`
in one launch. docs/kernel.md describes the design; `recurrent_phases.py` holds the phase helpers,
`launch_plan.py` the launch rule, `perf_model.py` the estimated floor, `aot.py` the compile configurations.
"""

# The kernels pass their parity tests under TRITON_INTERPRET=1 but have not yet been compiled and
# checked on a GPU (Triton 3.6, compute-sanitizer). Until they are, backend='auto' keeps the
# PyTorch path on CUDA and says so once; backend='triton' opts in. A GPU validation flips this.
VALIDATED_ON_GPU = False
