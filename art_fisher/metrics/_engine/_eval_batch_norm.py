"""Eval-mode batch norms in the hook engine's recorded passes: the same output, a cheaper backward.

In eval mode a batch norm is the per-channel affine map ``o = s ⊙ a + t`` (``s = γ / √(v + ε)``), so the
gradient of its input is ``s ⊙ ∂o``. PyTorch's batch-norm backward kernel computes it on the CPU several
times slower than one multiplication, most of all on small maps (measured 2–10× at batch 8 on
MobileNetV2's layers), and the engine runs it once per column of ``W``. Inside :class:`CheapBackward`,
``F.batch_norm`` calls in eval mode whose weight, bias and statistics need no gradient (the engine's
parameters are detached) run PyTorch's own forward kernel and have :class:`EvalBatchNorm`'s backward;
every other call is untouched. The autograd node keeps the call's weight, statistics and ``eps``, so that
the batch-norm rule still recognises it (:func:`is_eval_batch_norm`).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode


class EvalBatchNorm(torch.autograd.Function):
    """``F.batch_norm(a, mean, var, weight, bias, training=False, eps=eps)`` with the affine map's backward."""

    @staticmethod
    def forward(
        ctx: Any,
        a: torch.Tensor,
        mean: torch.Tensor,
        var: torch.Tensor,
        weight: torch.Tensor | None,
        bias: torch.Tensor | None,
        eps: float,
    ) -> torch.Tensor:
        scale = torch.rsqrt(var + eps)
        if weight is not None:
            scale = scale * weight
        ctx.save_for_backward(scale)
        ctx.bn = (weight, mean, var, eps)  # read by is_eval_batch_norm
        return F.batch_norm(a, mean, var, weight, bias, False, 0.0, eps)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        (scale,) = ctx.saved_tensors
        shape = [1, -1] + [1] * (grad.dim() - 2)
        return grad * scale.reshape(shape), None, None, None, None, None


def _batch_norm_args(args: tuple, kwargs: dict) -> tuple | None:
    """``(a, mean, var, weight, bias, eps)`` of an ``F.batch_norm`` call :class:`EvalBatchNorm` can run, or None."""
    names = ("input", "running_mean", "running_var", "weight", "bias", "training", "momentum", "eps")
    defaults = {"weight": None, "bias": None, "training": False, "momentum": 0.1, "eps": 1e-5}
    if len(args) > len(names) or any(k not in names for k in kwargs):
        return None
    bound = {**defaults, **dict(zip(names, args, strict=False)), **kwargs}
    if len(bound) != len(names):
        return None
    a, mean, var, weight, bias = (bound[k] for k in names[:5])
    tensors = (mean, var, weight, bias)
    if (
        bound["training"] is not False
        or not isinstance(a, torch.Tensor)
        or not a.is_floating_point()
        or a.dim() < 2
        or not isinstance(mean, torch.Tensor)
        or not isinstance(var, torch.Tensor)
        or not all(t is None or (isinstance(t, torch.Tensor) and not t.requires_grad) for t in tensors)
        or not isinstance(bound["eps"], float)
    ):
        return None
    return a, mean, var, weight, bias, bound["eps"]


class CheapBackward(TorchFunctionMode):
    """Within it, eval-mode ``F.batch_norm`` calls that need no parameter gradient run as :class:`EvalBatchNorm`."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.batch_norm:
            bound = _batch_norm_args(args, kwargs)
            if bound is not None:
                return EvalBatchNorm.apply(*bound)
        return func(*args, **kwargs)


def is_eval_batch_norm(node: object) -> bool:
    """Whether the autograd ``node`` is an :class:`EvalBatchNorm` call."""
    return type(node).__name__ == "EvalBatchNormBackward" and hasattr(node, "bn")
