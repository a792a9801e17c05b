"""Triton kernels of up_fast, installed as ``up_fast.kernels``.

Each kernel keeps a plain-PyTorch twin with the same signature (the semantic reference the tests
compare it to): `recurrent_sample.fused_recurrent_sample` is `up_fast.sampling.FoldedRecurrentNet.sample`
in one launch. docs/kernel.md describes the design; `recurrent_phases.py` holds the phase helpers,
`launch_plan.py` the launch rule, `perf_model.py` the estimated floor, `aot.py` the compile
configurations, `first_use.py` the check that backend='auto' runs on the user's own GPU before it
takes a kernel.
"""
