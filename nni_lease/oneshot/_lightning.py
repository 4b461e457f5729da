r"""The Lightning module of the LeaSE one-shot strategy (:class:`~nni_lease.oneshot.LeaSE`).

Two networks learn the same task. The *explainer* is NNI's differentiable supernet of the model space
(architecture weights :math:`A`, the DARTS :math:`\alpha`; operation weights :math:`E`); the *listener*
is a fixed network with weights :math:`W`. Each training step of :class:`LeaseLightningModule` takes one
training batch :math:`(x^{tr}, y^{tr})` and one validation batch :math:`(x^{val}, y^{val})` (NNI's DARTS
data plumbing) and runs, like NNI's DARTS, the architecture step first:

4. architecture step on the validation batch, minimising the LeaSE paper's stage-4 objective
   :math:`L_e^{val} + \gamma L_a^{val}` (``hypergradient="first_order"``: the approximation with the
   current weights; ``"unrolled"``: the whole chain E′(A) → explanation → W′ → :math:`L_a^{val}`; both
   in :mod:`nni_lease.core`);

1. explainer weight step on the training batch (the evaluator's own loss and optimiser, exactly as in
   NNI's DARTS);
2. explanation of the training batch by the updated explainer (:mod:`nni_lease.core`);
3. listener weight step on the explained inputs.

Stages 2-4 are :class:`nni_lease.core.LeaseStep`, the same code the multi-trial trial runs.
Over many steps this is the paper's cycle 1 → 2 → 3 → 4 (the architecture step of one iteration uses the
explainer and listener trained in the previous one); ordering it architecture-first makes ``gamma=0``
exactly NNI's DARTS: the same supernet, the same architecture and weight updates, the same batches.
The explainer's and listener's training and validation sets are NNI's train / val loaders
(:math:`D_e^{tr} = D_a^{tr}`, :math:`D_e^{val} = D_a^{val}`).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from typing import Any, cast

import torch
from nni.nas.oneshot.pytorch.differentiable import DartsLightningModule
from nni.nas.oneshot.pytorch.profiler import ExpectationProfilerPenalty
from torch import nn

from art_fisher import check_threads
from nni_lease.core._config import LeaseConfig
from nni_lease.core._step import LeaseStep

logger = logging.getLogger(__name__)


class TrainingDivergedError(ValueError):
    """A loss or an architecture weight of the search became NaN or infinite: the search stops, writing nothing."""


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
    """Lightning module of :class:`LeaSE`: NNI's DARTS module plus a listener and explanations.

    Built by :meth:`LeaSE.configure_oneshot_module`; the listener is attached by :meth:`set_listener`
    once the input shape is known (at ``LeaSE.initialize``, or in :meth:`setup` for DataModules
    that build their data there). See the module docstring for the four stages of a step.

    Parameters
    ----------
    training_module : LightningModule
        The evaluator's module (the explainer's loss, metrics and weight optimiser).
    config : LeaseConfig
        LeaSE's settings.
    arc_learning_rate, gradient_clip_val, log_prob_every_n_step, warmup_epochs, penalty
        As in :class:`nni.nas.oneshot.pytorch.differentiable.DartsLightningModule`.
    """

    listener: nn.Module | None

    def __init__(
        self,
        training_module: Any,
        *,
        config: LeaseConfig,
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
        self.config = config
        self.generator = torch.Generator().manual_seed(config.seed)
        self.listener = None
        self.lease_step: LeaseStep | None = None
        #: Called in :meth:`setup` when no listener is attached yet (set by :class:`LeaSE` for DataModules).
        self.listener_builder: Callable[[], nn.Module] | None = None

    # ----------------------------------------------------------------------------- set-up
    def set_listener(self, listener: nn.Module) -> None:
        """Attach the listener (a submodule: Lightning moves and checkpoints it with the supernet)."""
        self.listener = listener

    def setup(self, stage: str | None = None) -> None:
        """Build the listener now if it waited for the DataModule's ``setup`` (which Lightning ran just before)."""
        super().setup(stage)
        check_threads("the LeaSE search")
        if self.listener is None and self.listener_builder is not None:
            self.set_listener(self.listener_builder())

    def arch_parameters(self) -> list[nn.Parameter]:
        """The architecture logits (α), each once, in the supernet's module order.

        NNI 3.0's ``DartsLightningModule`` returns ``list(set(...))``, whose order follows object ids and
        changes from run to run; Adam's checkpointed state is matched to parameters by position, so a
        resumed search could pair a 3-way α with a 2-way α's moments and fail. A fixed order keeps
        checkpoints resumable.
        """
        params: list[nn.Parameter] = []
        for module in self.supernet_modules():
            if hasattr(module, "arch_parameters"):
                params += list(module.arch_parameters())
        return list(dict.fromkeys(params))

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
        config = self.config
        listener_optim = config.make_listener_optimizer(self.listener.parameters())
        self.lease_step = LeaseStep(config, self.listener, listener_optim, generator=self.generator)
        return [arch_optim, listener_optim]

    def _explainer_learning_rate(self) -> float:
        optimizers = self.optimizers()
        optimizers = optimizers if isinstance(optimizers, list) else [optimizers]
        weights = [o for o in optimizers if not getattr(o, "is_arch_optimizer", False)]
        return float(weights[0].param_groups[0]["lr"]) if weights else 0.0

    def _log(self, name: str, value: torch.Tensor | float, batch_size: int) -> None:
        self.log(name, value, on_step=False, on_epoch=True, batch_size=batch_size)

    def _check_finite(self, name: str, value: torch.Tensor | float) -> None:
        """Raise :class:`TrainingDivergedError` naming ``name`` when ``value`` holds a NaN or infinity."""
        if bool(torch.isfinite(torch.as_tensor(value).detach()).all()):
            return
        raise TrainingDivergedError(
            f"the search diverged: {name} is not finite at epoch {self.trainer.current_epoch + 1}, so no "
            "architecture can be chosen; lower the learning rates, --pgd-epsilon, --pgd-step-size, --gamma or "
            "--unrolled-step-size (nothing was written)."
        )

    # ----------------------------------------------------------------------------- one step
    def _architecture_step(
        self, arch_optim: Any, step: LeaseStep, trn_batch: Any, val_batch: Any, batch_idx: int
    ) -> None:
        config, n_val = self.config, len(val_batch[1])
        self.resample()
        arch_optim.zero_grad()
        explainer_logits: torch.Tensor | None
        if config.gamma > 0 and config.hypergradient == "unrolled":
            xi = config.unrolled_step_size or self._explainer_learning_rate()
            alphas = self.arch_parameters()
            terms = step.unrolled_objective(
                self.training_module,
                alphas,
                (trn_batch[0], trn_batch[1]),
                (val_batch[0], val_batch[1]),
                explainer_step_size=xi,
            )
            objective = terms.objective
            if self.penalty is not None:
                objective, details = self.penalty(objective, self.export_probs())
                self.log_dict({f"penalty/{k}": v for k, v in details.items()})
            grads = torch.autograd.grad(objective, alphas, allow_unused=True)
            for alpha, grad in zip(alphas, grads, strict=True):
                alpha.grad = None if grad is None else grad.detach()
            explainer_val_loss, explainer_logits = terms.explainer_val_loss.detach(), terms.explainer_val_logits
            listener_val_loss, listener_logits = terms.listener_val_loss.detach(), terms.listener_val_logits
        else:
            with _capture_output(self.training_module) as outputs:
                arc_step_loss = self.training_module.training_step(val_batch, 2 * batch_idx)
            if isinstance(arc_step_loss, dict):
                arc_step_loss = arc_step_loss["loss"]
            explainer_val_loss = arc_step_loss.detach()
            explainer_logits = outputs[0] if len(outputs) == 1 else None  # the explainer's, with graph
            if self.penalty is not None:
                arc_step_loss, details = self.penalty(arc_step_loss, self.export_probs())
                self.log_dict({f"penalty/{k}": v for k, v in details.items()})
            if config.gamma > 0:
                listener_val_loss, listener_logits, _ = step.listener_validation_loss(
                    self.training_module,
                    val_batch[0],
                    val_batch[1],
                    differentiable="last_step",
                    clean_logits=explainer_logits,
                )
                self.manual_backward(arc_step_loss + config.gamma * listener_val_loss)
                listener_val_loss = listener_val_loss.detach()
            else:
                self.manual_backward(arc_step_loss)
                # diagnostics only: nothing here reaches the architecture
                with torch.no_grad():
                    listener_val_loss, listener_logits, _ = step.listener_validation_loss(
                        self.training_module,
                        val_batch[0],
                        val_batch[1],
                        clean_logits=None if explainer_logits is None else explainer_logits.detach(),
                    )
        self._check_finite("the explainer's validation loss", explainer_val_loss)
        self._check_finite("the listener's validation loss", listener_val_loss)
        arch_optim.step()
        for alpha in self.arch_parameters():
            self._check_finite("an architecture weight", alpha)
        self._log("explainer/val_loss", explainer_val_loss, n_val)
        if explainer_logits is not None:
            self._log("explainer/val_acc", _accuracy(explainer_logits, val_batch[1]), n_val)
        self._log("listener/val_loss", listener_val_loss, n_val)
        self._log("listener/val_acc", _accuracy(listener_logits, val_batch[1]), n_val)
        self._log("lease/objective", explainer_val_loss + config.gamma * listener_val_loss, n_val)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Any:
        """One LeaSE iteration: architecture step, explainer step, explanation, listener step."""
        arch_optim, listener_optim = cast(list, self.architecture_optimizers())
        step = cast(LeaseStep, self.lease_step)
        step.listener_optimizer = listener_optim  # Lightning's wrapper of the same optimiser
        trn_batch, val_batch = batch["train"], batch["val"]
        n_trn = len(trn_batch[1])

        # Stage 4: architecture step on the validation batch (skipped while warming up, as in DARTS).
        if self.warmup_epochs == 0 or self.trainer.current_epoch >= self.warmup_epochs:
            self._architecture_step(arch_optim, step, trn_batch, val_batch, batch_idx)

        # Stage 1: explainer weight step on the training batch (the evaluator's loss and optimiser).
        self.resample()
        with _capture_output(self.training_module) as outputs:
            loss_and_metrics = self.training_module.training_step(trn_batch, 2 * batch_idx + 1)
        w_step_loss = loss_and_metrics["loss"] if isinstance(loss_and_metrics, dict) else loss_and_metrics
        self._check_finite("the explainer's training loss", w_step_loss)
        self.advance_optimization(w_step_loss, batch_idx, self.gradient_clip_val)
        self._log("explainer/train_loss", w_step_loss.detach(), n_trn)
        if outputs:
            self._log("explainer/train_acc", _accuracy(outputs[0], trn_batch[1]), n_trn)

        # Stages 2 and 3: explain the training batch with the updated explainer, train the listener on it.
        result = step.train_listener(self.training_module, trn_batch[0], trn_batch[1], backward=self.manual_backward)
        self._check_finite("the listener's training loss", result.loss)
        self._log("listener/train_loss", result.loss, n_trn)
        self._log("listener/train_acc", _accuracy(result.logits, trn_batch[1]), n_trn)
        self._log("explanation/mean_abs_delta", result.explanation.delta.abs().mean(), n_trn)

        self.advance_lr_schedulers(batch_idx)
        if batch_idx % self.log_prob_every_n_step == 0:
            self.log_probs(self.export_probs())
        return loss_and_metrics

    # ----------------------------------------------------------------------------- checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Store the explanation generator's state in Lightning checkpoints."""
        checkpoint["lease_generator_state"] = self.generator.get_state()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restore the explanation generator's state from a Lightning checkpoint."""
        if "lease_generator_state" in checkpoint:
            self.generator.set_state(checkpoint["lease_generator_state"])
