"""The LSTM and GRU cell updates of the folded decoding loops, in place (sampling.py, paper.py).

Both loops keep the state scaled so that a step needs the fewest elementwise ops: an LSTM's state is
(h / 2, 2 c), a GRU's is h; every tanh is 2 sigmoid(2x) - 1 with the doubling folded into the
candidate gate's weights, so the gates arrive here as sigmoids already. Scaling by 2 is exact in
floating point, so values are bitwise what the unscaled form gives (subnormals aside).
"""

from __future__ import annotations

import torch
from torch import Tensor


def lstm_update_(i: Tensor, f: Tensor, o: Tensor, g: Tensor, half_h: Tensor, double_c: Tensor) -> Tensor:
    """One LSTM cell update in place from the gate sigmoids i, f, o and g = sigmoid(2 g_pre), each
    (batch, hidden). half_h, double_c (batch, hidden): h / 2 and 2 c, updated (half_h may be a
    strided view). Returns half_h."""
    double_c.mul_(f).addcmul_(i, g, value=4.0).sub_(i, alpha=2.0)  # 2 c = f 2 c + 2 i tanh(g)
    torch.sigmoid(double_c, out=half_h).mul_(o)
    return half_h.sub_(o, alpha=0.5)  # h / 2 = o sigmoid(2 c) - o / 2 = o tanh(c) / 2


def gru_update_(r: Tensor, z: Tensor, n: Tensor, hidden_n: Tensor, h: Tensor) -> Tensor:
    """One GRU cell update in place from the gate sigmoids r, z, the candidate's doubled input
    pre-activation n (overwritten) and its doubled recurrent term hidden_n (W_hn h + b_hn, b_hn
    included), each (batch, hidden). h (batch, hidden) is updated and returned."""
    n.addcmul_(r, hidden_n).sigmoid_()
    n.add_(n).sub_(1.0)  # n = tanh(...)
    return torch.lerp(n, h, z, out=h)  # (1 - z) * n + z * h = n + z * (h - n), one pass
