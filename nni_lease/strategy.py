r"""LeaSE (Learning by Self-Explanation) as an NNI 3.0 one-shot strategy.

Two networks learn the same task. The *explainer* is NNI's differentiable supernet of the model space
(architecture weights :math:`A`, the DARTS :math:`\alpha`; operation weights :math:`E`); the *listener*
is a fixed network with weights :math:`W`. Each training step of :class:`LeaseLightningModule` takes one
training batch :math:`(x^{tr}, y^{tr})` and one validation batch :math:`(x^{val}, y^{val})` (NNI's DARTS
data plumbing) and runs, like NNI's DARTS, the architecture step first:

4. architecture step on the validation batch, minimising the LeaSE objective

   .. math:: L_e^{val}(E, A) + \gamma\, L_a^{val}, \qquad
             L_a^{val} = \mathrm{CE}\big(g(\delta^{val}(A) \odot x^{val}; W'), y^{val}\big),

   where :math:`\delta^{val}(A)` is the differentiable PGD explanation of :mod:`nni_lease.explain`
   (its last step keeps the graph, so the listener's loss reaches :math:`A` through :math:`\delta`) and

   - ``hypergradient="first_order"``: :math:`W' = W` (listener weights held fixed);
   - ``hypergradient="unrolled"``: :math:`W' = W - \xi \nabla_W \mathrm{CE}(g(\delta^{tr}(A) \odot
     x^{tr}; W), y^{tr})`, one unrolled listener step (``torch.func.functional_call``) differentiated
     as well, with :math:`\xi` = ``unrolled_step_size``;

1. explainer weight step on the training batch (the evaluator's own loss and optimiser, exactly as in
   NNI's DARTS);
2. explanation :math:`\delta^{tr}` of the training batch by PGD with the updated explainer;
3. listener weight step on :math:`(\delta^{tr} \odot x^{tr}, y^{tr})`.

Over many steps this is the paper's cycle 1 → 2 → 3 → 4 (the architecture step of one iteration uses the
explainer and listener trained in the previous one); ordering it architecture-first makes ``gamma=0``
exactly NNI's DARTS: the same supernet, the same architecture and weight updates, the same batches.
The explainer's and listener's training and validation sets are NNI's train / val loaders
(:math:`D_e^{tr} = D_a^{tr}`, :math:`D_e^{val} = D_a^{val}`).
"""

from __future__ import annotations

import contextlib
import copy
import logging
from collections.abc import Iterator
from typing import Any, Literal, cast

import torch
import torch.nn.functional as F
from nni.nas.evaluator.pytorch import Lightning
from nni.nas.oneshot.pytorch.differentiable import DartsLightningModule
from nni.nas.oneshot.pytorch.profiler import ExpectationProfilerPenalty
from nni.nas.strategy import DARTS
from torch import nn
from torch.func import functional_call

from nni_lease.explain import Explanation, check_pgd_arguments, pgd_explain
from nni_lease.listener import check_listener, default_listener

logger = logging.getLogger(__name__)

__all__ = ["HYPERGRADIENTS", "LeaSE", "LeaseLightningModule"]

#: Accepted values of ``hypergradient``.
HYPERGRADIENTS: tuple[str, ...] = ("first_order", "unrolled")

#: Metrics :class:`LeaseLightningModule` logs once per epoch (Lightning ``self.log``, ``on_epoch=True``).
METRICS: tuple[str, ...] = (
    "explainer/train_loss",
    "explainer/train_acc",
    "explainer/val_loss",
    "explainer/val_acc",
    "listener/train_loss",
    "listener/train_acc",
    "listener/val_loss",
    "listener/val_acc",
    "explanation/mean_abs_delta",
    "lease/objective",
)


@contextlib.contextmanager
def _capture_output(module: nn.Module) -> Iterator[list[torch.Tensor]]:
    """Collect the outputs of ``module``'s forward calls inside the block (to get the evaluator's logits)."""
    outputs: list[torch.Tensor] = []
    handle = module.register_forward_hook(lambda _m, _i, out: outputs.append(out))
    try:
        yield outputs
    finally:
        handle.remove()


def _accuracy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (logits.detach().argmax(dim=-1) == y).float().mean()


class LeaseLightningModule(DartsLightningModule):
    """Lightning module of :class:`LeaSE`: NNI's DARTS module plus a listener and PGD explanations.

    Built by :meth:`LeaSE.configure_oneshot_module`; the listener is attached by :meth:`set_listener`
    once the input shape is known. See the module docstring for the four stages of a step.

    Parameters
    ----------
    training_module : LightningModule
        The evaluator's module (the explainer's loss, metrics and weight optimiser).
    gamma : float
        Weight :math:`\\gamma \\ge 0` of the listener's validation loss in the architecture objective.
    pgd_steps, pgd_epsilon, pgd_step_size : int, float, float
        PGD settings of :func:`nni_lease.explain.pgd_explain`.
    hypergradient : {"first_order", "unrolled"}
        How the listener's loss is differentiated with respect to the architecture.
    listener_optimizer : type of torch.optim.Optimizer
        Optimiser class of the listener.
    listener_learning_rate, listener_weight_decay : float
        Its settings.
    unrolled_step_size : float
        Step :math:`\\xi` of the virtual SGD step of ``"unrolled"``.
    seed : int
        Seed of the private generator of PGD random starts.
    arc_learning_rate, gradient_clip_val, log_prob_every_n_step, warmup_epochs, penalty
        As in :class:`nni.nas.oneshot.pytorch.differentiable.DartsLightningModule`.
    """

    listener: nn.Module | None

    def __init__(
        self,
        training_module: Any,
        *,
        gamma: float = 1.0,
        pgd_steps: int = 3,
        pgd_epsilon: float = 8 / 255,
        pgd_step_size: float = 2.5 * 8 / 255 / 3,
        hypergradient: str = "first_order",
        listener_optimizer: type[torch.optim.Optimizer] = torch.optim.Adam,
        listener_learning_rate: float = 1e-3,
        listener_weight_decay: float = 0.0,
        unrolled_step_size: float = 1e-3,
        seed: int = 0,
        arc_learning_rate: float = 3.0e-4,
        gradient_clip_val: float | None = None,
        log_prob_every_n_step: int = 10,
        warmup_epochs: int = 0,
        penalty: ExpectationProfilerPenalty | None = None,
    ) -> None:
        super().__init__(
            training_module,
            arc_learning_rate=arc_learning_rate,
            gradient_clip_val=gradient_clip_val,
            log_prob_every_n_step=log_prob_every_n_step,
            warmup_epochs=warmup_epochs,
            penalty=penalty,
        )
        self.gamma = float(gamma)
        self.pgd_steps = pgd_steps
        self.pgd_epsilon = pgd_epsilon
        self.pgd_step_size = pgd_step_size
        self.hypergradient = hypergradient
        self.listener_optimizer = listener_optimizer
        self.listener_learning_rate = listener_learning_rate
        self.listener_weight_decay = listener_weight_decay
        self.unrolled_step_size = unrolled_step_size
        self.generator = torch.Generator().manual_seed(seed)
        self.listener = None

    # ----------------------------------------------------------------------------- set-up
    def set_listener(self, listener: nn.Module) -> None:
        """Attach the listener (a submodule: Lightning moves and checkpoints it with the supernet)."""
        self.listener = listener

    def configure_architecture_optimizers(self) -> list[torch.optim.Optimizer]:
        """The DARTS architecture optimiser (Adam) and the listener's optimiser, in this order.

        Both are flagged as "architecture" optimisers by NNI, which keeps them out of the evaluator's
        weight step; Lightning checkpoints their states.

        Raises
        ------
        RuntimeError
            If no listener is attached.
        """
        arch_optim = super().configure_architecture_optimizers()
        if self.listener is None:
            raise RuntimeError("LeaseLightningModule has no listener; LeaSE attaches it in initialize().")
        listener_optim = self.listener_optimizer(
            self.listener.parameters(), lr=self.listener_learning_rate, weight_decay=self.listener_weight_decay
        )
        return [arch_optim, listener_optim]

    # ----------------------------------------------------------------------------- the pieces
    def explain(
        self, x: torch.Tensor, *, differentiable: bool = False, clean_logits: torch.Tensor | None = None
    ) -> Explanation:
        """PGD explanation of the explainer's (supernet's) predictions at ``x`` (see :mod:`nni_lease.explain`)."""
        return pgd_explain(
            self.training_module,
            x,
            epsilon=self.pgd_epsilon,
            step_size=self.pgd_step_size,
            steps=self.pgd_steps,
            differentiable=differentiable,
            generator=self.generator,
            clean_logits=clean_logits,
        )

    def listener_validation_loss(
        self, train_batch: Any, val_batch: Any, *, val_logits: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, Explanation]:
        """The listener's validation loss :math:`L_a^{val}` as a differentiable function of the architecture.

        Parameters
        ----------
        train_batch, val_batch : (x, y) pairs
            ``train_batch`` is only used by ``hypergradient="unrolled"``.
        val_logits : Tensor of shape (N, n_classes) or None
            The explainer's logits on ``val_batch`` (with graph) if already computed; saves a forward pass.

        Returns
        -------
        loss : Tensor, scalar
            Mean cross entropy of the listener (weights ``W`` or, unrolled, ``W'``) on ``δ^val ⊙ x^val``.
        logits : Tensor of shape (N, n_classes)
            The listener's logits on the explained validation inputs.
        explanation : Explanation
            The differentiable explanation of the validation batch.
        """
        listener = cast(nn.Module, self.listener)
        x_val, y_val = val_batch[0], val_batch[1]
        val_expl = self.explain(x_val, differentiable=True, clean_logits=val_logits)
        if self.hypergradient == "first_order":
            logits = listener(val_expl.explained)
        else:
            x_tr, y_tr = train_batch[0], train_batch[1]
            train_expl = self.explain(x_tr, differentiable=True)
            names = [name for name, p in listener.named_parameters() if p.requires_grad]
            params = dict(listener.named_parameters())
            buffers = {name: b.clone() for name, b in listener.named_buffers()}  # keep running stats intact
            train_loss = F.cross_entropy(functional_call(listener, (params, buffers), (train_expl.explained,)), y_tr)
            grads = torch.autograd.grad(train_loss, [params[n] for n in names], create_graph=True)
            unrolled = dict(params)
            for name, grad in zip(names, grads):
                unrolled[name] = params[name] - self.unrolled_step_size * grad
            logits = functional_call(listener, (unrolled, buffers), (val_expl.explained,))
        return F.cross_entropy(logits, y_val), logits, val_expl

    def _log(self, name: str, value: torch.Tensor | float, batch_size: int) -> None:
        self.log(name, value, on_step=False, on_epoch=True, batch_size=batch_size)

    # ----------------------------------------------------------------------------- one step
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Any:
        """One LeaSE iteration: architecture step, explainer step, explanation, listener step."""
        arch_optim, listener_optim = cast(list, self.architecture_optimizers())
        listener = cast(nn.Module, self.listener)
        trn_batch, val_batch = batch["train"], batch["val"]
        n_trn, n_val = len(trn_batch[1]), len(val_batch[1])

        # Stage 4: architecture step on the validation batch (skipped while warming up, as in DARTS).
        if self.warmup_epochs == 0 or self.trainer.current_epoch >= self.warmup_epochs:
            self.resample()
            arch_optim.zero_grad()
            with _capture_output(self.training_module) as outputs:
                arc_step_loss = self.training_module.training_step(val_batch, 2 * batch_idx)
            if isinstance(arc_step_loss, dict):
                arc_step_loss = arc_step_loss["loss"]
            explainer_val_loss = arc_step_loss.detach()
            if self.penalty is not None:
                arc_step_loss, details = self.penalty(arc_step_loss, self.export_probs())
                self.log_dict({f"penalty/{k}": v for k, v in details.items()})
            if self.gamma > 0:
                val_logits = outputs[0] if len(outputs) == 1 else None  # the explainer's, with graph
                listener_val_loss, listener_logits, _ = self.listener_validation_loss(
                    trn_batch, val_batch, val_logits=val_logits
                )
                objective = arc_step_loss + self.gamma * listener_val_loss
            else:
                objective = arc_step_loss
            self.manual_backward(objective)
            arch_optim.step()
            if self.gamma == 0:  # diagnostics only: nothing here reaches the architecture
                with torch.no_grad():
                    val_expl = self.explain(val_batch[0])
                    listener_logits = listener(val_expl.explained)
                    listener_val_loss = F.cross_entropy(listener_logits, val_batch[1])
            self._log("explainer/val_loss", explainer_val_loss, n_val)
            if outputs:
                self._log("explainer/val_acc", _accuracy(outputs[0], val_batch[1]), n_val)
            self._log("listener/val_loss", listener_val_loss.detach(), n_val)
            self._log("listener/val_acc", _accuracy(listener_logits, val_batch[1]), n_val)
            self._log("lease/objective", explainer_val_loss + self.gamma * listener_val_loss.detach(), n_val)

        # Stage 1: explainer weight step on the training batch (the evaluator's loss and optimiser).
        self.resample()
        with _capture_output(self.training_module) as outputs:
            loss_and_metrics = self.training_module.training_step(trn_batch, 2 * batch_idx + 1)
        w_step_loss = loss_and_metrics["loss"] if isinstance(loss_and_metrics, dict) else loss_and_metrics
        self.advance_optimization(w_step_loss, batch_idx, self.gradient_clip_val)
        self._log("explainer/train_loss", w_step_loss.detach(), n_trn)
        if outputs:
            self._log("explainer/train_acc", _accuracy(outputs[0], trn_batch[1]), n_trn)

        # Stage 2: explain the training batch with the updated explainer.
        train_expl = self.explain(trn_batch[0])
        # Stage 3: listener weight step on the explained inputs.
        listener_optim.zero_grad()
        listener_logits = listener(train_expl.explained)
        listener_loss = F.cross_entropy(listener_logits, trn_batch[1])
        self.manual_backward(listener_loss)
        listener_optim.step()
        self._log("listener/train_loss", listener_loss.detach(), n_trn)
        self._log("listener/train_acc", _accuracy(listener_logits, trn_batch[1]), n_trn)
        self._log("explanation/mean_abs_delta", train_expl.delta.abs().mean(), n_trn)

        self.advance_lr_schedulers(batch_idx)
        if batch_idx % self.log_prob_every_n_step == 0:
            self.log_probs(self.export_probs())
        return loss_and_metrics

    # ----------------------------------------------------------------------------- checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Store the PGD generator's state in Lightning checkpoints."""
        checkpoint["lease_generator_state"] = self.generator.get_state()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restore the PGD generator's state from a Lightning checkpoint."""
        if "lease_generator_state" in checkpoint:
            self.generator.set_state(checkpoint["lease_generator_state"])


class LeaSE(DARTS):
    r"""Learning by Self-Explanation (Hosseini & Xie): DARTS whose architecture also serves a listener.

    A drop-in for NNI's :class:`~nni.nas.strategy.DARTS`::

        NasExperiment(model_space, evaluator, LeaSE(gamma=1.0)).run()

    The model space (any space DARTS supports: ``LayerChoice``, ``InputChoice``, ``Cell``, ``Repeat``,
    NNI's hub ``DARTS`` space …) becomes the explainer. The evaluator must be a Lightning evaluator with
    training and validation dataloaders yielding ``(x, y)`` (e.g. ``nni.nas.evaluator.pytorch.Classification``).
    The architecture minimises :math:`L_e^{val} + \gamma L_a^{val}` (see :mod:`nni_lease.strategy`);
    ``gamma=0`` is exactly NNI's DARTS (the listener then trains alongside for diagnostics only).

    Parameters
    ----------
    gamma : float
        Weight :math:`\gamma \ge 0` of the listener's validation loss.
    listener : nn.Module or None
        The listener, any module mapping inputs ``(N, C, H, W)`` to logits ``(N, n_classes)``; it is
        deep-copied (your module is not trained; the trained copy is ``strategy.oneshot_module.listener``).
        ``None``: :func:`nni_lease.listener.default_listener` sized from the first training input,
        initialised from ``seed`` without touching the global RNG.
    pgd_steps : int
        PGD steps per explanation (≥ 1).
    pgd_epsilon : float
        L∞ radius of the explanation, in input units (default 8/255 for inputs in ``[0, 1]``).
    pgd_step_size : float or None
        PGD step; ``None`` means ``2.5 * pgd_epsilon / pgd_steps``.
    hypergradient : {"first_order", "unrolled"}
        ``"first_order"``: the listener's loss reaches the architecture through the explanation, listener
        weights fixed. ``"unrolled"``: additionally through one unrolled listener step.
    arc_learning_rate : float
        Learning rate of the architecture optimiser (Adam, betas (0.5, 0.999), weight decay 1e-3, as DARTS).
    listener_optimizer : type of torch.optim.Optimizer
        Optimiser class for the listener's weights.
    listener_learning_rate, listener_weight_decay : float
        Its learning rate and weight decay.
    unrolled_step_size : float or None
        Step of the virtual listener step of ``"unrolled"``; ``None`` means ``listener_learning_rate``.
    seed : int
        Seeds the default listener's initialisation and the PGD random starts (private generators).
    gradient_clip_val, log_prob_every_n_step, warmup_epochs, penalty, **kwargs
        As in NNI's :class:`~nni.nas.strategy.DARTS`.

    Raises
    ------
    ValueError
        At construction for a negative ``gamma``, non-positive PGD settings, an unknown ``hypergradient``,
        a non-module ``listener`` or bad listener optimiser settings; at ``initialize`` (before any
        training) for a listener whose output does not match the number of classes or a model space with
        nothing to search.

    Notes
    -----
    Logged once per epoch through Lightning: ``explainer/{train,val}_{loss,acc}``,
    ``listener/{train,val}_{loss,acc}``, ``explanation/mean_abs_delta`` and ``lease/objective``
    (:math:`L_e^{val} + \gamma L_a^{val}`), besides DARTS's ``prob/...`` architecture probabilities.
    """

    def __init__(
        self,
        *,
        gamma: float = 1.0,
        listener: nn.Module | None = None,
        pgd_steps: int = 3,
        pgd_epsilon: float = 8 / 255,
        pgd_step_size: float | None = None,
        hypergradient: Literal["first_order", "unrolled"] = "first_order",
        arc_learning_rate: float = 3.0e-4,
        listener_optimizer: type[torch.optim.Optimizer] = torch.optim.Adam,
        listener_learning_rate: float = 1e-3,
        listener_weight_decay: float = 0.0,
        unrolled_step_size: float | None = None,
        seed: int = 0,
        gradient_clip_val: float | None = None,
        log_prob_every_n_step: int = 10,
        warmup_epochs: int = 0,
        penalty: dict | ExpectationProfilerPenalty | None = None,
        **kwargs: Any,
    ) -> None:
        if not isinstance(gamma, (int, float)) or isinstance(gamma, bool) or not 0.0 <= gamma < float("inf"):
            raise ValueError(f"gamma must be a finite number >= 0; got {gamma!r}.")
        if pgd_step_size is None:
            check_pgd_arguments(epsilon=pgd_epsilon, step_size=1.0, steps=pgd_steps, prefix="pgd_")
            pgd_step_size = 2.5 * pgd_epsilon / pgd_steps
        check_pgd_arguments(epsilon=pgd_epsilon, step_size=pgd_step_size, steps=pgd_steps, prefix="pgd_")
        if hypergradient not in HYPERGRADIENTS:
            raise ValueError(f"hypergradient must be one of {list(HYPERGRADIENTS)}; got {hypergradient!r}.")
        if listener is not None and not isinstance(listener, nn.Module):
            raise ValueError(f"listener must be None or a torch.nn.Module; got {type(listener).__name__}.")
        if not (isinstance(listener_optimizer, type) and issubclass(listener_optimizer, torch.optim.Optimizer)):
            raise ValueError(f"listener_optimizer must be a torch.optim.Optimizer class; got {listener_optimizer!r}.")
        for name, value in [("arc_learning_rate", arc_learning_rate), ("listener_learning_rate", listener_learning_rate)]:
            if not isinstance(value, (int, float)) or not 0.0 < value < float("inf"):
                raise ValueError(f"{name} must be a positive finite number; got {value!r}.")
        if not isinstance(listener_weight_decay, (int, float)) or listener_weight_decay < 0:
            raise ValueError(f"listener_weight_decay must be >= 0; got {listener_weight_decay!r}.")
        if unrolled_step_size is None:
            unrolled_step_size = listener_learning_rate
        elif not isinstance(unrolled_step_size, (int, float)) or not 0.0 < unrolled_step_size < float("inf"):
            raise ValueError(f"unrolled_step_size must be None or a positive number; got {unrolled_step_size!r}.")
        super().__init__(
            arc_learning_rate=arc_learning_rate,
            gradient_clip_val=gradient_clip_val,
            log_prob_every_n_step=log_prob_every_n_step,
            warmup_epochs=warmup_epochs,
            penalty=penalty,
            **kwargs,
        )
        self.gamma = float(gamma)
        self.listener = listener
        self.pgd_steps = pgd_steps
        self.pgd_epsilon = float(pgd_epsilon)
        self.pgd_step_size = float(pgd_step_size)  # type: ignore[arg-type]
        self.hypergradient = hypergradient
        self.listener_optimizer = listener_optimizer
        self.listener_learning_rate = float(listener_learning_rate)
        self.listener_weight_decay = float(listener_weight_decay)
        self.unrolled_step_size = float(unrolled_step_size)
        self.seed = seed

    def extra_repr(self) -> str:
        return (
            f"gamma={self.gamma}, hypergradient={self.hypergradient!r}, pgd_steps={self.pgd_steps}, "
            f"pgd_epsilon={self.pgd_epsilon:.4g}, pgd_step_size={self.pgd_step_size:.4g}"
        )

    def configure_oneshot_module(self, training_module: Any) -> LeaseLightningModule:
        """The LeaSE Lightning module (the listener is attached later, in :meth:`_initialize`)."""
        return LeaseLightningModule(
            training_module,
            gamma=self.gamma,
            pgd_steps=self.pgd_steps,
            pgd_epsilon=self.pgd_epsilon,
            pgd_step_size=self.pgd_step_size,
            hypergradient=self.hypergradient,
            listener_optimizer=self.listener_optimizer,
            listener_learning_rate=self.listener_learning_rate,
            listener_weight_decay=self.listener_weight_decay,
            unrolled_step_size=self.unrolled_step_size,
            seed=self.seed,
            arc_learning_rate=self.arc_learning_rate,
            gradient_clip_val=self.gradient_clip_val,
            log_prob_every_n_step=self.log_prob_every_n_step,
            warmup_epochs=self.warmup_epochs,
            penalty=self.penalty,
        )

    def mutate_model(self, model: Any) -> Any:
        """DARTS's supernet conversion, after checking that ``model_space`` has something to search.

        Raises
        ------
        ValueError
            If the model space has no mutable (nothing to search).
        """
        if not model.simplify():
            raise ValueError(
                f"model_space has nothing to search: {type(model).__name__} contains no LayerChoice, "
                "InputChoice or other choice."
            )
        return super().mutate_model(model)

    def _initialize(self, model_space: Any, engine: Any) -> Any:
        result = super()._initialize(model_space, engine)
        supernet = self.supernet
        evaluator = cast(Lightning, self._mutated_model_space.evaluator)  # type: ignore[union-attr]
        input_shape = _first_input_shape(evaluator)
        n_classes = _n_outputs(supernet, input_shape)
        if self.listener is None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.seed)
                listener = default_listener(input_shape, n_classes)
        else:
            listener = copy.deepcopy(self.listener)
        check_listener(listener, input_shape, n_classes)
        self.oneshot_module.set_listener(listener)  # type: ignore[attr-defined]
        logger.info("LeaSE: input shape %s, %d classes, listener %s.", input_shape, n_classes,
                    type(listener).__name__)
        return result

    # ----------------------------------------------------------------------------- state
    def state_dict(self) -> dict:
        """Strategy state: NNI's ``ckpt_path`` (if a checkpoint callback saved one) plus the searched state.

        ``"lease"`` holds copies of the supernet's weights (architecture weights included), the
        listener's weights and the PGD generator's state; tensors only, so the dict round-trips through
        ``torch.save`` / ``torch.load(..., weights_only=True)``.
        """
        state = super().state_dict()
        if self._mutated_model_space is None:
            return state
        module = cast(LeaseLightningModule, self.oneshot_module)
        state["lease"] = {
            "supernet": {k: v.detach().clone() for k, v in self.supernet.state_dict().items()},
            "listener": {k: v.detach().clone() for k, v in cast(nn.Module, module.listener).state_dict().items()},
            "generator": module.generator.get_state(),
        }
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore a :meth:`state_dict` into an initialised strategy (same space, same listener type)."""
        super().load_state_dict(state_dict)
        lease = state_dict.get("lease")
        if lease is None:
            return
        module = cast(LeaseLightningModule, self.oneshot_module)
        self.supernet.load_state_dict(lease["supernet"])
        cast(nn.Module, module.listener).load_state_dict(lease["listener"])
        module.generator.set_state(lease["generator"])


def _first_input_shape(evaluator: Lightning) -> tuple[int, ...]:
    """Shape ``(C, H, W)`` of one training input, read without drawing from any RNG when possible."""
    loaders = evaluator.train_dataloaders
    if loaders is None and evaluator.datamodule is not None:
        loaders = evaluator.datamodule.train_dataloader()
    loader = loaders["train"] if isinstance(loaders, dict) else loaders
    dataset = getattr(loader, "dataset", None)
    if dataset is not None and hasattr(dataset, "__getitem__"):
        item = dataset[0]
        x = item[0] if isinstance(item, (tuple, list)) else item
        return tuple(torch.as_tensor(x).shape)
    batch = next(iter(loader))
    x = batch[0] if isinstance(batch, (tuple, list)) else batch
    return tuple(torch.as_tensor(x).shape[1:])


def _n_outputs(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Size of the model's output on two zero inputs (eval mode, no gradient, mode restored)."""
    try:
        param = next(model.parameters())
        device, dtype = param.device, param.dtype
    except StopIteration:
        device, dtype = torch.device("cpu"), torch.float32
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(torch.zeros((2, *input_shape), device=device, dtype=dtype))
    finally:
        model.train(was_training)
    if isinstance(out, (tuple, list)):
        out = out[0]
    return int(out.shape[-1])
