"""Eval-mode batch norms in the hook engine's recorded passes: the same output, a cheaper backward.

In eval mode a batch norm is the per-channel affine map ``o = s ⊙ a + t`` (``s = γ / √(v + ε)``), so the
gradient of its input is ``s ⊙ ∂o``. PyTorch's batch-norm backward kernel computes it on the CPU several
times slower than one multiplication, most of all on small maps (measured 2–10× at batch 8 on
MobileNetV2's layers), and the engine runs it once per column of ``W``.

Within :func:`cheaper_batch_norms`, a batch-norm module with ``_BatchNorm``'s own forward runs it without
a graph and hands its output to :class:`EvalBatchNorm`, which gives it that backward; a subclass with its
own forward (timm's ``BatchNormAct2d``) runs under :class:`CheapBackward` during its call, which does the
same to the ``F.batch_norm`` call inside (:func:`eval_batch_norm`). Only eval-mode calls whose weight,
bias and statistics need no gradient are taken (the engine's parameters are detached); every other call
is PyTorch's. The mode is entered only during those modules' calls: over a whole forward pass, a
torch-function mode's Python call per torch function took back a third of what it saved. The autograd
node keeps the call's weight, statistics and ``eps``, so that the batch-norm rule still recognises it
(:func:`is_eval_batch_norm`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.overrides import TorchFunctionMode


class EvalBatchNorm(torch.autograd.Function):
    """The output ``out`` of an eval-mode batch norm of ``a``, computed without a graph, with the affine map's backward.

    ``out`` is returned as the output itself (marked as modified in place, so no copy): its gradient
    reaches ``a`` as ``s ⊙ ∂o`` with ``s = weight / √(var + eps)``.
    """

    @staticmethod
    def forward(
        ctx: Any,
        a: torch.Tensor,
        out: torch.Tensor,
        mean: torch.Tensor,
        var: torch.Tensor,
        weight: torch.Tensor | None,
        eps: float,
    ) -> torch.Tensor:
        scale = torch.rsqrt(var + eps)
        if weight is not None:
            scale = scale * weight
        ctx.save_for_backward(scale)
        ctx.bn = (weight, mean, var, eps)  # read by is_eval_batch_norm
        ctx.mark_dirty(out)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        (scale,) = ctx.saved_tensors
        shape = [1, -1] + [1] * (grad.dim() - 2)
        return grad * scale.reshape(shape), None, None, None, None, None


def eval_batch_norm(
    a: torch.Tensor,
    mean: torch.Tensor,
    var: torch.Tensor,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    eps: float,
) -> torch.Tensor:
    """``F.batch_norm(a, mean, var, weight, bias, training=False, eps=eps)`` with :class:`EvalBatchNorm`'s backward."""
    with torch.no_grad():
        out = F.batch_norm(a, mean, var, weight, bias, False, 0.0, eps)
    return EvalBatchNorm.apply(a, out, mean, var, weight, eps)


def _batch_norm_args(args: tuple, kwargs: dict) -> tuple | None:
    """``(a, mean, var, weight, bias, eps)`` of an ``F.batch_norm`` call :func:`eval_batch_norm` can run, or None."""
    names = ("input", "running_mean", "running_var", "weight", "bias", "training", "momentum", "eps")
    defaults = {"weight": None, "bias": None, "training": False, "momentum": 0.1, "eps": 1e-5}
    if len(args) > len(names) or any(k not in names for k in kwargs):
        return None
    bound = {**defaults, **dict(zip(names, args, strict=False)), **kwargs}
    if len(bound) != len(names):
        return None
    a, mean, var, weight, bias, training, _momentum, eps = (bound[k] for k in names)
    return (a, mean, var, weight, bias, eps) if _applies(a, mean, var, weight, bias, training, eps) else None


def _applies(a: object, mean: object, var: object, weight: object, bias: object, training: object, eps: object) -> bool:
    """Whether a batch norm with these arguments is the eval-mode affine map with nothing else needing a gradient."""
    return (
        training is False
        and isinstance(a, torch.Tensor)
        and a.is_floating_point()
        and a.dim() >= 2
        and isinstance(mean, torch.Tensor)
        and isinstance(var, torch.Tensor)
        and all(t is None or (isinstance(t, torch.Tensor) and not t.requires_grad) for t in (mean, var, weight, bias))
        and isinstance(eps, float)
    )


class CheapBackward(TorchFunctionMode):
    """Within it, eval-mode ``F.batch_norm`` calls that need no parameter gradient run as :func:`eval_batch_norm`."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.batch_norm:
            bound = _batch_norm_args(args, kwargs)
            if bound is not None:
                return eval_batch_norm(*bound)
        return func(*args, **kwargs)


def _plain(module: nn.Module) -> bool:
    """A batch-norm module whose forward is ``_BatchNorm``'s own (its output is the batch norm's)."""
    return type(module).forward is _BatchNorm.forward and "forward" not in vars(module)


@contextmanager
def cheaper_batch_norms(modules: Iterable[nn.Module]) -> Iterator[None]:
    """Give the eval-mode batch norms of ``modules`` the affine map's backward while inside the context.

    A module with ``_BatchNorm``'s own forward runs it without a graph, and its output is handed to
    :class:`EvalBatchNorm`; any other (a subclass with its own forward, such as timm's ``BatchNormAct2d``)
    runs under :class:`CheapBackward`, which catches the ``F.batch_norm`` call inside.
    """
    mode = CheapBackward()
    grad_before: dict[int, bool] = {}  # plain module now running → the grad mode before its call
    entered = [0]  # modes entered and not yet left (a forward that raised leaves one)

    def before_plain(module: nn.Module, inputs: tuple) -> None:
        if inputs and _applies(
            inputs[0], module.running_mean, module.running_var, module.weight, module.bias, module.training, module.eps
        ):
            grad_before[id(module)] = torch.is_grad_enabled()
            torch.set_grad_enabled(False)

    def after_plain(module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor | None:
        enabled = grad_before.pop(id(module), None)
        if enabled is None:
            return None
        torch.set_grad_enabled(enabled)
        if not enabled or not inputs[0].requires_grad:
            return None
        return EvalBatchNorm.apply(
            inputs[0], output, module.running_mean, module.running_var, module.weight, module.eps
        )

    def enter(_module: nn.Module, _inputs: object) -> None:
        mode.__enter__()
        entered[0] += 1

    def leave(_module: nn.Module, _inputs: object, _output: object) -> None:
        if entered[0]:
            mode.__exit__(None, None, None)
            entered[0] -= 1

    grad_mode = torch.is_grad_enabled()
    handles = []
    for module in modules:
        if _plain(module):
            handles.append(module.register_forward_pre_hook(before_plain))
            handles.append(module.register_forward_hook(after_plain, prepend=True))
        else:
            handles.append(module.register_forward_pre_hook(enter))
            handles.append(module.register_forward_hook(leave, prepend=True))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
        while entered[0]:
            mode.__exit__(None, None, None)
            entered[0] -= 1
        torch.set_grad_enabled(grad_mode)


def is_eval_batch_norm(node: object) -> bool:
    """Whether the autograd ``node`` is an :class:`EvalBatchNorm` call."""
    return type(node).__name__ == "EvalBatchNormBackward" and hasattr(node, "bn")
