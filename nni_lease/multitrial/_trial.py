r"""LeaSE trial code: train and score one explainer architecture as one NNI trial.

For one architecture ``A`` (a sample of the search space, built by NNI in the trial process), every
training batch runs the same step as the one-shot strategy's weight half:

1. one Adam step of the explainer's weights ``E`` on the batch (cross entropy);
2. and 3. :meth:`nni_lease.core.LeaseStep.train_listener`: the updated explainer explains the batch
   (:func:`nni_lease.core.pgd_explain`) and the listener (fixed architecture,
   :func:`nni_lease.core.default_listener`) takes one step on the explained inputs;

and after every epoch the trial scores the LeaSE paper's stage-4 objective

.. math:: J = L(E, D_e^{val}) + \gamma\, L(W, z^{val}(E)),

both mean cross entropies in nats over the validation split, the listener's on validation inputs
explained by the same explainer (:meth:`nni_lease.core.LeaseStep.listener_validation_loss`).

NNI's convention is that a larger metric is better (strategies, the web UI's "best metric" and "Top
trials", ``export_top_models``): ``nni.report_intermediate_result`` gets
``{"default": -J, "lease_objective": J, ...}`` after every epoch and ``nni.report_final_result`` the last
one. ``default`` is the **negated** objective, so the best architecture has the largest ``default``;
the losses and accuracies (fractions in ``[0, 1]``) are extra keys.

Every argument is small (numbers and strings): NNI records an evaluator's arguments with ``nni.trace``
and refuses any over 64 KB, so the data set is rebuilt in the trial from its name
(``nni_lease._data.make_dataset``), never passed as tensors.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import nni
import torch
import torch.nn.functional as F
from nni.nas.evaluator import FunctionalEvaluator
from torch import nn
from torch.utils.data import DataLoader

from art_fisher.utils import check_int, check_real
from nni_lease._data import check_dataset, make_dataset
from nni_lease._limits import MAX_BATCH_SIZE, MAX_EPOCHS, MAX_LIMIT, MAX_RATE
from nni_lease.core._config import LeaseConfig
from nni_lease.core._listener import check_listener, default_listener
from nni_lease.core._step import LeaseStep

logger = logging.getLogger(__name__)

#: LeaSE settings a trial takes (the rest of :class:`~nni_lease.core.LeaseConfig` is fixed in a trial:
#: no architecture gradient, Adam for the listener at ``learning_rate``, ``seed`` from the trial's seed).
TRIAL_LEASE_SETTINGS: tuple[str, ...] = (
    "gamma",
    "pgd_epsilon",
    "pgd_norm",
    "pgd_steps",
    "pgd_step_size",
    "pgd_random_start",
    "pgd_objective",
    "weighting",
)


def trial_config(*, learning_rate: float = 0.01, seed: int = 0, **lease_settings: Any) -> LeaseConfig:
    """The :class:`~nni_lease.core.LeaseConfig` a trial runs with.

    Raises
    ------
    ValueError
        For a setting a trial does not take or a bad value.
    """
    unknown = sorted(set(lease_settings) - set(TRIAL_LEASE_SETTINGS))
    if unknown:
        raise ValueError(f"a LeaSE trial takes the LeaSE settings {list(TRIAL_LEASE_SETTINGS)}; got {unknown}.")
    return LeaseConfig(listener_learning_rate=learning_rate, seed=seed, **lease_settings)


def check_trial_arguments(
    *,
    dataset: str = "digits",
    data_dir: str | None = None,
    epochs: int = 2,
    batch_size: int = 64,
    limit: int | None = None,
    limit_batches: int | None = None,
    learning_rate: float = 0.01,
    listener_width: int | None = None,
    seed: int = 0,
    device: str = "cpu",
    **lease_settings: Any,
) -> None:
    """Validate the arguments of :func:`evaluate_lease` before any work (same names and defaults).

    Raises
    ------
    ValueError
        Naming the offending argument, the expected and the received value.
    """
    check_dataset(dataset, data_dir)
    check_int(epochs, "epochs", low=1, high=MAX_EPOCHS)
    check_int(batch_size, "batch_size", low=1, high=MAX_BATCH_SIZE)
    for name, value in [("limit", limit), ("limit_batches", limit_batches), ("listener_width", listener_width)]:
        check_int(value, name, low=1, high=MAX_LIMIT, optional=True)
    check_real(learning_rate, "learning_rate", low=0.0, high=MAX_RATE, low_open=True)
    if device not in ("cpu", "cuda") and not str(device).startswith("cuda:"):
        raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N'; got {device!r}.")
    trial_config(learning_rate=learning_rate, seed=seed, **lease_settings)


def _explainer_scores(model: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[float, float]:
    total, correct, n = 0.0, 0, 0
    with torch.no_grad():
        for x, y in batches:
            logits = model(x)
            total += float(F.cross_entropy(logits, y, reduction="sum"))
            correct += int((logits.argmax(dim=1) == y).sum())
            n += len(y)
    return total / n, correct / n


def _train_epoch(
    step: LeaseStep,
    explainer: nn.Module,
    opt_e: torch.optim.Optimizer,
    loader: DataLoader,
    limit_batches: int | None,
    dev: torch.device,
) -> None:
    """One epoch of stages 1-3 on at most ``limit_batches`` batches."""
    for i, (x, y) in enumerate(loader):
        if limit_batches is not None and i >= limit_batches:
            break
        x, y = x.to(dev), y.to(dev)
        # Stage 1: one explainer weight step on the batch.
        opt_e.zero_grad()
        F.cross_entropy(explainer(x), y).backward()
        opt_e.step()
        # Stages 2 and 3: the shared LeaSE step (explain with the updated explainer, train W).
        step.train_listener(explainer, x, y)


def _listener_scores(step: LeaseStep, explainer: nn.Module, val_batches: list) -> tuple[float, float]:
    """The listener's mean validation loss and accuracy on the explainer's explanations."""
    loss_a, correct_a, n = 0.0, 0, 0
    for x, y in val_batches:
        loss, logits, _ = step.listener_validation_loss(explainer, x, y, reduction="sum")
        loss_a += float(loss)
        correct_a += int((logits.argmax(dim=1) == y).sum())
        n += len(y)
    return loss_a / n, correct_a / n


def evaluate_lease(
    model: nn.Module,
    *,
    dataset: str = "digits",
    data_dir: str | None = None,
    epochs: int = 2,
    batch_size: int = 64,
    limit: int | None = None,
    limit_batches: int | None = None,
    learning_rate: float = 0.01,
    listener_width: int | None = None,
    seed: int = 0,
    device: str = "cpu",
    **lease_settings: Any,
) -> dict[str, float]:
    """Train the explainer ``model`` and a fresh listener with LeaSE, report to NNI, return the final metrics.

    Parameters
    ----------
    model : nn.Module
        The explainer: one architecture of the search space, mapping ``(N, C, H, W)`` to logits
        ``(N, n_classes)``. It is trained in place (it is the trial's own copy).
    dataset : {"digits", "mnist", "cifar10"}
        Data set name (``nni_lease._data.make_dataset``); ``"mnist"`` and ``"cifar10"`` need ``data_dir``.
    data_dir : str or None
        Folder of the CIFAR-10 python batches.
    epochs : int
        Number of epochs; each runs the step over the training batches and reports once.
    batch_size : int
        Mini-batch size of both networks.
    limit : int or None
        Keep only the first so many samples of each split, training and validation (``None``: all).
    limit_batches : int or None
        Use at most this many training batches per epoch (quick runs); ``None`` uses all.
    learning_rate : float
        Adam learning rate of both the explainer and the listener.
    listener_width : int or None
        Width of the default listener (:func:`nni_lease.core.default_listener`).
    seed : int
        Seeds the data split, the shuffling, the listener's initialisation and the explanations' random
        starts (through a forked torch RNG: the caller's global RNG state is left as it was).
    device : str
        ``"cpu"`` or a CUDA device.
    **lease_settings
        LeaSE settings among ``TRIAL_LEASE_SETTINGS`` (``gamma``, ``pgd_epsilon`` …; defaults of
        :class:`~nni_lease.core.LeaseConfig`).

    Returns
    -------
    dict
        ``default`` (``-J``, higher is better), ``lease_objective`` (``J``, nats), ``explainer_val_loss``,
        ``listener_val_loss`` (nats), ``explainer_accuracy``, ``listener_accuracy`` (validation, in
        ``[0, 1]``) and ``epoch``. The same dict is sent with ``nni.report_final_result``.

    Raises
    ------
    ValueError
        For a bad argument (before any work).
    RuntimeError
        If the objective is not finite (the trial is then marked failed).
    """
    check_trial_arguments(
        dataset=dataset,
        data_dir=data_dir,
        epochs=epochs,
        batch_size=batch_size,
        limit=limit,
        limit_batches=limit_batches,
        learning_rate=learning_rate,
        listener_width=listener_width,
        seed=seed,
        device=device,
        **lease_settings,
    )
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module; got {type(model).__name__}.")
    lease = trial_config(learning_rate=learning_rate, seed=seed, **lease_settings)
    train = make_dataset(dataset, "train", data_dir=data_dir, seed=seed, limit=limit)
    val = make_dataset(dataset, "val", data_dir=data_dir, seed=seed, limit=limit)
    dev = torch.device(device)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        listener = default_listener(train.input_shape, train.n_classes, width=listener_width).to(dev)
        check_listener(listener, train.input_shape, train.n_classes)
        explainer = model.to(dev)
        opt_e = torch.optim.Adam(explainer.parameters(), lr=learning_rate)
        step = LeaseStep(lease, listener, generator=torch.Generator().manual_seed(seed + 1))
        loader = DataLoader(train, batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(seed))
        val_batches = [(x.to(dev), y.to(dev)) for x, y in DataLoader(val, batch_size=256)]

        metrics: dict[str, float] = {}
        for epoch in range(1, epochs + 1):
            explainer.train()
            listener.train()
            _train_epoch(step, explainer, opt_e, loader, limit_batches, dev)
            # Stage 4 (score): both validation losses, with the networks in eval mode.
            explainer.eval()
            listener.eval()
            loss_e, acc_e = _explainer_scores(explainer, val_batches)
            loss_a, acc_a = _listener_scores(step, explainer, val_batches)
            objective = loss_e + lease.gamma * loss_a
            if not math.isfinite(objective):
                raise RuntimeError(
                    f"the LeaSE objective is not finite at epoch {epoch}: "
                    f"explainer loss {loss_e}, listener loss {loss_a}."
                )
            metrics = {
                "default": -objective,
                "lease_objective": objective,
                "explainer_val_loss": loss_e,
                "listener_val_loss": loss_a,
                "explainer_accuracy": acc_e,
                "listener_accuracy": acc_a,
                "epoch": epoch,
            }
            logger.info("epoch %d: %s", epoch, metrics)
            nni.report_intermediate_result(metrics)
    nni.report_final_result(metrics)
    return metrics


def lease_evaluator(**kwargs: Any) -> FunctionalEvaluator:
    """An NNI evaluator running :func:`evaluate_lease` with these keyword arguments (checked now).

    Examples
    --------
    >>> evaluator = lease_evaluator(gamma=1.0, epochs=1, limit_batches=4)
    >>> evaluator.arguments["gamma"]
    1.0
    """
    check_trial_arguments(**kwargs)
    return FunctionalEvaluator(evaluate_lease, **kwargs)
