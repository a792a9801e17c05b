"""The folded-weights cache that both data generators keep (SyntheticDataGenerator, PaperDataGenerator).

A generator samples from its weights folded into tables and prepacked products (up_fast.sampling,
up_fast.paper). Folding costs a few products, so the result is kept on the module and recomputed
only when a weight changes. The cache is derived state: it holds oneDNN's opaque packed tensors,
weak references and closures, none of which copy or pickle, so `copy.deepcopy`, `torch.save` and
pickling leave it out, and the copy folds again on its first use.
"""

from __future__ import annotations

import weakref

import torch
from torch import Tensor


class FoldedWeightsCache:
    """Mixin for a Module with `embed`, `net` and `to_logits` submodules and a class attribute
    `folded_type`, whose `fold(embed, net, to_logits)` builds the folded weights. The host calls
    `invalidate_folded()` in its constructor, before `folded()` can run."""

    folded_type = None

    def params_for_folding(self) -> tuple[Tensor, ...]:
        return (self.embed.weight, *self.net.parameters(), *self.to_logits.parameters())

    def folded(self):
        """The folded weights, recomputed when a weight changed: a re-draw, an optimiser step, a
        load, a replaced parameter (each bumps a version counter or swaps a tensor). Writes through
        `.data` bypass the counter: call `invalidate_folded()` after them."""
        params = self.params_for_folding()
        try:
            key = tuple((p.data_ptr(), p._version, p.device, p.dtype) for p in params)
        except RuntimeError:  # inference tensors have no version counter: never cache
            key = None
        same_params = len(params) == len(self._folded_params) and all(
            ref() is p for ref, p in zip(self._folded_params, params)
        )
        if key is None or key != self._folded_key or not same_params:
            with torch.autocast(params[0].device.type, enabled=False):  # all fp32, whatever the caller's autocast
                self._folded = self.folded_type.fold(self.embed, self.net, self.to_logits)
            self._folded_key = key
            self._folded_params = tuple(weakref.ref(p) for p in params)
        return self._folded

    def invalidate_folded(self):
        """Forget the folded weights, after changing a weight in a way its version counter does not see."""
        self._folded, self._folded_key, self._folded_params = None, None, ()

    def __getstate__(self):
        # deepcopy and pickle: everything but the cache, which the copy rebuilds on first use
        state = dict(super().__getstate__())
        state.update(_folded=None, _folded_key=None, _folded_params=())
        return state
