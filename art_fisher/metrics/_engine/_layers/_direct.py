"""Parameters used directly in the forward: ``o = h + θ``, ``θ.expand(n, ...)`` or ``h ⊙ θ``, broadcast over samples.

A ViT's position embedding is added to every sample's tokens and its class token expanded to every
sample; neither belongs to a layer. Their autograd node (``AddBackward0`` with ``alpha = 1``,
``ExpandBackward0``) plays the layer's part: its output ``o`` (n, *S) changes along a direction ``d``
of ``θ`` by ``d`` broadcast, so the per-sample gradient of ``θ`` is the output-gradient ``b`` summed
over the dimensions ``θ`` is broadcast along (the samples excepted).

A layer scale (ConvNeXt's ``gamma``, timm's ``LayerScale``) multiplies a sample tensor ``h`` by the
parameter, directly or through a reshaped view of it (``MulBackward0``): ``o`` changes along ``d`` by
``h ⊙ d`` and the per-sample gradient is ``b ⊙ h`` summed likewise (:class:`ScaleRule`).
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


#: Autograd nodes that only reshape a parameter on its way into a product with a sample tensor.
VIEW_NODES = ("ViewBackward0", "ReshapeAliasBackward0", "UnsafeViewBackward0", "UnsqueezeBackward0")


def direct_node_ok(node: object) -> bool:
    """Whether ``node`` is one of :data:`DIRECT_NODES` (an addition with ``alpha = 1``)."""
    name = type(node).__name__
    return name in DIRECT_NODES and (name != "AddBackward0" or getattr(node, "_saved_alpha", 1) == 1)


def _takes(fn: object, view: object | None, leaf: torch.Tensor) -> bool:
    """Whether the product's input ``fn`` is the parameter's ``view`` node, or (no view) its leaf."""
    return fn is view if view is not None else fn is not None and getattr(fn, "variable", None) is leaf


def scale_use(
    consumer: object, leaf: torch.Tensor, parents: dict[int, list]
) -> tuple[object, torch.Tensor, tuple[int, ...]] | None:
    """The product node ``o = h ⊙ θ`` that the parameter ``leaf`` enters, ``h``, and the shape ``θ`` enters with.

    None for any other use.

    ``consumer`` is the node that takes the leaf; ``parents`` maps a node's id to the nodes that take its
    output. The parameter enters either directly or through one view (:data:`VIEW_NODES`) used once (then
    with the view's shape); the other factor is the product's saved tensor. Never raises.
    """
    via_view = type(consumer).__name__ in VIEW_NODES
    users = parents.get(id(consumer), []) if via_view else [consumer]
    if len(users) != 1 or type(users[0]).__name__ != "MulBackward0":
        return None
    node = users[0]
    inputs = [fn for fn, _i in getattr(node, "next_functions", ())]
    if len(inputs) != 2:
        return None
    mine = [i for i, fn in enumerate(inputs) if _takes(fn, consumer if via_view else None, leaf)]
    if len(mine) != 1:
        return None
    try:
        h = getattr(node, "_saved_other" if mine[0] == 0 else "_saved_self", None)
    except RuntimeError:  # e.g. an in-place product overwrote the saved factor
        return None
    if not isinstance(h, torch.Tensor):
        return None
    meta = getattr(consumer, "_input_metadata", None) if via_view else None
    used = tuple(getattr(meta[0], "shape", ())) if meta else tuple(leaf.shape)
    return node, h, used


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


class ScaleRule(DirectRule):
    """A parameter multiplying a sample tensor ``h`` (n, *S) elementwise, broadcast: ``o = h ⊙ θ``.

    Parameters
    ----------
    module : nn.Module
        Unused; any module.
    a : Tensor
        The parameter's value, of shape ``P``.
    out_shape : tuple of int
        The product's shape (n, *S).
    h : Tensor of shape (n, *S)
        The other factor, with its graph.
    used_shape : tuple of int
        The shape the parameter enters the product with (a view of it, e.g. (1, C, 1, 1) for a (C,) scale).
    """

    def __init__(
        self,
        module: nn.Module,
        a: torch.Tensor,
        out_shape: tuple[int, ...] = (),
        *,
        h: torch.Tensor,
        used_shape: tuple[int, ...],
    ) -> None:
        super().__init__(module, a.reshape(used_shape), out_shape)
        if tuple(h.shape) != tuple(out_shape):
            raise ValueError(f"the factor of shape {tuple(h.shape)} is not the product's shape {tuple(out_shape)}.")
        self.h = h
        self.param_shape = tuple(a.shape)

    def grad(self, b: torch.Tensor, role: str) -> torch.Tensor:
        return super().grad(b * self.h, role).reshape(b.shape[0], *self.param_shape)

    def change(self, role: str, d: torch.Tensor, shared: bool) -> torch.Tensor:
        return self.h * super().change(role, d, shared)
