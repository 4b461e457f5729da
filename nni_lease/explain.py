r"""Explanations by adversarial perturbation (LeaSE stage 2).

The explainer :math:`f(\cdot; E)` explains its prediction at an input :math:`x` by the perturbation that
changes that prediction most within an :math:`L_\infty` ball,

.. math::

    \delta^* = \arg\max_{\|\delta\|_\infty \le \varepsilon} \ell(x, \delta), \qquad
    \ell(x, \delta) = -\sum_{k=1}^{K} p_k(x) \log p_k(x + \delta),

where :math:`p(\cdot) = \mathrm{softmax}(f(\cdot; E))` and the clean prediction :math:`p(x)` is the soft
target (the cross entropy of the prediction on :math:`x + \delta` against the clean prediction). The
explanation handed to the listener is the pixel weighting :math:`\delta^* \odot x`.

:math:`\ell(x, \cdot)` is minimal, with zero gradient, at :math:`\delta = 0` (the clean prediction is the
best fit of itself), so projected gradient ascent starts from a uniform random point of the ball
(``random_start=True``, drawn from ``generator``, never from the global RNG) and takes signed steps:

.. math:: \delta_{t+1} = \mathrm{clip}_{[-\varepsilon, \varepsilon]}\big(\delta_t + \eta\,
          \mathrm{sign}\,\nabla_\delta \ell(x, \delta_t)\big).

Differentiable variant (``differentiable=True``), used for LeaSE's hypergradient: the first
``steps - 1`` steps are as above and treated as constants; the last step replaces the sign, whose
derivative is zero, by a smooth surrogate and keeps the autograd graph of the gradient,

.. math:: \delta_K = \mathrm{clip}_{[-\varepsilon, \varepsilon]}\big(\delta_{K-1} + \eta
          \tanh(g / \bar g)\big),\qquad g = \nabla_\delta \ell(x, \delta_{K-1}),\quad
          \bar g = \mathrm{mean}_j |g_j| \ (\text{per sample}),

so :math:`\delta_K` (and :math:`\delta_K \odot x`) is an exactly differentiated function of every
parameter of the explainer (the sign steps before it are piecewise constant in the parameters),
architecture weights included (this costs one double-backward pass through the explainer).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

logger = logging.getLogger(__name__)

__all__ = ["Explanation", "explanation_loss", "pgd_explain", "check_pgd_arguments"]


@dataclass(frozen=True)
class Explanation:
    """Result of :func:`pgd_explain`.

    Attributes
    ----------
    delta : Tensor of shape (N, ...)
        The perturbation, every entry in ``[-epsilon, epsilon]``; same shape, dtype and device as ``x``.
    explained : Tensor of shape (N, ...)
        The explained input ``delta * x`` (what the listener learns from).
    """

    delta: torch.Tensor
    explained: torch.Tensor


def check_pgd_arguments(*, epsilon: float, step_size: float, steps: int, prefix: str = "") -> None:
    """Validate PGD settings before any work.

    Parameters
    ----------
    epsilon, step_size : float
        Radius of the L∞ ball and size of one signed step, both positive and finite.
    steps : int
        Number of PGD steps, at least 1.
    prefix : str
        Prepended to the argument names in error messages (e.g. ``"pgd_"`` for :class:`nni_lease.LeaSE`).

    Raises
    ------
    ValueError
        Naming the offending argument, the expected and the received value.
    """
    for name, value in [("epsilon", epsilon), ("step_size", step_size)]:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not ok or not (0.0 < float(value) < float("inf")):
            raise ValueError(f"{prefix}{name} must be a positive finite number; got {value!r}.")
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"{prefix}steps must be a positive int; got {steps!r}.")


def explanation_loss(
    model: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    delta: torch.Tensor,
    *,
    clean_probs: torch.Tensor | None = None,
) -> torch.Tensor:
    r"""Per-sample loss :math:`\ell(x, \delta) = -\sum_k p_k(x) \log p_k(x + \delta)`.

    Parameters
    ----------
    model : callable
        Maps ``(N, ...)`` inputs to logits ``(N, K)``.
    x, delta : Tensor of shape (N, ...)
        Clean inputs and perturbations.
    clean_probs : Tensor of shape (N, K) or None
        The clean prediction :math:`p(x)`; computed (without gradient) when ``None``.

    Returns
    -------
    Tensor of shape (N,)
        Cross entropy in nats; differentiable in ``delta`` and in the model's parameters.
    """
    if clean_probs is None:
        with torch.no_grad():
            clean_probs = F.softmax(model(x), dim=-1)
    log_probs = F.log_softmax(model(x + delta), dim=-1)
    return -(clean_probs * log_probs).sum(dim=-1)


def _swap_in_buffer_copies(model: object) -> list[tuple[nn.Module, str, torch.Tensor]]:
    """Give every buffer of ``model`` a private copy; return what to put back.

    PGD's forward passes then update (e.g. BatchNorm running statistics in train mode) only the copies.
    Putting the original tensor objects back afterwards, instead of copying values into them in place,
    keeps any autograd graph that saved them (double backward through BatchNorm does) valid.
    """
    if not isinstance(model, nn.Module):
        return []
    swapped = []
    for module in model.modules():
        for name, buf in list(module._buffers.items()):
            if buf is not None:
                module._buffers[name] = buf.detach().clone()
                swapped.append((module, name, buf))
    return swapped


def _put_back_buffers(swapped: list[tuple[nn.Module, str, torch.Tensor]]) -> None:
    for module, name, original in swapped:
        module._buffers[name] = original


def pgd_explain(
    model: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    *,
    epsilon: float,
    step_size: float,
    steps: int,
    random_start: bool = True,
    differentiable: bool = False,
    generator: torch.Generator | None = None,
    clean_logits: torch.Tensor | None = None,
) -> Explanation:
    r"""Explain the model's predictions at ``x`` by L∞ projected gradient ascent (see module docstring).

    Parameters
    ----------
    model : callable
        The explainer: maps inputs ``(N, ...)`` to logits ``(N, K)``. Used in whatever train/eval mode it
        is in; its buffers (e.g. BatchNorm running statistics) are restored afterwards, no ``.grad`` is
        left on its parameters and its parameters are never changed.
    x : Tensor of shape (N, ...)
        Clean inputs (floating point, on the model's device).
    epsilon : float
        Radius of the L∞ ball, in input units (inputs in ``[0, 1]``: e.g. ``0.1``).
    step_size : float
        Size :math:`\eta` of one signed step, in input units.
    steps : int
        Number of ascent steps :math:`K \ge 1`.
    random_start : bool
        Start from a uniform random point of the ball (default). With ``False`` the start is ``0``, where
        the gradient vanishes up to rounding, so the first signed step follows rounding noise.
    differentiable : bool
        Make the last step smooth and keep its graph, so that ``delta`` is differentiable in the model's
        parameters. With ``False`` the returned tensors are detached.
    generator : torch.Generator or None
        Source of the random start (a CPU generator); ``None`` uses a fresh generator seeded with 0, so the
        global RNG is never consumed.
    clean_logits : Tensor of shape (N, K) or None
        The model's logits at ``x`` if the caller already has them (saves one forward pass); with
        ``differentiable=True`` they should carry their graph. ``None``: computed here.

    Returns
    -------
    Explanation
        ``delta`` and ``explained = delta * x``, both of the shape of ``x``.

    Raises
    ------
    ValueError
        For non-positive ``epsilon`` / ``step_size`` / ``steps`` or a non-floating ``x``.
    """
    check_pgd_arguments(epsilon=epsilon, step_size=step_size, steps=steps)
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise ValueError(f"x must be a floating-point tensor; got {getattr(x, 'dtype', type(x).__name__)}.")
    if generator is None:
        generator = torch.Generator().manual_seed(0)
    x = x.detach()
    swapped = _swap_in_buffer_copies(model)
    # The signed steps need gradients with respect to delta only: switching the parameters' gradients
    # off meanwhile spares autograd from recording what weight gradients would need.
    params = [p for p in model.parameters() if p.requires_grad] if isinstance(model, nn.Module) else []
    try:
        with torch.enable_grad():
            if clean_logits is not None:
                clean_probs = F.softmax(clean_logits if differentiable else clean_logits.detach(), dim=-1)
            elif differentiable:
                clean_probs = F.softmax(model(x), dim=-1)
            else:
                with torch.no_grad():
                    clean_probs = F.softmax(model(x), dim=-1)
            target = clean_probs.detach()
            for p in params:
                p.requires_grad_(False)
            if random_start:
                noise = torch.rand(x.shape, generator=generator, dtype=x.dtype)
                delta = ((2.0 * noise - 1.0) * epsilon).to(x.device)
            else:
                delta = torch.zeros_like(x)
            n_sign_steps = steps - 1 if differentiable else steps
            for _ in range(n_sign_steps):
                delta = delta.detach().requires_grad_(True)
                loss = explanation_loss(model, x, delta, clean_probs=target).sum()
                (grad,) = torch.autograd.grad(loss, delta)
                delta = (delta + step_size * grad.sign()).clamp(-epsilon, epsilon)
            delta = delta.detach()
            for p in params:
                p.requires_grad_(True)
            if differentiable:
                start = delta.requires_grad_(True)
                loss = explanation_loss(model, x, start, clean_probs=clean_probs).sum()
                (grad,) = torch.autograd.grad(loss, start, create_graph=True)
                shape = (-1,) + (1,) * (x.dim() - 1)
                scale = grad.abs().flatten(1).mean(dim=1).view(shape) + 1e-12
                delta = (start.detach() + step_size * torch.tanh(grad / scale)).clamp(-epsilon, epsilon)
    finally:
        for p in params:
            p.requires_grad_(True)
        _put_back_buffers(swapped)
    return Explanation(delta=delta, explained=delta * x)
