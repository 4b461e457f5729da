"""LeaSE (Learning by Self-Explanation) as an NNI 3.0 one-shot strategy.

The strategy (:class:`LeaSE`) configures NNI's DARTS with a listener and LeaSE's settings; the training
step lives in its Lightning module, :class:`~nni_lease.oneshot.LeaseLightningModule`.

The explainer is NNI's differentiable supernet of the model space; the listener is a fixed network
(``listener=``, default :func:`~nni_lease.core.default_listener`). The order of the four stages in a
training step, and why ``gamma=0`` is exactly NNI's DARTS, are described in the Lightning module.
"""

from __future__ import annotations

import copy
import logging
from typing import Any, cast

import torch
from nni.nas.evaluator.pytorch import Lightning
from nni.nas.evaluator.pytorch.lightning import Regression
from nni.nas.oneshot.pytorch.profiler import ExpectationProfilerPenalty
from nni.nas.strategy import DARTS
from torch import nn

from art_fisher.utils import check_real
from nni_lease._limits import MAX_RATE
from nni_lease.core._config import LeaseConfig
from nni_lease.core._listener import check_listener, default_listener
from nni_lease.oneshot._lightning import LeaseLightningModule

logger = logging.getLogger(__name__)


class LeaSE(DARTS):
    r"""Learning by Self-Explanation (Hosseini & Xie): DARTS whose architecture also serves a listener.

    A drop-in for NNI's :class:`~nni.nas.strategy.DARTS`::

        NasExperiment(model_space, evaluator, LeaSE(gamma=1.0)).run()

    The model space (any space DARTS supports: ``LayerChoice``, ``InputChoice``, ``Cell``, ``Repeat``,
    NNI's hub ``DARTS`` space …) becomes the explainer. The evaluator must be a classification Lightning
    evaluator (e.g. ``nni.nas.evaluator.pytorch.Classification``) whose training and validation data
    yield ``(x, y)`` with ``x`` one floating-point tensor and ``y`` integer labels, given as dataloaders
    or as a ``LightningDataModule`` (also one that builds its data sets in ``setup()``).
    The architecture minimises :math:`L_e^{val} + \gamma L_a^{val}` (see :mod:`nni_lease.core`);
    ``gamma=0`` is exactly NNI's DARTS (the listener then trains alongside for diagnostics only).

    Parameters
    ----------
    config : LeaseConfig or None
        LeaSE's settings (default: :class:`~nni_lease.core.LeaseConfig`'s defaults).
    listener : nn.Module or None
        The listener, any module mapping explained inputs to logits ``(N, n_classes)``; it is deep-copied
        (your module is not trained; the trained copy is ``strategy.oneshot_module.listener``).
        ``None``: :func:`nni_lease.core.default_listener` sized from the first training input
        (images ``(C, H, W)``), initialised from ``config.seed`` without touching the global RNG.
    arc_learning_rate : float
        Learning rate of the architecture optimiser (Adam, betas (0.5, 0.999), weight decay 1e-3, as DARTS).
    gradient_clip_val, log_prob_every_n_step, warmup_epochs, penalty, mutation_hooks
        As in NNI's :class:`~nni.nas.strategy.DARTS`.
    **settings
        Any :class:`~nni_lease.core.LeaseConfig` setting (``gamma``, ``hypergradient``,
        ``pgd_epsilon``, ``pgd_steps`` …), replacing the one in ``config``.

    Raises
    ------
    ValueError
        At construction for an unknown or bad setting or a non-module ``listener``; at ``initialize``
        (before any training) for a regression evaluator, batches that are not ``(tensor x, integer y)``,
        a listener whose output does not match the number of classes, non-image inputs without a
        listener, or a model space with nothing to search.

    Notes
    -----
    Logged once per epoch through Lightning: ``explainer/{train,val}_{loss,acc}``,
    ``listener/{train,val}_{loss,acc}``, ``explanation/mean_abs_delta`` and ``lease/objective``
    (:math:`L_e^{val} + \gamma L_a^{val}`), besides DARTS's ``prob/...`` architecture probabilities.
    :meth:`load_state_dict` may be called before ``initialize`` (NNI's resume order for
    ``Random``): the state is then applied at the end of ``initialize``.
    """

    def __init__(
        self,
        *,
        config: LeaseConfig | None = None,
        listener: nn.Module | None = None,
        arc_learning_rate: float = 3.0e-4,
        gradient_clip_val: float | None = None,
        log_prob_every_n_step: int = 10,
        warmup_epochs: int = 0,
        penalty: dict | ExpectationProfilerPenalty | None = None,
        mutation_hooks: list | None = None,
        **settings: Any,
    ) -> None:
        if config is not None and not isinstance(config, LeaseConfig):
            raise TypeError(f"config must be None or a LeaseConfig; got {type(config).__name__}.")
        lease_config = LeaseConfig.from_settings(config, **settings)
        if listener is not None and not isinstance(listener, nn.Module):
            raise TypeError(f"listener must be None or a torch.nn.Module; got {type(listener).__name__}.")
        check_real(arc_learning_rate, "arc_learning_rate", low=0.0, high=MAX_RATE, low_open=True)
        super().__init__(
            arc_learning_rate=arc_learning_rate,
            gradient_clip_val=gradient_clip_val,
            log_prob_every_n_step=log_prob_every_n_step,
            warmup_epochs=warmup_epochs,
            penalty=penalty,
            mutation_hooks=mutation_hooks,
        )
        self.config = lease_config
        self.listener = listener
        self._pending_state: dict | None = None
        self._pending_listener_state: dict | None = None

    def extra_repr(self) -> str:
        defaults = LeaseConfig()
        changed = [
            f"{name}={getattr(self.config, name)!r}"
            for name in LeaseConfig.setting_names()
            if getattr(self.config, name) != getattr(defaults, name)
        ]
        return ", ".join(changed)

    def configure_oneshot_module(self, training_module: Any) -> LeaseLightningModule:
        """The LeaSE Lightning module (the listener is attached later, in ``_initialize`` or at setup)."""
        return LeaseLightningModule(
            training_module,
            config=self.config,
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
        evaluator = getattr(model_space, "evaluator", None)
        if isinstance(evaluator, Regression):
            raise ValueError(
                "LeaSE explains class predictions: the evaluator must be a classification evaluator "
                "(e.g. nni.nas.evaluator.pytorch.Classification); got a Regression evaluator."
            )
        result = super()._initialize(model_space, engine)
        mutated = cast(Lightning, self._mutated_model_space.evaluator)
        module = cast(LeaseLightningModule, self.oneshot_module)
        if mutated.datamodule is None:
            loaders = mutated.train_dataloaders
            module.set_listener(self._build_listener(loaders["train"] if isinstance(loaders, dict) else loaders))
        else:  # its data sets may only exist after its setup(): build the listener in the module's setup()
            datamodule = mutated.datamodule

            def build() -> nn.Module:
                loaders = datamodule.train_dataloader()
                return self._build_listener(loaders["train"] if isinstance(loaders, dict) else loaders)

            module.listener_builder = build
        if self._pending_state is not None:
            pending, self._pending_state = self._pending_state, None
            self.load_state_dict(pending)
        return result

    def _build_listener(self, loader: Any) -> nn.Module:
        input_shape = _first_input_shape(loader)
        n_classes = _n_outputs(self.supernet, input_shape)
        if self.listener is None:
            if len(input_shape) != 3:
                raise ValueError(
                    f"the default listener is a CNN for images (C, H, W); the inputs have shape "
                    f"{input_shape}. Pass listener= with a module for these inputs."
                )
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.config.seed)
                listener = default_listener(input_shape, n_classes)
        else:
            listener = copy.deepcopy(self.listener)
        check_listener(listener, input_shape, n_classes)
        if self._pending_listener_state is not None:
            listener.load_state_dict(self._pending_listener_state)
            self._pending_listener_state = None
        logger.info("LeaSE: input shape %s, %d classes, listener %s.", input_shape, n_classes, type(listener).__name__)
        return listener

    # ----------------------------------------------------------------------------- state
    def state_dict(self) -> dict:
        """Strategy state: NNI's ``ckpt_path`` (if a checkpoint callback saved one) plus the searched state.

        ``"lease"`` holds copies of the supernet's weights (architecture weights included), the
        listener's weights and the explanation generator's state; tensors only, so the dict round-trips
        through ``torch.save`` / ``torch.load(..., weights_only=True)``.
        """
        state = super().state_dict()
        if self._mutated_model_space is None:
            return state
        module = cast(LeaseLightningModule, self.oneshot_module)
        lease: dict[str, Any] = {
            "supernet": {k: v.detach().clone() for k, v in self.supernet.state_dict().items()},
            "generator": module.generator.get_state(),
        }
        if module.listener is not None:
            lease["listener"] = {k: v.detach().clone() for k, v in module.listener.state_dict().items()}
        state["lease"] = lease
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore a :meth:`state_dict` (same space, same listener type).

        Before ``initialize`` the state is kept and applied at the end of it (NNI's resume order for
        ``Random``); after it, it is applied at once.

        Raises
        ------
        ValueError
            If ``state_dict`` is not a dict.
        """
        if not isinstance(state_dict, dict):
            raise ValueError(f"state_dict must be a dict from LeaSE.state_dict(); got {type(state_dict).__name__}.")
        if self._mutated_model_space is None:
            self._pending_state = dict(state_dict)
            logger.info("LeaSE: state kept; it is applied when the strategy is initialized.")
            return
        super().load_state_dict(state_dict)
        lease = state_dict.get("lease")
        if lease is None:
            return
        module = cast(LeaseLightningModule, self.oneshot_module)
        self.supernet.load_state_dict(lease["supernet"])
        if "listener" in lease:
            if module.listener is not None:
                module.listener.load_state_dict(lease["listener"])
            else:
                self._pending_listener_state = lease["listener"]
        module.generator.set_state(lease["generator"])


def _check_batch_item(x: Any, y: Any) -> None:
    """Raise a clear error unless one sample is ``(floating tensor x, integer class label y)``."""
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        got = type(x).__name__ if not isinstance(x, torch.Tensor) else f"a {x.dtype} tensor"
        raise ValueError(
            "LeaSE needs training data of (x, y) pairs with x one floating-point tensor (an image) "
            f"to explain; got x as {got}."
        )
    y_t = torch.as_tensor(y)
    if y_t.is_floating_point() or y_t.is_complex() or y_t.dim() > 1:
        raise ValueError(
            "LeaSE explains class predictions: y must be integer class labels; "
            f"got {y_t.dtype} of shape {tuple(y_t.shape)}."
        )


def _first_input_shape(loader: Any) -> tuple[int, ...]:
    """Shape of one training input (checked), read without drawing from any RNG when possible."""
    dataset = getattr(loader, "dataset", None)
    if dataset is not None and hasattr(dataset, "__getitem__"):
        item = dataset[0]
        if not isinstance(item, (tuple, list)) or len(item) < 2:
            raise ValueError(f"LeaSE needs training data of (x, y) pairs; a sample is a {type(item).__name__}.")
        _check_batch_item(item[0], item[1])
        return tuple(item[0].shape)
    batch = next(iter(loader))
    if not isinstance(batch, (tuple, list)) or len(batch) < 2:
        raise ValueError(f"LeaSE needs training batches of (x, y) pairs; a batch is a {type(batch).__name__}.")
    _check_batch_item(batch[0], batch[1][0] if torch.as_tensor(batch[1]).dim() else batch[1])
    return tuple(batch[0].shape[1:])


def _n_outputs(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Number of classes: size of the model's output ``(N, K)`` on two zero inputs (eval mode, mode restored)."""
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
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[1] < 2:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(
            f"LeaSE explains class predictions: the model must return logits (N, n_classes) with "
            f"n_classes >= 2; got {got} for N = 2."
        )
    return int(out.shape[1])
