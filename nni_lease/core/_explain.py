r"""Explanations by adversarial perturbation (LeaSE stage 2) and how the listener reads them (stage 3).

The LeaSE paper (Hosseini & Xie, "Learning by Self-Explanation", arXiv 2012.12899, as retold in the
blog post this project started from) says, in stage 2: the explainer :math:`f(\cdot; E)` predicts
label :math:`y` for an input :math:`x` and explains it by the perturbation that changes its prediction most,

.. math:: \delta^* = \arg\max_{\delta} \ell\big(f(x + \delta; E), f(x; E)\big),

"the learned optimal perturbation serves as the explanation; a larger perturbation value means the
pixel is more important for the decision"; and in stage 3: "since the perturbation indicates the
importance of input pixels, the listener reweights each pixel, :math:`x \odot \delta`; more important
pixels get more weight". The paper leaves the loss target, the norm ball, the step rule and the form of
the weighting open. The choices made here, measured on digits with a held-out explainer
(``tests/benchmarks/bench_lease.py``; results in ``tests/benchmarks/results/bench_lease.json``):

**Target: the predicted label** (``objective="predicted_label"``, default),
:math:`\ell(x, \delta) = \mathrm{CE}\big(f(x+\delta), \hat y\big)` with :math:`\hat y = \arg\max_k f_k(x)`,
the paper's "given the input and its predicted label :math:`y`". The alternative the paper's formula also
allows, the clean *soft* prediction as target (``objective="soft_prediction"``), is
minimal with zero gradient at :math:`\delta = 0` (a distribution fits itself best): the
ascent then only amplifies its random start, and its explanations were noise (restart cosine 0.08 on
average over three held-out explainers, deletion no better than deleting the brightest pixels). It is kept as a named
option to reproduce that.

**Ball and steps: L2 ball, normalised-gradient steps** (``norm="l2"``, default; radius
``epsilon=0.5``, the usual L2 budget for CIFAR-10-sized inputs in [0, 1]):

.. math:: \delta_{t+1} = \Pi_{\|\delta\|_2 \le \varepsilon}\Big(\delta_t + \eta\,
          \frac{g_t}{\|g_t\|_2}\Big), \qquad g_t = \nabla_\delta\, \ell(x, \delta_t),
          \qquad \eta = 2.5\,\varepsilon / K.

The perturbation's magnitudes then vary from pixel to pixel, which the paper's reading ("a larger
perturbation value means a more important pixel") needs. The L∞ ball with signed steps (``norm="linf"``)
puts most entries at :math:`\pm\varepsilon` (81 % for :math:`\varepsilon = 8/255` and three steps): its magnitudes mark
nothing.

**Start and restarts: one start, uniform in an L2 ball of radius** ``random_start · ε`` **= ε/4**. The
predicted-label loss has a non-zero gradient at :math:`\delta = 0`, so no random start is needed to move;
a small one (10 % of the ascent path :math:`K\eta = 2.5\varepsilon`) keeps the explanation a sample of
the attack's basin rather than of one point, while the ascent, not the start, decides the result (with
a start on the whole ball the restart cosine fell to about 0.6). No restarts are averaged: one start
already meets the stability goal and each restart costs ``steps`` more passes.

**Steps: K = 2** (``steps``). Two and three steps gave the same stability and deletion scores; each step
is one forward and one backward pass of the explainer, the main cost of LeaSE over DARTS.

**Weighting: reweighting that keeps the image** (``weighting="reweight"``, default),

.. math:: z = x \odot (1 - \hat\delta), \qquad \hat\delta = \delta / \|\delta\|_\infty \in [-1, 1],

so every weight lies in :math:`[0, 2]`: the pixels the explainer's adversary darkens most (its
strongest evidence for :math:`\hat y`) get weight 2, untouched pixels weight 1, pixels it brightens
(evidence against) weight down to 0 — "more important pixels get more weight". The paper's literal
product :math:`z = \delta \odot x` (``weighting="product"``) keeps only the few
pixels where :math:`|\delta|` is large: a listener trained on it learnt less than one trained on the
random-sign control :math:`\varepsilon\,r \odot x`, :math:`r \in \{\pm 1\}` (it does beat the same
product with a random :math:`\delta`, so it carries information, but it throws the image away).

**Importance** (:attr:`Explanation.importance`): :math:`-\delta \odot x`, the intensity the adversary
removes. Deleting the pixels where it is largest lowers the explainer's probability of its own
prediction more than deleting the brightest pixels (the deletion measure of the benchmark); ranking by
:math:`|\delta \odot x|` instead, sign ignored, does clearly worse: the sign carries the evidence.

Differentiable explanations (``differentiable``), used for LeaSE's hypergradient:

- ``"none"``: detached result;
- ``"last_step"``: the first ``steps - 1`` steps are constants and the last one keeps its graph
  (one double-backward pass through the explainer). With ``norm="linf"`` the first signed steps are
  piecewise constant, so this is the exact derivative of the returned δ, whose last step replaces
  :math:`\mathrm{sign}(g)` by the smooth :math:`\tanh(g / \mathrm{mean}|g|)`; with ``norm="l2"`` it
  leaves out the dependence of :math:`\delta_{K-1}` on the parameters (an approximation);
- ``"all_steps"``: every step keeps its graph: the exact derivative of the returned δ (L2 ball).

The predicted label :math:`\hat y` and the projection's radius are piecewise constant in the
parameters; the gradient normalisation, the projection and :math:`\|\delta\|_\infty` are differentiated.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import nn

from art_fisher.utils import check_choice, check_int, check_real
from nni_lease._limits import MAX_PGD_STEPS, MAX_RATE

logger = logging.getLogger(__name__)

Objective = Literal["predicted_label", "soft_prediction"]
Norm = Literal["l2", "linf"]
Weighting = Literal["reweight", "product"]
Differentiable = Literal["none", "last_step", "all_steps"]

#: ``objective`` values: the loss the adversary ascends.
OBJECTIVES: tuple[str, ...] = get_args(Objective)
#: ``norm`` values: the ball and its step rule.
NORMS: tuple[str, ...] = get_args(Norm)
#: ``weighting`` values: how the perturbation enters the listener's input.
WEIGHTINGS: tuple[str, ...] = get_args(Weighting)
#: ``differentiable`` values.
DIFFERENTIABLE: tuple[str, ...] = get_args(Differentiable)

_TINY = 1e-12


@dataclass(frozen=True)
class Explanation:
    """Result of :func:`pgd_explain`.

    Attributes
    ----------
    delta : Tensor of shape (N, ...)
        The perturbation (inside the ε-ball); same shape, dtype and device as ``x``.
    explained : Tensor of shape (N, ...)
        What the listener learns from (``listener_input`` of ``delta`` and ``x``).
    x : Tensor of shape (N, ...)
        The clean inputs (detached).
    """

    delta: torch.Tensor
    explained: torch.Tensor
    x: torch.Tensor

    @property
    def importance(self) -> torch.Tensor:
        """Per-entry importance :math:`-\\delta \\odot x`, shape ``(N, ...)``.

        Large where the adversary removes intensity.
        """
        return -self.delta * self.x


def check_explanation_arguments(
    *,
    epsilon: float,
    step_size: float | None,
    steps: int,
    norm: Norm = "l2",
    random_start: float = 0.25,
    objective: Objective = "predicted_label",
    weighting: Weighting = "reweight",
    prefix: str = "",
) -> None:
    """Validate explanation settings before any work.

    Parameters
    ----------
    epsilon : float
        Radius of the ball, positive and finite.
    step_size : float or None
        Size of one step, positive and finite (``None``: the default ``2.5 * epsilon / steps``).
    steps : int
        Number of ascent steps, at least 1.
    norm, objective, weighting : str
        One of :data:`NORMS`, :data:`OBJECTIVES`, :data:`WEIGHTINGS`.
    random_start : float
        Radius of the random start as a fraction of ``epsilon``, in ``[0, 1]``.
    prefix : str
        Prepended to the argument names in messages (e.g. ``"pgd_"`` for :class:`nni_lease.LeaSE`).

    Raises
    ------
    TypeError
        For a value of the wrong type, naming the argument.
    ValueError
        Naming the offending argument, the expected and the received value.
    """
    check_real(epsilon, f"{prefix}epsilon", low=0.0, high=MAX_RATE, low_open=True)
    check_real(step_size, f"{prefix}step_size", low=0.0, high=MAX_RATE, low_open=True, optional=True)
    check_int(steps, f"{prefix}steps", low=1, high=MAX_PGD_STEPS)
    check_real(random_start, f"{prefix}random_start", low=0.0, high=1.0)  # a fraction of epsilon
    check_choice(norm, f"{prefix}norm", Norm)
    check_choice(objective, f"{prefix}objective", Objective)
    check_choice(weighting, f"{prefix}weighting", Weighting)


def _per_sample(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return values.view((-1,) + (1,) * (like.dim() - 1))


def listener_input(delta: torch.Tensor, x: torch.Tensor, weighting: Weighting = "reweight") -> torch.Tensor:
    r"""The listener's input built from a perturbation (see the module docstring).

    Parameters
    ----------
    delta, x : Tensor of shape (N, ...)
        Perturbations and clean inputs.
    weighting : {"reweight", "product"}
        ``"reweight"``: :math:`x \odot (1 - \delta / \|\delta\|_\infty)` (per sample, weights in [0, 2]);
        ``"product"``: :math:`\delta \odot x`.

    Returns
    -------
    Tensor of shape (N, ...)
        Differentiable in ``delta``.
    """
    if weighting == "product":
        return delta * x
    check_choice(weighting, "weighting", Weighting)
    scale = delta.abs().flatten(1).amax(dim=1).clamp_min(_TINY)
    return x * (1.0 - delta / _per_sample(scale, x))


def explanation_loss(
    model: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    delta: torch.Tensor,
    *,
    target: torch.Tensor,
) -> torch.Tensor:
    r"""Per-sample loss the adversary ascends: cross entropy of the prediction at ``x + delta``.

    Parameters
    ----------
    model : callable
        Maps ``(N, ...)`` inputs to logits ``(N, K)``.
    x, delta : Tensor of shape (N, ...)
        Clean inputs and perturbations.
    target : Tensor of shape (N,) (int64) or (N, K) (float)
        The predicted labels :math:`\hat y` (``objective="predicted_label"``) or the clean soft prediction
        :math:`p(x)` (``objective="soft_prediction"``).

    Returns
    -------
    Tensor of shape (N,)
        :math:`-\log p_{\hat y}(x + \delta)` or :math:`-\sum_k p_k(x) \log p_k(x + \delta)`, in nats.
    """
    log_probs = F.log_softmax(model(x + delta), dim=-1)
    if target.dim() == 1:
        return -log_probs.gather(1, target[:, None])[:, 0]
    return -(target * log_probs).sum(dim=-1)


def _swap_in_buffer_copies(model: object) -> list[tuple[nn.Module, str, torch.Tensor]]:
    """Give every buffer of ``model`` a private copy; return what to put back.

    The attack's forward passes then update (e.g. BatchNorm running statistics in train mode) only the
    copies. Putting the original tensor objects back afterwards, instead of copying values into them in
    place, keeps any autograd graph that saved them (double backward through BatchNorm does) valid.
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


def _random_start(x: torch.Tensor, radius: float, norm: str, generator: torch.Generator) -> torch.Tensor:
    """A uniform random point of the ball of ``radius`` (drawn on the CPU from ``generator``)."""
    if radius == 0.0:
        return torch.zeros_like(x)
    if norm == "linf":
        noise = torch.rand(x.shape, generator=generator, dtype=x.dtype)
        return ((2.0 * noise - 1.0) * radius).to(x.device)
    direction = torch.randn(x.shape, generator=generator, dtype=x.dtype)
    direction = direction / _per_sample(direction.flatten(1).norm(dim=1).clamp_min(_TINY), x)
    dims = x[0].numel()
    radii = torch.rand(x.shape[0], generator=generator, dtype=x.dtype).pow(1.0 / dims) * radius
    return (direction * _per_sample(radii, x)).to(x.device)


def _step(
    delta: torch.Tensor, grad: torch.Tensor, *, norm: str, epsilon: float, step_size: float, smooth_sign: bool = False
) -> torch.Tensor:
    """One ascent step followed by the projection onto the ball."""
    if norm == "linf":
        if smooth_sign:
            scale = _per_sample(grad.abs().flatten(1).mean(dim=1), grad) + _TINY
            direction = torch.tanh(grad / scale)
        else:
            direction = grad.sign()
        return (delta + step_size * direction).clamp(-epsilon, epsilon)
    direction = grad / _per_sample(grad.flatten(1).norm(dim=1).clamp_min(_TINY), grad)
    moved = delta + step_size * direction
    norms = moved.flatten(1).norm(dim=1)
    factor = torch.where(norms > epsilon, epsilon / norms.clamp_min(_TINY), torch.ones_like(norms))
    return moved * _per_sample(factor, moved)


def pgd_explain(
    model: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    *,
    epsilon: float = 0.5,
    norm: Norm = "l2",
    steps: int = 2,
    step_size: float | None = None,
    random_start: float = 0.25,
    objective: Objective = "predicted_label",
    weighting: Weighting = "reweight",
    differentiable: Differentiable = "none",
    generator: torch.Generator | None = None,
    clean_logits: torch.Tensor | None = None,
) -> Explanation:
    r"""Explain the model's predictions at ``x`` by projected gradient ascent (see the module docstring).

    Callable with only a model and inputs: every default is the one LeaSE uses.

    Parameters
    ----------
    model : callable
        The explainer: maps inputs ``(N, ...)`` to logits ``(N, K)``. Used in whatever train/eval mode it
        is in; its buffers (e.g. BatchNorm running statistics) are restored afterwards, no ``.grad`` is
        left on its parameters and its parameters are never changed.
    x : Tensor of shape (N, ...)
        Clean inputs (floating point, on the model's device; images in [0, 1] for the default radius).
    epsilon : float
        Radius of the ball in input units (L2 norm of the whole input, or per entry for ``"linf"``).
    norm : {"l2", "linf"}
        Ball and step rule: normalised-gradient steps in an L2 ball, or signed steps in an L∞ ball.
    steps : int
        Number of ascent steps :math:`K \ge 1`.
    step_size : float or None
        Step :math:`\eta`; ``None``: :math:`2.5\,\varepsilon / K`.
    random_start : float
        Radius of the uniform random start as a fraction of ``epsilon`` (``0``: start at δ = 0).
    objective : {"predicted_label", "soft_prediction"}
        Target of the cross entropy: the clean predicted label, or the clean soft prediction.
    weighting : {"reweight", "product"}
        How δ enters the listener's input (``listener_input``).
    differentiable : {"none", "last_step", "all_steps"}
        Which steps keep their autograd graph, so that the result is differentiable in the model's
        parameters (see the module docstring). ``"none"`` returns detached tensors.
    generator : torch.Generator or None
        Source of the random start (a CPU generator); ``None`` uses a fresh generator seeded with 0, so the
        global RNG is never consumed.
    clean_logits : Tensor of shape (N, K) or None
        The model's logits at ``x`` if the caller already has them (saves one forward pass); with
        ``objective="soft_prediction"`` and a differentiable result they should carry their graph.

    Returns
    -------
    Explanation
        ``delta``, ``explained`` (the listener's input) and ``x``, all of the shape of ``x``.

    Raises
    ------
    ValueError
        For a bad setting or a non-floating ``x`` (before any work).

    Examples
    --------
    >>> import torch
    >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    >>> out = pgd_explain(model, torch.rand(5, 1, 4, 4))
    >>> out.delta.shape, bool(out.delta.flatten(1).norm(dim=1).max() <= 0.5 + 1e-6)
    (torch.Size([5, 1, 4, 4]), True)
    """
    check_explanation_arguments(
        epsilon=epsilon,
        step_size=step_size,
        steps=steps,
        norm=norm,
        random_start=random_start,
        objective=objective,
        weighting=weighting,
    )
    check_choice(differentiable, "differentiable", Differentiable)
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise ValueError(f"x must be a floating-point tensor; got {getattr(x, 'dtype', type(x).__name__)}.")
    if x.dim() < 2:
        raise ValueError(f"x must have a batch dimension and at least one more, shape (N, ...); got {tuple(x.shape)}.")
    step_size = 2.5 * epsilon / steps if step_size is None else float(step_size)
    if generator is None:
        generator = torch.Generator().manual_seed(0)
    x = x.detach()
    keep_graph = differentiable != "none"
    swapped = _swap_in_buffer_copies(model)
    # While no step needs the parameters' graph, switching their gradients off spares autograd from
    # recording what weight gradients would need.
    params = [p for p in model.parameters() if p.requires_grad] if isinstance(model, nn.Module) else []
    try:
        with torch.enable_grad():
            if clean_logits is None:
                with torch.set_grad_enabled(keep_graph and objective == "soft_prediction"):
                    clean_logits = model(x)
            if objective == "predicted_label":
                target = clean_logits.detach().argmax(dim=-1)
                graph_target = target
            else:
                target = F.softmax(clean_logits.detach(), dim=-1)
                graph_target = F.softmax(clean_logits, dim=-1) if keep_graph else target
            delta = _random_start(x, random_start * epsilon, norm, generator)
            n_graph_steps = {"none": 0, "last_step": 1, "all_steps": steps}[differentiable]
            for p in params if n_graph_steps < steps else []:
                p.requires_grad_(False)
            for _ in range(steps - n_graph_steps):
                delta = delta.detach().requires_grad_(True)
                loss = explanation_loss(model, x, delta, target=target).sum()
                (grad,) = torch.autograd.grad(loss, delta)
                delta = _step(delta, grad, norm=norm, epsilon=epsilon, step_size=step_size)
            delta = delta.detach()
            for p in params:
                p.requires_grad_(True)
            for k in range(n_graph_steps):
                if not delta.requires_grad:
                    delta.requires_grad_(True)
                loss = explanation_loss(model, x, delta, target=graph_target).sum()
                (grad,) = torch.autograd.grad(loss, delta, create_graph=True)
                smooth = norm == "linf" and k == n_graph_steps - 1
                delta = _step(delta, grad, norm=norm, epsilon=epsilon, step_size=step_size, smooth_sign=smooth)
    finally:
        for p in params:
            p.requires_grad_(True)
        _put_back_buffers(swapped)
    return Explanation(delta=delta, explained=listener_input(delta, x, weighting), x=x)
