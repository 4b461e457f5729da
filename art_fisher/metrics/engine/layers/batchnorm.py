"""Eval-mode ``nn.BatchNorm1d/2d/3d``: ``o = γ ⊙ x̂ + β`` with ``x̂`` normalised by the running statistics."""

from __future__ import annotations

import torch
from torch import nn

from art_fisher.metrics.engine.layers.base import LayerRule

_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def xhat(module: nn.Module, a: torch.Tensor) -> torch.Tensor:
    """Input ``a`` (n, ch, *) of an eval-mode BatchNorm, normalised by its running statistics."""
    shape = [1, -1] + [1] * (a.dim() - 2)
    return (a - module.running_mean.reshape(shape)) * torch.rsqrt(module.running_var.reshape(shape) + module.eps)


class BatchNormRule(LayerRule):
    """Per-sample gradients ``Σ_t b_t x̂_t`` (γ) and ``Σ_t b_t`` (β) per channel.

    Only eval mode with running statistics: in training mode one sample's output depends on the batch.
    """

    module_types = _BN

    def __init__(self, module: nn.Module, a: torch.Tensor) -> None:
        super().__init__(module, a)
        self._xhat: torch.Tensor | None = None

    @staticmethod
    def supports(module: nn.Module, a: torch.Tensor) -> bool:
        return (
            type(module) in _BN
            and module.affine
            and module.running_mean is not None
            and not module.training
            and a.dim() >= 2
        )

    @property
    def normalised(self) -> torch.Tensor:
        if self._xhat is None:
            self._xhat = xhat(self.module, self.a)
        return self._xhat

    def grad(self, b: torch.Tensor, kind: str) -> torch.Tensor:
        n, ch = b.shape[0], b.shape[1]
        if kind == "bias":
            return b.reshape(n, ch, -1).sum(2)
        # Σ_t b_t x̂_t per channel as a batched dot product (no elementwise product in memory)
        normed = self.normalised.reshape(n * ch, -1, 1)
        return torch.bmm(b.reshape(n * ch, 1, -1), normed).reshape(n, ch)

    def change(self, kind: str, d: torch.Tensor, shared: bool) -> torch.Tensor:
        shape = [1 if shared else self.a.shape[0], -1] + [1] * (self.a.dim() - 2)
        if kind == "bias":
            return d.reshape(shape)
        return d.reshape(shape) * self.normalised
