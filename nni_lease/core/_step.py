r"""The LeaSE step, shared by the one-shot strategy and the multi-trial trial code.

Used by :mod:`nni_lease.oneshot` and :mod:`nni_lease.multitrial`.

The four stages of LeaSE (Hosseini & Xie, "Learning by Self-Explanation"), for an explainer
:math:`f(\cdot; E, A)` (architecture :math:`A`, weights :math:`E`) and a listener :math:`g(\cdot; W)`
(fixed architecture):

1. :math:`E^*(A) = \arg\min_E L(E, A, D_e^{tr})`;
2. :math:`\Delta^*(E^*(A))`: the explainer explains the listener's training inputs
   (:func:`nni_lease.core.pgd_explain`), giving the listener's inputs :math:`z = x \odot w(\delta)`;
3. :math:`W^*(\Delta^*) = \arg\min_W \sum_i \ell(g(z_i; W), t_i)`;
4. :math:`\min_A L(E^*(A), D_e^{val}) + \gamma\, L(W^*(\Delta^*(E^*(A))), D_a^{val})`.

The listener only ever sees explained inputs, so its validation inputs are explained by the same
explainer as its training inputs. :class:`LeaseStep` holds the listener, its optimiser and the random
generator of the explanations, and provides

- :meth:`LeaseStep.train_listener`: stages 2 and 3 on one training batch (explain with the current
  explainer, one optimiser step of the listener). The explainer's own step (stage 1) is the caller's:
  NNI's evaluator in the strategy, Adam on cross entropy in the trial;
- :meth:`LeaseStep.listener_validation_loss`: :math:`L_a^{val}` with the current weights (the trial's
  score, and the ``"first_order"`` architecture objective);
- :meth:`LeaseStep.unrolled_objective`: the ``"unrolled"`` architecture objective, the paper's stage 4
  with one virtual step of each network,

  .. math::

      E'(A) &= E - \xi_e \nabla_E\, \mathrm{CE}\big(f(x^{tr}; E, A), y^{tr}\big), \\
      W'(A) &= W - \xi_a \nabla_W\, \mathrm{CE}\big(g(z^{tr}(E', A); W), y^{tr}\big), \\
      J(A) &= \mathrm{CE}\big(f(x^{val}; E', A), y^{val}\big)
             + \gamma\, \mathrm{CE}\big(g(z^{val}(E', A); W'), y^{val}\big),

  where :math:`z(E', A)` are the explanations by the virtually stepped explainer, differentiated
  through every PGD step. ``torch.autograd`` then gives :math:`dJ/dA` exactly: through :math:`E'`
  (second derivatives of the explainer's training loss), through the explanations and through
  :math:`W'` (second derivatives of the listener's loss). It is the DARTS second-order idea carried
  along LeaSE's chain, and costs several double-backward passes per step.

``"first_order"`` is the approximation :math:`E' = E`, :math:`W' = W`: :math:`L_a^{val}` then reaches
:math:`A` only through the explanation of the validation batch, whose last PGD step alone is
differentiated (:func:`~nni_lease.core.pgd_explain` with ``differentiable="last_step"``); the
explainer's term is the evaluator's own validation loss, exactly as in NNI's DARTS.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from nni_lease.core._config import LeaseConfig
from nni_lease.core._explain import Differentiable, Explanation, pgd_explain

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ListenerStep:
    """What :meth:`LeaseStep.train_listener` did: the explanation, the listener's logits and loss (detached)."""

    explanation: Explanation
    logits: torch.Tensor
    loss: torch.Tensor


@dataclass(frozen=True)
class UnrolledObjective:
    """The terms of :meth:`LeaseStep.unrolled_objective` (``objective`` keeps its graph)."""

    objective: torch.Tensor
    explainer_val_loss: torch.Tensor
    listener_val_loss: torch.Tensor
    explainer_val_logits: torch.Tensor
    listener_val_logits: torch.Tensor


class LeaseStep:
    """Stages 2-4 of a LeaSE step for one explainer and one listener (see the module docstring).

    Parameters
    ----------
    config : LeaseConfig
        LeaSE's settings.
    listener : nn.Module
        The listener, mapping explained inputs ``(N, ...)`` to logits ``(N, K)``; trained in place.
    listener_optimizer : torch.optim.Optimizer or None
        Its optimiser; ``None`` builds ``config.listener_optimizer`` over its parameters.
    generator : torch.Generator or None
        Source of the explanations' random starts; ``None``: a CPU generator seeded with ``config.seed``.
    """

    def __init__(
        self,
        config: LeaseConfig,
        listener: nn.Module,
        listener_optimizer: torch.optim.Optimizer | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        self.config = config
        self.listener = listener
        self.listener_optimizer = (
            listener_optimizer
            if listener_optimizer is not None
            else config.make_listener_optimizer(listener.parameters())
        )
        self.generator = generator if generator is not None else torch.Generator().manual_seed(config.seed)

    def explain(
        self,
        explainer: Callable[[torch.Tensor], torch.Tensor],
        x: torch.Tensor,
        *,
        differentiable: Differentiable = "none",
        clean_logits: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Explanation:
        """Stage 2: :func:`~nni_lease.core.pgd_explain` with these settings and this step's generator."""
        return pgd_explain(
            explainer,
            x,
            **self.config.explanation_kwargs(),
            differentiable=differentiable,
            generator=self.generator if generator is None else generator,
            clean_logits=clean_logits,
        )

    def train_listener(
        self,
        explainer: Callable[[torch.Tensor], torch.Tensor],
        x: torch.Tensor,
        y: torch.Tensor,
        *,
        backward: Callable[[torch.Tensor], Any] | None = None,
    ) -> ListenerStep:
        """Stages 2 and 3 on one training batch: explain ``x``, then one optimiser step of the listener.

        Parameters
        ----------
        explainer : callable
            The explainer after its own weight step (stage 1).
        x : Tensor of shape (N, ...)
            Training inputs.
        y : Tensor of shape (N,)
            Their labels.
        backward : callable or None
            How to backpropagate the listener's loss (Lightning's ``manual_backward`` in the strategy);
            ``None``: ``loss.backward()``.
        """
        explanation = self.explain(explainer, x)
        self.listener_optimizer.zero_grad()
        logits = self.listener(explanation.explained)
        loss = F.cross_entropy(logits, y)
        (backward or torch.Tensor.backward)(loss)
        self.listener_optimizer.step()
        return ListenerStep(explanation=explanation, logits=logits.detach(), loss=loss.detach())

    def listener_validation_loss(
        self,
        explainer: Callable[[torch.Tensor], torch.Tensor],
        x: torch.Tensor,
        y: torch.Tensor,
        *,
        differentiable: Differentiable = "none",
        clean_logits: torch.Tensor | None = None,
        reduction: str = "mean",
    ) -> tuple[torch.Tensor, torch.Tensor, Explanation]:
        """:math:`L_a^{val}`: the listener's cross entropy on validation inputs explained by ``explainer``.

        With ``differentiable="last_step"`` this is the ``"first_order"`` objective's listener term.

        Returns
        -------
        loss : Tensor
            Mean (or, with ``reduction="sum"``, summed) cross entropy in nats.
        logits : Tensor of shape (N, K)
            The listener's logits.
        explanation : Explanation
            The explanation of ``x``.
        """
        explanation = self.explain(explainer, x, differentiable=differentiable, clean_logits=clean_logits)
        with torch.set_grad_enabled(differentiable != "none" and torch.is_grad_enabled()):
            logits = self.listener(explanation.explained)
            loss = F.cross_entropy(logits, y, reduction=reduction)
        return loss, logits, explanation

    def unrolled_objective(
        self,
        explainer: nn.Module,
        arch_parameters: Sequence[torch.Tensor],
        train_batch: tuple[torch.Tensor, torch.Tensor],
        val_batch: tuple[torch.Tensor, torch.Tensor],
        *,
        explainer_step_size: float,
        generator: torch.Generator | None = None,
    ) -> UnrolledObjective:
        """The ``"unrolled"`` architecture objective :math:`J(A)` (module docstring), with its graph.

        Parameters
        ----------
        explainer : nn.Module
            The explainer (supernet); its parameters are ``arch_parameters`` (A) and the weights (E).
            Neither it nor the listener is changed: the virtual steps use ``torch.func.functional_call``
            and copies of the buffers.
        arch_parameters : sequence of Tensor
            The architecture parameters A among ``explainer.parameters()`` (excluded from the virtual step).
        train_batch, val_batch : (x, y) pairs
            A training batch (virtual steps) and a validation batch (the objective).
        explainer_step_size : float
            :math:`\\xi_e`; the listener's :math:`\\xi_a` is ``config.unrolled_step_size`` or the
            listener optimiser's current learning rate.
        generator : torch.Generator or None
            Source of both explanations' random starts (default: this step's generator).
        """
        config = self.config
        listener_step_size = config.unrolled_step_size or float(self.listener_optimizer.param_groups[0]["lr"])
        (x_tr, y_tr), (x_val, y_val) = train_batch, val_batch
        arch_ids = {id(p) for p in arch_parameters}
        params: dict[str, torch.Tensor] = dict(explainer.named_parameters())
        buffers = {name: b.clone() for name, b in explainer.named_buffers()}
        weight_names = [n for n, p in params.items() if id(p) not in arch_ids and p.requires_grad]

        def explainer_at(values: dict[str, torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
            return lambda inputs: functional_call(explainer, (values, buffers), (inputs,))

        # E'(A): one virtual step of the explainer on its training loss, graph kept.
        train_loss = F.cross_entropy(explainer_at(params)(x_tr), y_tr)
        grads = torch.autograd.grad(train_loss, [params[n] for n in weight_names], create_graph=True)
        stepped = dict(params)
        for name, grad in zip(weight_names, grads, strict=True):
            stepped[name] = params[name] - explainer_step_size * grad
        explainer_1 = explainer_at(stepped)
        # W'(A): one virtual listener step on the training batch explained by E'.
        train_expl = self.explain(explainer_1, x_tr, differentiable="all_steps", generator=generator)
        w_params: dict[str, torch.Tensor] = dict(self.listener.named_parameters())
        w_buffers = {name: b.clone() for name, b in self.listener.named_buffers()}
        w_names = [n for n, p in w_params.items() if p.requires_grad]
        listener_loss = F.cross_entropy(
            functional_call(self.listener, (w_params, w_buffers), (train_expl.explained,)), y_tr
        )
        w_grads = torch.autograd.grad(listener_loss, [w_params[n] for n in w_names], create_graph=True)
        w_stepped = dict(w_params)
        for name, grad in zip(w_names, w_grads, strict=True):
            w_stepped[name] = w_params[name] - listener_step_size * grad
        # J(A): the explainer's and the listener's validation losses after the virtual steps.
        val_logits = explainer_1(x_val)
        explainer_val_loss = F.cross_entropy(val_logits, y_val)
        val_expl = self.explain(
            explainer_1, x_val, differentiable="all_steps", clean_logits=val_logits, generator=generator
        )
        listener_logits = functional_call(self.listener, (w_stepped, w_buffers), (val_expl.explained,))
        listener_val_loss = F.cross_entropy(listener_logits, y_val)
        return UnrolledObjective(
            objective=explainer_val_loss + config.gamma * listener_val_loss,
            explainer_val_loss=explainer_val_loss,
            listener_val_loss=listener_val_loss,
            explainer_val_logits=val_logits,
            listener_val_logits=listener_logits,
        )
