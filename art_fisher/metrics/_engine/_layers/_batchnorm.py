"""Eval-mode ``nn.BatchNorm1d/2d/3d``: ``o = γ ⊙ x̂ + β`` with ``x̂`` normalised by the running statistics."""

from __future__ import annotations

import torch
from torch import nn
from torch.autograd.graph import GradientEdge
from torch.nn.modules.batchnorm import _BatchNorm

from art_fisher.metrics._engine._eval_batch_norm import is_eval_batch_norm
from art_fisher.metrics._engine._layers._base import LayerRule, made_from, own_forward, same_storage

_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
#: The input dimensions each batch norm class accepts.
_DIMS: dict[type[nn.Module], tuple[int, ...]] = {nn.BatchNorm1d: (2, 3), nn.BatchNorm2d: (4,), nn.BatchNorm3d: (5,)}


#: Autograd nodes walked from a module's output down to its batch norm (what follows it inside the module:
#: a dropout, an activation, ...).
MAX_NODES_AFTER = 4


def _saved_state(node: object) -> tuple | None:
    """``(training, weight, running mean, running var, eps)`` kept by a batch-norm autograd node, else None.

    PyTorch's own node, or the engine's :class:`~art_fisher.metrics._engine._eval_batch_norm.EvalBatchNorm`
    (always eval mode); None for any other node.
    """
    if is_eval_batch_norm(node):
        weight, mean, var, eps = node.bn  # type: ignore[attr-defined]  # set by EvalBatchNorm.forward
        return False, weight, mean, var, eps
    if type(node).__name__ == "NativeBatchNormBackward0":
        return (
            getattr(node, "_saved_training", True),
            getattr(node, "_saved_weight", None),
            getattr(node, "_saved_running_mean", None),
            getattr(node, "_saved_running_var", None),
            getattr(node, "_saved_eps", None),
        )
    return None


def _is_module_batch_norm(node: object, module: _BatchNorm, a: torch.Tensor) -> bool:
    """Whether ``node`` is the eval-mode batch norm of ``a`` with the module's weight and running statistics."""
    saved = _saved_state(node)
    if saved is None:
        return False
    training, weight, mean, var, eps = saved
    return (
        training is False
        and made_from(node, 0, a)
        and eps == module.eps
        and same_storage(weight, module.weight)
        and same_storage(mean, module.running_mean)
        and same_storage(var, module.running_var)
    )


def batch_norm_node(module: _BatchNorm, a: torch.Tensor, node: object) -> object | None:
    """The autograd node of the module's batch norm of ``a``, from ``node`` down its first inputs, or None.

    ``node`` is the one that produced the module's output; what follows the batch norm inside the module
    (timm's ``BatchNormAct2d``: dropout, activation) is walked through, at most :data:`MAX_NODES_AFTER`
    nodes. Whatever follows, the gradient at the batch norm's own output is what its parameters' per-sample
    gradients need.
    """
    for _ in range(MAX_NODES_AFTER + 1):
        if node is None:
            return None
        if _saved_state(node) is not None:  # the first batch norm beneath: the module's, or none
            return node if _is_module_batch_norm(node, module, a) else None
        inputs = getattr(node, "next_functions", ())
        node = inputs[0][0] if inputs else None
    return None


def xhat(module: _BatchNorm, a: torch.Tensor) -> torch.Tensor:
    """Input ``a`` (n, ch, *) of an eval-mode BatchNorm, normalised by its running statistics."""
    mean, var = module.running_mean, module.running_var
    if mean is None or var is None:
        raise ValueError(f"module must track running statistics (track_running_stats=True); got {module!r}.")
    shape = [1, -1] + [1] * (a.dim() - 2)
    return (a - mean.reshape(shape)) * torch.rsqrt(var.reshape(shape) + module.eps)


class BatchNormRule(LayerRule):
    """Per-sample gradients ``Σ_t b_t x̂_t`` (γ) and ``Σ_t b_t`` (β) per channel.

    Only eval mode with running statistics: in training mode one sample's output depends on the batch.
    """

    module_types = (_BatchNorm,)
    module: _BatchNorm

    def __init__(self, module: nn.Module, a: torch.Tensor) -> None:
        super().__init__(module, a)
        self._xhat: torch.Tensor | None = None

    @staticmethod
    def supports(module: nn.Module, a: torch.Tensor, out: torch.Tensor) -> bool:
        """Eval mode, affine, running statistics.

        A subclass with its own ``forward`` (timm's ``BatchNormAct2d``) where its output comes, in its
        autograd graph, from the batch norm of ``a`` with the module's state (:func:`batch_norm_node`).
        """
        if not (
            isinstance(module, _BatchNorm)
            and bool(module.affine)
            and isinstance(module.running_mean, torch.Tensor)
            and isinstance(module.running_var, torch.Tensor)
            and not module.training
            and a.dim() >= 2
            and a.dim() in next((d for t, d in _DIMS.items() if isinstance(module, t)), (a.dim(),))
            and a.shape[1] == module.num_features
            and out.shape == a.shape
        ):
            return False
        if own_forward(module, _BatchNorm):
            return True
        return batch_norm_node(module, a, out.grad_fn) is not None

    @staticmethod
    def output_edge(module: nn.Module, a: torch.Tensor, edge: GradientEdge) -> GradientEdge | None:
        """The batch norm's own output: the module's output, or the edge beneath what follows it in the module."""
        if own_forward(module, _BatchNorm):
            return edge
        node = batch_norm_node(module, a, edge.node) if isinstance(module, _BatchNorm) else None
        return None if node is None else GradientEdge(node, 0)  # type: ignore[arg-type]  # an autograd node

    @property
    def normalised(self) -> torch.Tensor:
        if self._xhat is None:
            self._xhat = xhat(self.module, self.a)
        return self._xhat

    def grad(self, b: torch.Tensor, role: str) -> torch.Tensor:
        n, ch = b.shape[0], b.shape[1]
        if role == "bias":
            return b.reshape(n, ch, -1).sum(2)
        # Σ_t b_t x̂_t per channel (a batched matrix product of n·ch dot products is several times slower)
        return torch.linalg.vecdot(b.reshape(n, ch, -1), self.normalised.reshape(n, ch, -1))

    def change(self, role: str, d: torch.Tensor, shared: bool) -> torch.Tensor:
        shape = [1 if shared else self.a.shape[0], -1] + [1] * (self.a.dim() - 2)
        if role == "bias":
            return d.reshape(shape)
        return d.reshape(shape) * self.normalised
