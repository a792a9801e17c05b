"""The Gumbel band: which tokens can win Gumbel-max, from the bounds of the noise and one slack.

Shared by the PyTorch sampler (up_fast/sampling.py) and the Triton kernel's launcher
(kernels/recurrent_sample.py), so that both draw the same line.

At temperature T > 0 the token is argmax_j(logits_j + T * G_j), G_j = -log(-log u_j), u_j ~ U[0, 1):
a sample of softmax(logits / T), ties to the lowest token id (torch.max's first maximum). The
uniforms come from a finite set, so every finite G lies in [g_min, g_max] (gumbel_bounds; the grid
k * 2^-24 of torch.rand on the CPU and of the kernel's Philox: about -2.81 and 16.64): a token whose
logit is more than T * (g_max - g_min) below its row's largest can never win. Only the tokens within
that band (the candidates) get noise: about 1.1 a row at the default T = 1e-4 on the example's logits.

Why the winner is exactly full Gumbel-max's on the same uniforms (Band below):
- candidates are the tokens with logit >= floor = top - T * (g_max - g_min) - 2 slack, top the
  row's largest logit; a non-candidate's score, with any noise value up to T * g_max, is then
  below certificate = top + T * g_min - slack. `slack` is SLACK of the magnitudes involved: it
  covers the float32 rounding of the scores, of G, and of floor and certificate themselves (a few
  roundings of 2^-24 each, and log, which GPUs do not round correctly); a wider band is always
  exact, it only costs draws. Rounding is monotone, so non-candidates far below the floor score no
  higher than those just below it.
- a row whose best candidate scores >= certificate is won by that candidate: the candidates'
  scores are computed as full Gumbel-max computes them (fl(l + fl(T * G))), in token order, so
  ties go the same way. The top token scores >= certificate unless its u == 0 (G = -inf); a row
  failing the check (u == 0 at the top, no other candidate making up) takes noise for every token.
- logits are finite or -inf (a row of -inf makes every token a candidate); a NaN logit wins as
  it does in full Gumbel-max.

The G of a value can differ in its last bit between ATen's vectorised and scalar loops (the
Sleef and libm logs): full Gumbel-max itself computes G that way, so "the same token" holds up to
a tie of two scores within one rounding step.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

SLACK = 2.0**-16  # relative to the magnitudes in a score; float32 rounds each op to 2^-24

FP32_EPS = torch.finfo(torch.float32).eps  # 2^-23
# the k * 2^-24 grid, 0 <= k < 2^24: torch.rand on the CPU (ATen's uniform_real keeps 24 bits of a
# 32-bit draw) and the kernel's Philox (the top 24 bits)
GRID_SMALLEST, GRID_LARGEST = FP32_EPS / 2, 1.0 - FP32_EPS / 2
# any float32 in [0, 1), down to the smallest subnormal (CUDA's torch.rand, a curand grid offset by 2^-33, among them)
FP32_SMALLEST = torch.finfo(torch.float32).tiny * FP32_EPS


def gumbel_bounds(smallest_positive: float, largest_below_one: float) -> tuple[float, float]:
    """(g_min, g_max): the finite extremes of G = -log(-log u) over uniforms read as float32, in
    float64 (g_max is +inf when the largest uniform rounds to 1.0 in float32: then there is no band)."""
    as_fp32 = lambda u: torch.tensor(u, dtype=torch.float64).float().double()
    lo, hi = as_fp32(smallest_positive), as_fp32(largest_below_one)
    gumbel = lambda u: -torch.log(-torch.log(u))
    return float(gumbel(lo)), float(gumbel(hi))


PHILOX_GUMBEL_BOUNDS = gumbel_bounds(GRID_SMALLEST, GRID_LARGEST)


def injected_gumbel_bounds(dtype: torch.dtype) -> tuple[float, float]:
    """Bounds for injected noise of `dtype` read as float32: any positive float32 (down to its
    subnormals) and the largest value below 1 of the dtype."""
    below_one = torch.nextafter(torch.tensor(1.0, dtype=dtype), torch.tensor(0.0, dtype=dtype)).item()
    return gumbel_bounds(FP32_SMALLEST, below_one)


# any float32 uniform below 1 that the PyTorch sampler may read: CUDA's torch.rand, injected noise
FP32_GUMBEL_BOUNDS = gumbel_bounds(FP32_SMALLEST, GRID_LARGEST)


def noise_bounds(device: torch.device, injected: bool) -> tuple[float, float]:
    """(g_min, g_max) of a step's noise as the PyTorch sampler reads it (injected noise converted to
    float32). Computed once at import: a sampling step must not read tensors back to the host."""
    if device.type == 'cpu' and not injected:
        return PHILOX_GUMBEL_BOUNDS  # the same k * 2^-24 grid as the kernel's Philox
    return FP32_GUMBEL_BOUNDS


class Band:
    """Which tokens can win argmax(logits + T * G) when every finite G lies in [g_min, g_max]
    (see the module notes). floor() and certificate() take each row's largest logit, (batch, 1)."""

    def __init__(self, temperature: float, g_min: float, g_max: float):
        self.temperature, self.g_min, self.g_max = temperature, g_min, g_max
        magnitude = temperature * (abs(g_min) + abs(g_max))  # the noise's share of a score's magnitude
        # floor = top - 2 SLACK |top| - floor_offset, as (1 - 2 SLACK) leaky_relu(top) - floor_offset: two ops a step
        self.floor_slope = (1 + 2 * SLACK) / (1 - 2 * SLACK)
        # a 0-dim CPU tensor acts as a scalar on any device, without a copy
        self.floor_offset = torch.tensor(-(temperature * (g_max - g_min) + 2 * SLACK * magnitude), dtype=torch.float32)
        self.certificate_offset = temperature * g_min - SLACK * magnitude

    @classmethod
    def of(cls, temperature: float, device: torch.device, injected: bool) -> Band:
        return cls(temperature, *noise_bounds(device, injected))  # CPU torch.rand: about -2.81, 16.64

    def floor(self, top: Tensor) -> Tensor:
        # top - T (g_max - g_min) - 2 slack, slack = SLACK (|top| + magnitude)
        return torch.add(self.floor_offset, F.leaky_relu(top, self.floor_slope), alpha=1 - 2 * SLACK)

    def certificate(self, top: Tensor) -> Tensor:
        # top + T g_min - slack
        return torch.add(top, top.abs(), alpha=-SLACK).add_(self.certificate_offset)

    def candidates(self, logits: Tensor) -> tuple[Tensor, Tensor]:
        """Each row's largest logit (batch, 1), and the candidates (batch, num_tokens) bool."""
        top = torch.amax(logits, dim=-1, keepdim=True)
        return top, torch.ge(logits, self.floor(top))
