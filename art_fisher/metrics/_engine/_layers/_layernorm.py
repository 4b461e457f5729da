"""``nn.LayerNorm`` with an elementwise affine map: ``o = γ ⊙ x̂ + β``, ``x̂`` normalised over the last dimensions.

The normalisation (each position's mean and variance over ``normalized_shape``) holds no parameter,
so the layer is affine in ``(γ, β)`` given its recorded input, like an eval-mode BatchNorm; only the
axes differ (the parameters span the last dimensions, the positions ``t`` are the leading ones).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.autograd.graph import GradientEdge

from art_fisher.metrics._engine._layers._base import LayerRule, made_from, own_forward, same_storage
from art_fisher.metrics._engine._layers._batchnorm import BatchNormRule


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
    dims = tuple(range(a.dim() - len(module.normalized_shape), a.dim()))
    with torch.no_grad():
        want = torch.rsqrt(a.detach().double().var(dims, unbiased=False, keepdim=True) + module.eps)
    return _saved_rstd_is(node, want, a.dtype)


def _saved_rstd_is(node: object, want: torch.Tensor, dtype: torch.dtype) -> bool:
    """Whether a layer-norm node's saved reciprocal standard deviations equal ``want`` to ``dtype``'s rounding."""
    rstd = getattr(node, "_saved_result2", None)
    if not isinstance(rstd, torch.Tensor) or rstd.shape != want.shape:
        return False
    tol = 64 * torch.finfo(dtype).eps if dtype.is_floating_point else 0.0
    with torch.no_grad():
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


def _permute_of(node: object, dims: tuple[int, ...]) -> bool:
    return type(node).__name__ == "PermuteBackward0" and tuple(getattr(node, "_saved_dims", ())) == dims


def _computes_channel_layer_norm(module: nn.LayerNorm, a: torch.Tensor, out: torch.Tensor) -> bool:
    """Whether ``out`` is ``F.layer_norm(a.permute(0, 2, 3, 1), ...).permute(0, 3, 1, 2)`` (timm's ``LayerNorm2d``).

    Read from the autograd graph: the two permutations around a layer norm of the module's parameters
    over the channels, whose saved reciprocal standard deviations match the module's ``eps``.
    """
    node = out.grad_fn
    if not _permute_of(node, (0, 3, 1, 2)):
        return False
    norm = node.next_functions[0][0]  # type: ignore[union-attr]  # a PermuteBackward0 has one input
    if type(norm).__name__ != "NativeLayerNormBackward0":
        return False
    inner = norm.next_functions[0][0]  # type: ignore[union-attr]  # a NativeLayerNormBackward0 node
    if not (_permute_of(inner, (0, 2, 3, 1)) and made_from(inner, 0, a)):
        return False
    if tuple(getattr(norm, "_saved_normalized_shape", ())) != tuple(module.normalized_shape) or not (
        same_storage(getattr(norm, "_saved_weight", None), module.weight)
        and same_storage(getattr(norm, "_saved_bias", None), module.bias)
    ):
        return False
    with torch.no_grad():
        want = torch.rsqrt(a.detach().double().var(1, unbiased=False) + module.eps).unsqueeze(-1)  # (n, H, W, 1)
    return _saved_rstd_is(norm, want, a.dtype)


class ChannelLayerNormRule(BatchNormRule):
    """A layer norm over the channels of NCHW maps (timm's ``LayerNorm2d``): ``o = γ ⊙ x̂ + β`` per channel.

    Affine in ``(γ, β)`` given the recorded input, with the parameters spanning the channels and the
    positions the spatial dimensions, as in an eval-mode BatchNorm; only ``x̂`` differs (each position
    normalised over its channels).
    """

    module_types = (nn.LayerNorm,)  # type: ignore[assignment]  # a layer norm, not a batch norm
    module: nn.LayerNorm  # type: ignore[assignment]  # the batch-norm rule's formulas on a layer norm

    @staticmethod
    def supports(module: nn.Module, a: torch.Tensor, out: torch.Tensor) -> bool:
        """An affine ``nn.LayerNorm`` subclass whose forward normalises the channels of ``a`` (n, C, H, W)."""
        return (
            isinstance(module, nn.LayerNorm)
            and module.elementwise_affine
            and isinstance(module.weight, torch.Tensor)
            and isinstance(module.bias, torch.Tensor)
            and a.dim() == 4
            and tuple(module.normalized_shape) == (a.shape[1],)
            and out.shape == a.shape
            and _computes_channel_layer_norm(module, a, out)
        )

    @staticmethod
    def output_edge(module: nn.Module, a: torch.Tensor, edge: GradientEdge) -> GradientEdge | None:
        """The module's output (the layer norm's own, :meth:`supports` checked it)."""
        return edge

    @property
    def normalised(self) -> torch.Tensor:
        """``x̂`` (n, C, H, W): each position normalised over the channels, as ``F.layer_norm`` does."""
        if self._xhat is None:
            a = self.a
            mean = a.mean(1, keepdim=True)
            var = a.var(1, unbiased=False, keepdim=True)
            self._xhat = (a - mean) * torch.rsqrt(var + self.module.eps)
        return self._xhat
