"""``nn.LayerNorm`` with an elementwise affine map: ``o = γ ⊙ x̂ + β``, ``x̂`` normalised over the last dimensions.

The normalisation (each position's mean and variance over ``normalized_shape``) holds no parameter,
so the layer is affine in ``(γ, β)`` given its recorded input, like an eval-mode BatchNorm; only the
axes differ (the parameters span the last dimensions, the positions ``t`` are the leading ones).
"""

from __future__ import annotations

import torch
from torch import nn

from art_fisher.metrics._engine._layers._base import LayerRule, made_from, own_forward, same_storage


def _computes_layer_norm(module: nn.LayerNorm, a: torch.Tensor, out: torch.Tensor) -> bool:
    """Whether ``out`` is, in its autograd graph, ``F.layer_norm(a, ...)`` with the module's parameters and ``eps``.

    The node saves no ``eps``; its saved reciprocal standard deviations are compared with those that
    the module's ``eps`` gives, to the rounding of ``a``'s dtype.
    """
    node = out.grad_fn
    if type(node).__name__ != "NativeLayerNormBackward0" or not made_from(node, 0, a):
        return False
    if tuple(getattr(node, "_saved_normalized_shape", ())) != tuple(module.normalized_shape):
        return False
    if not (
        same_storage(getattr(node, "_saved_weight", None), module.weight)
        and same_storage(getattr(node, "_saved_bias", None), module.bias)
    ):
        return False
    rstd = getattr(node, "_saved_result2", None)
    if not isinstance(rstd, torch.Tensor):
        return False
    dims = tuple(range(a.dim() - len(module.normalized_shape), a.dim()))
    with torch.no_grad():
        a64 = a.detach().double()
        want = torch.rsqrt(a64.var(dims, unbiased=False, keepdim=True) + module.eps)
        if rstd.shape != want.shape:
            return False
        tol = 64 * torch.finfo(a.dtype).eps if a.dtype.is_floating_point else 0.0
        return bool(((rstd.double() - want).abs() <= tol * want).all())


class LayerNormRule(LayerRule):
    """Per-sample gradients ``Σ_t b_t ⊙ x̂_t`` (γ) and ``Σ_t b_t`` (β) over the positions ``t``."""

    module_types = (nn.LayerNorm,)
    module: nn.LayerNorm

    def __init__(self, module: nn.Module, a: torch.Tensor) -> None:
        super().__init__(module, a)
        self._xhat: torch.Tensor | None = None

    @staticmethod
    def supports(module: nn.Module, a: torch.Tensor, out: torch.Tensor) -> bool:
        """``nn.LayerNorm`` with an affine map over the last dimensions of ``a``.

        A subclass with its own ``forward`` (timm's ``LayerNorm``) only where ``out`` is, in its
        autograd graph, the layer norm of ``a`` with the module's parameters and ``eps``; one that
        normalises other dimensions (timm's ``LayerNorm2d`` over the channels of NCHW maps) is declined.
        """
        if not (
            isinstance(module, nn.LayerNorm)
            and module.elementwise_affine
            and isinstance(module.weight, torch.Tensor)
            and a.dim() > len(module.normalized_shape)
            and tuple(a.shape[a.dim() - len(module.normalized_shape) :]) == tuple(module.normalized_shape)
            and out.shape == a.shape
        ):
            return False
        return own_forward(module, nn.LayerNorm) or _computes_layer_norm(module, a, out)

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

    def grad(self, b: torch.Tensor, role: str) -> torch.Tensor:
        shape = (b.shape[0], *self.module.normalized_shape)
        b3 = self._positions(b)
        if role == "bias":
            return b3.sum(1).reshape(shape)
        return (b3 * self._positions(self.normalised)).sum(1).reshape(shape)

    def change(self, role: str, d: torch.Tensor, shared: bool) -> torch.Tensor:
        n_norm = len(self.module.normalized_shape)
        lead = self.a.dim() - n_norm  # batch and position dimensions
        if shared:
            d = d.reshape(*([1] * lead), *d.shape)
        else:
            d = d.reshape(d.shape[0], *([1] * (lead - 1)), *d.shape[1:])
        return d if role == "bias" else d * self.normalised
