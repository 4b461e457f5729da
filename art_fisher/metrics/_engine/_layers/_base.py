"""The base class of the per-layer rules, :class:`LayerRule`.

A rule knows, for one call of its layer with recorded input ``a`` (n, ...), how the layer's parameters
enter its output ``o``:

- :meth:`LayerRule.grad`: the per-sample gradient of a parameter from output-gradients ``b = ∂s/∂o``
  (n, *o) of some scalar ``s`` of each sample, i.e. the contraction of ``b`` with ``a``;
- :meth:`LayerRule.flat_grad_fn` / :meth:`LayerRule.ghost_gram`: the Gram matrix of the per-sample
  gradients of several output-gradients ``b_j`` (the columns), either by turning every ``b_j`` into its flattened
  per-sample gradient at once, or, where that is cheaper, by a "ghost" contraction of all ``b_j`` with
  ``a`` that never forms the per-sample gradients; :meth:`LayerRule.sq_norm`: only the diagonal, one
  column at a time;
- :meth:`LayerRule.change`: the change of ``o`` along a parameter direction (shared, or per sample).

Every formula is made of differentiable torch operations, so with a recorded input that carries an
autograd graph the results are differentiable in the model's input.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.autograd.graph import GradientEdge

FlatGrad = Callable[[torch.Tensor], torch.Tensor]


class LayerRule:
    """How one call of a layer depends on its parameters; subclasses implement one layer type.

    Parameters
    ----------
    module : nn.Module
        The layer.
    a : Tensor of shape (n, ...)
        Its recorded input.
    """

    #: Module classes the rule may apply to (:meth:`supports` decides on the recorded call).
    module_types: tuple[type[nn.Module], ...] = ()
    #: Names of the parameters the rule handles.
    roles: tuple[str, ...] = ("weight", "bias")

    def __init__(self, module: nn.Module, a: torch.Tensor) -> None:
        self.module = module
        self.a = a

    @staticmethod
    def supports(module: nn.Module, a: torch.Tensor, out: torch.Tensor) -> bool:
        """Whether the rule applies to ``module`` called on the input ``a`` (1, ...) with output ``out``.

        Decided from the module's type, configuration and the shapes, and for a subclass that
        overrides ``forward`` from the autograd node that produced ``out``; the module is never run
        and nothing here raises, so a module the rule does not cover is declined and its parameters go
        to ``torch.func``.
        """
        raise NotImplementedError

    @staticmethod
    def output_edge(module: nn.Module, a: torch.Tensor, edge: GradientEdge) -> GradientEdge | None:
        """The gradient edge whose output-gradients ``b`` the rule takes, from the edge of the module's output.

        The module's output itself, unless the rule's affine map is followed by more inside the
        module (an activation after a batch norm): then the edge of the map's own output, or None where
        it is not found (the layer then goes to ``torch.func``).
        """
        return edge

    def grad(self, b: torch.Tensor, role: str) -> torch.Tensor:
        """Per-sample gradient (n, *param.shape) from output-gradients ``b`` (n, *out)."""
        raise NotImplementedError

    def flat_grad_fn(self, role: str, n_cols: int) -> FlatGrad | None:
        """``b_j ↦`` flattened per-sample gradient (n, M), or None where :meth:`ghost_gram` is cheaper."""
        return lambda b: self.grad(b, role).flatten(1)

    def sq_norm(self, b: torch.Tensor, role: str, n_cols: int) -> torch.Tensor:
        """Squared norm (n,) of the per-sample gradient of ``b`` (n, *out), by the layer's cheaper route.

        ``n_cols`` is the number of columns the caller will pass one after the other (a ghost route
        may prepare something once for all of them).
        """
        return sq_norms(self.grad(b, role))

    def materialised_gram(self, b: torch.Tensor, role: str, diagonal: bool) -> torch.Tensor:
        """Gram matrices (n, C', C') of the per-sample gradients of ``b`` (n, C', *out), or their diagonals (n, C')."""
        g = torch.stack([self.grad(b[:, j], role).flatten(1) for j in range(b.shape[1])], dim=1)
        return gram(g, diagonal)

    def ghost_gram(self, b: torch.Tensor, role: str, diagonal: bool) -> torch.Tensor:
        """As :meth:`materialised_gram`, by the layer's ghost contraction where it has one."""
        return self.materialised_gram(b, role, diagonal)

    def change(self, role: str, d: torch.Tensor, shared: bool) -> torch.Tensor:
        """Output change (broadcastable to (n, *out)) along ``d`` (*param.shape if shared, else (n, *param.shape))."""
        raise NotImplementedError

    def change_along_grad(self, b: torch.Tensor, role: str) -> torch.Tensor:
        """Output change along the layer's own per-sample gradient of ``b`` (n, *out): ``change(grad(b))``."""
        return self.change(role, self.grad(b, role), shared=False)


def plain(module: nn.Module, types: tuple[type[nn.Module], ...]) -> bool:
    """``module``'s class is one of ``types`` (no subclass) and its ``forward`` is not replaced on the instance."""
    return type(module) in types and "forward" not in vars(module)


def own_forward(module: nn.Module, base: type[nn.Module]) -> bool:
    """``module`` is a ``base`` whose ``forward`` is ``base``'s own (a subclass that only adds attributes)."""
    return isinstance(module, base) and type(module).forward is base.forward and "forward" not in vars(module)


def made_from(node: object, index: int, t: torch.Tensor) -> bool:
    """Whether input ``index`` of the autograd ``node`` is the tensor ``t`` (its producing node, or its leaf)."""
    inputs = getattr(node, "next_functions", ())
    if index >= len(inputs) or inputs[index][0] is None:
        return False
    child = inputs[index][0]
    if t.grad_fn is not None:
        return child is t.grad_fn
    return getattr(child, "variable", None) is t


def same_storage(saved: object, t: torch.Tensor | None) -> bool:
    """Whether a tensor saved by an autograd node is ``t`` (same data, e.g. a parameter leaf of its values)."""
    if t is None or saved is None:
        return saved is None and t is None
    return (
        isinstance(saved, torch.Tensor)
        and saved.shape == t.shape
        and saved.device == t.device
        and saved.data_ptr() == t.data_ptr()
    )


def gram(g: torch.Tensor, diagonal: bool = False) -> torch.Tensor:
    """``(n, C', M)`` per-sample, per-column vectors → Gram matrices ``(n, C', C')`` or their diagonals ``(n, C')``."""
    g = g.flatten(2)
    if diagonal:
        return torch.linalg.vecdot(g, g)
    return torch.bmm(g, g.transpose(1, 2))


def sq_norms(g: torch.Tensor) -> torch.Tensor:
    """The squared norm (n,) of each sample's entries of ``g`` (n, ...), as one dot product (no squared copy)."""
    flat = g.reshape(g.shape[0], -1)
    return torch.linalg.vecdot(flat, flat)
