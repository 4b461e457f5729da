"""``nn.LayerNorm`` with an elementwise affine map: ``o = γ ⊙ x̂ + β``, ``x̂`` normalised over the last dimensions.

The normalisation (each position's mean and variance over ``normalized_shape``) holds no parameter,
so the layer is affine in ``(γ, β)`` given its recorded input, like an eval-mode BatchNorm; only the
axes differ (the parameters span the last dimensions, the positions ``t`` are the leading ones).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from art_fisher.metrics.engine.layers.base import LayerRule


class LayerNormRule(LayerRule):
    """Per-sample gradients ``Σ_t b_t ⊙ x̂_t`` (γ) and ``Σ_t b_t`` (β) over the positions ``t``."""

    module_types = (nn.LayerNorm,)
    module: nn.LayerNorm

    def __init__(self, module: nn.Module, a: torch.Tensor) -> None:
        super().__init__(module, a)
        self._xhat: torch.Tensor | None = None

    @staticmethod
    def supports(module: nn.Module, a: torch.Tensor) -> bool:
        """``nn.LayerNorm`` with an affine map; a subclass (timm's ``LayerNorm``) only if it computes the same.

        A subclass's own forward is checked once on the probe input against ``F.layer_norm``.
        """
        if not (
            isinstance(module, nn.LayerNorm)
            and module.elementwise_affine
            and module.weight is not None
            and a.dim() > len(module.normalized_shape)
        ):
            return False
        if type(module) is nn.LayerNorm:
            return True
        with torch.no_grad():
            a0 = a[:1].detach()
            want = F.layer_norm(a0, module.normalized_shape, module.weight, module.bias, module.eps)
            got = module(a0)
        return isinstance(got, torch.Tensor) and got.shape == want.shape and torch.allclose(got, want)

    @property
    def normalised(self) -> torch.Tensor:
        """``x̂`` (n, ..., *normalized_shape), computed once per call as ``F.layer_norm`` does."""
        if self._xhat is None:
            m = self.module
            dims = tuple(range(-len(m.normalized_shape), 0))
            a = self.a
            mean = a.mean(dims, keepdim=True)
            var = a.var(dims, unbiased=False, keepdim=True)
            self._xhat = (a - mean) * torch.rsqrt(var + m.eps)
        return self._xhat

    def _positions(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` (n, ..., *normalized_shape) as (n, T, D)."""
        d = self.module.weight.numel()
        return t.reshape(t.shape[0], -1, d)

    def grad(self, b: torch.Tensor, kind: str) -> torch.Tensor:
        shape = (b.shape[0], *self.module.normalized_shape)
        b3 = self._positions(b)
        if kind == "bias":
            return b3.sum(1).reshape(shape)
        return (b3 * self._positions(self.normalised)).sum(1).reshape(shape)

    def change(self, kind: str, d: torch.Tensor, shared: bool) -> torch.Tensor:
        n_norm = len(self.module.normalized_shape)
        lead = self.a.dim() - n_norm  # batch and position dimensions
        if shared:
            d = d.reshape(*([1] * lead), *d.shape)
        else:
            d = d.reshape(d.shape[0], *([1] * (lead - 1)), *d.shape[1:])
        return d if kind == "bias" else d * self.normalised
