"""Parameters used directly in the forward, broadcast over the samples: ``o = h + θ`` or ``o = θ.expand(n, ...)``.

A ViT's position embedding is added to every sample's tokens and its class token expanded to every
sample; neither belongs to a layer. Their autograd node (``AddBackward0`` with ``alpha = 1``,
``ExpandBackward0``) plays the layer's part: its output ``o`` (n, *S) changes along a direction ``d``
of ``θ`` by ``d`` broadcast, so the per-sample gradient of ``θ`` is the output-gradient ``b`` summed
over the dimensions ``θ`` is broadcast along (the samples excepted).
"""

from __future__ import annotations

import torch
from torch import nn

from art_fisher.metrics._engine._layers._base import LayerRule

#: Autograd nodes through which a parameter enters as ``o = h + θ`` or ``o = θ.expand(...)``.
DIRECT_NODES = ("AddBackward0", "ExpandBackward0")


def broadcast_shape(param_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> tuple[int, ...] | None:
    """``param_shape`` padded on the left to ``out_shape``'s length, or None if it does not broadcast to it.

    ``out_shape`` is (1, *S) (one sample); the padded shape must be 1 along the samples.
    """
    if len(param_shape) > len(out_shape):
        return None
    padded = (1,) * (len(out_shape) - len(param_shape)) + tuple(param_shape)
    if padded[0] != 1 or any(p not in (1, o) for p, o in zip(padded[1:], out_shape[1:], strict=True)):
        return None
    return padded


def direct_node_ok(node: object) -> bool:
    """Whether ``node`` is one of :data:`DIRECT_NODES` (an addition with ``alpha = 1``)."""
    name = type(node).__name__
    return name in DIRECT_NODES and (name != "AddBackward0" or getattr(node, "_saved_alpha", 1) == 1)


class DirectRule(LayerRule):
    """A parameter broadcast over the samples into the output of its autograd node.

    Parameters
    ----------
    module : nn.Module
        Unused (the parameter has no layer); any module.
    a : Tensor
        The parameter's value, of shape ``P``.
    out_shape : tuple of int
        The node's output shape (n, *S).
    """

    roles = ("param",)

    def __init__(self, module: nn.Module, a: torch.Tensor, out_shape: tuple[int, ...] = ()) -> None:
        super().__init__(module, a)
        padded = broadcast_shape(tuple(a.shape), (1, *out_shape[1:]))
        if padded is None:
            raise ValueError(f"a parameter of shape {tuple(a.shape)} does not broadcast to {tuple(out_shape)}.")
        self.padded = padded
        self.summed = tuple(i for i in range(1, len(padded)) if padded[i] == 1 and out_shape[i] != 1)

    @staticmethod
    def supports(module: nn.Module, a: torch.Tensor, out: torch.Tensor) -> bool:
        return False  # chosen from the autograd graph by find_coverage, never for a module

    def grad(self, b: torch.Tensor, role: str) -> torch.Tensor:
        if self.summed:
            b = b.sum(self.summed, keepdim=True)
        return b.reshape(b.shape[0], *self.a.shape)

    def change(self, role: str, d: torch.Tensor, shared: bool) -> torch.Tensor:
        if shared:
            return d.reshape(self.padded)
        return d.reshape(d.shape[0], *self.padded[1:])
