r"""LeaSE trial code: train and score one explainer architecture as one NNI trial.

For one architecture ``A`` (a sample of the search space, built by NNI in the trial process), every
epoch runs the three LeaSE stages on mini-batches and then scores the result:

1. train the explainer's weights ``E`` on the explainer's training split (cross entropy);
2. explain the listener's training inputs ``x``: ``δ* = argmax_{‖δ‖∞≤ε} ℓ(f(x+δ; E), f(x; E))`` by
   PGD (:func:`nni_lease.explain.pgd_explain`), with the explainer in eval mode;
3. train the listener's weights ``W`` (fixed architecture, :func:`nni_lease.listener.default_listener`)
   on the explained inputs ``δ* ⊙ x`` with their labels;
4. score: :math:`J = L(E, D_e^{val}) + \gamma\, L(W, \delta^*_{val} \odot D_a^{val})`, both mean cross
   entropies in nats over the validation split, the listener's on validation inputs explained by the
   same explainer (the listener only ever sees explained inputs, and its validation loss depends on ``A``
   through ``δ*`` as in the one-shot strategy).

``nni.report_intermediate_result`` gets ``{"default": J, ...}`` after every epoch and
``nni.report_final_result`` the last one; lower ``default`` is better (:class:`nni_lease.multitrial.
LeaseMultiTrial` minimises it). Accuracies are fractions in ``[0, 1]``.

Every argument is small (numbers and strings): NNI records an evaluator's arguments with ``nni.trace``
and refuses any over 64 KB, so the data set is rebuilt in the trial from its name
(:func:`nni_lease.data.make_dataset`), never passed as tensors.
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

from nni_lease.data import make_dataset
from nni_lease.explain import check_pgd_arguments, pgd_explain
from nni_lease.listener import check_listener, default_listener

logger = logging.getLogger(__name__)

__all__ = ["evaluate_lease", "lease_evaluator", "check_trial_arguments"]


def check_trial_arguments(
    *,
    dataset: str = "digits",
    data_root: str | None = None,
    gamma: float = 1.0,
    epochs: int = 2,
    batch_size: int = 64,
    max_batches: int | None = None,
    train_limit: int | None = None,
    val_limit: int | None = None,
    learning_rate: float = 0.01,
    pgd_epsilon: float = 8 / 255,
    pgd_step_size: float | None = None,
    pgd_steps: int = 3,
    listener_width: int | None = None,
    seed: int = 0,
    device: str = "cpu",
) -> None:
    """Validate the arguments of :func:`evaluate_lease` before any work (same names and defaults).

    Raises
    ------
    ValueError
        Naming the offending argument, the expected and the received value.
    """
    if dataset not in ("digits", "cifar10"):
        raise ValueError(f"dataset must be 'digits' or 'cifar10'; got {dataset!r}.")
    if dataset == "cifar10" and data_root is None:
        raise ValueError("data_root must name a folder of CIFAR-10 python batches for dataset 'cifar10'.")
    if data_root is not None and not isinstance(data_root, str):
        raise ValueError(f"data_root must be None or a str path; got {type(data_root).__name__}.")
    if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or not math.isfinite(gamma) or gamma < 0:
        raise ValueError(f"gamma must be a finite number >= 0; got {gamma!r}.")
    for name, value in [("epochs", epochs), ("batch_size", batch_size)]:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int; got {value!r}.")
    for name, value in [("max_batches", max_batches), ("train_limit", train_limit), ("val_limit", val_limit),
                        ("listener_width", listener_width)]:
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"{name} must be None or a positive int; got {value!r}.")
    if isinstance(learning_rate, bool) or not isinstance(learning_rate, (int, float)) \
            or not math.isfinite(learning_rate) or learning_rate <= 0:
        raise ValueError(f"learning_rate must be a finite number > 0; got {learning_rate!r}.")
    check_pgd_arguments(epsilon=pgd_epsilon, step_size=pgd_epsilon if pgd_step_size is None else pgd_step_size,
                        steps=pgd_steps, prefix="pgd_")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be an int >= 0; got {seed!r}.")
    if device not in ("cpu", "cuda") and not str(device).startswith("cuda:"):
        raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N'; got {device!r}.")


def _mean_loss_and_accuracy(model: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[float, float]:
    total, correct, n = 0.0, 0, 0
    with torch.no_grad():
        for x, y in batches:
            logits = model(x)
            total += float(F.cross_entropy(logits, y, reduction="sum"))
            correct += int((logits.argmax(dim=1) == y).sum())
            n += len(y)
    return total / n, correct / n


def evaluate_lease(
    model: nn.Module,
    *,
    dataset: str = "digits",
    data_root: str | None = None,
    gamma: float = 1.0,
    epochs: int = 2,
    batch_size: int = 64,
    max_batches: int | None = None,
    train_limit: int | None = None,
    val_limit: int | None = None,
    learning_rate: float = 0.01,
    pgd_epsilon: float = 8 / 255,
    pgd_step_size: float | None = None,
    pgd_steps: int = 3,
    listener_width: int | None = None,
    seed: int = 0,
    device: str = "cpu",
) -> dict[str, float]:
    """Train the explainer ``model`` and a fresh listener with LeaSE, report to NNI, return the final metrics.

    Parameters
    ----------
    model : nn.Module
        The explainer: one architecture of the search space, mapping ``(N, C, H, W)`` to logits
        ``(N, n_classes)``. It is trained in place (it is the trial's own copy).
    dataset : {"digits", "cifar10"}
        Data set name (:func:`nni_lease.data.make_dataset`); ``"cifar10"`` needs ``data_root``.
    data_root : str or None
        Folder of the CIFAR-10 python batches.
    gamma : float
        Weight ``γ ≥ 0`` of the listener's validation loss in the objective (0: explainer alone).
    epochs : int
        Number of epochs; each runs stages 1–3 once over the training batches and reports once.
    batch_size : int
        Mini-batch size of both networks.
    max_batches : int or None
        Use at most this many training batches per epoch (quick runs); ``None`` uses all.
    train_limit, val_limit : int or None
        Keep only the first so many samples of the training / validation split.
    learning_rate : float
        Adam learning rate of both the explainer and the listener.
    pgd_epsilon : float
        L∞ radius ``ε`` of the explanation, in input units (inputs are in ``[0, 1]``).
    pgd_step_size : float or None
        PGD step; ``None`` uses ``2.5 ε / steps`` (as the one-shot :class:`nni_lease.strategy.LeaSE`).
    pgd_steps : int
        Number of PGD steps.
    listener_width : int or None
        Width of the default listener (:func:`nni_lease.listener.default_listener`).
    seed : int
        Seeds the data split, the shuffling, the listener's initialisation and the PGD random starts
        (through a forked torch RNG: the caller's global RNG state is left as it was).
    device : str
        ``"cpu"`` or a CUDA device.

    Returns
    -------
    dict
        ``default`` (the objective ``J``, nats), ``explainer_val_loss``, ``listener_val_loss`` (nats),
        ``explainer_accuracy``, ``listener_accuracy`` (validation, in ``[0, 1]``) and ``epoch``.
        The same dict is sent with ``nni.report_final_result``.

    Raises
    ------
    ValueError
        For a bad argument (before any work).
    RuntimeError
        If the objective is not finite (the trial is then marked failed).
    """
    check_trial_arguments(dataset=dataset, data_root=data_root, gamma=gamma, epochs=epochs, batch_size=batch_size,
                          max_batches=max_batches, train_limit=train_limit, val_limit=val_limit,
                          learning_rate=learning_rate, pgd_epsilon=pgd_epsilon, pgd_step_size=pgd_step_size,
                          pgd_steps=pgd_steps, listener_width=listener_width, seed=seed, device=device)
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module; got {type(model).__name__}.")
    step_size = 2.5 * pgd_epsilon / pgd_steps if pgd_step_size is None else pgd_step_size
    pgd = {"epsilon": pgd_epsilon, "step_size": step_size, "steps": pgd_steps}
    train = make_dataset(dataset, "train", root=data_root, seed=seed, limit=train_limit)
    val = make_dataset(dataset, "val", root=data_root, seed=seed, limit=val_limit)
    dev = torch.device(device)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        listener = default_listener(train.input_shape, train.n_classes, width=listener_width).to(dev)
        check_listener(listener, train.input_shape, train.n_classes)
        explainer = model.to(dev)
        opt_e = torch.optim.Adam(explainer.parameters(), lr=learning_rate)
        opt_w = torch.optim.Adam(listener.parameters(), lr=learning_rate)
        loader = DataLoader(train, batch_size=batch_size, shuffle=True,
                            generator=torch.Generator().manual_seed(seed))
        pgd_generator = torch.Generator().manual_seed(seed + 1)
        val_batches = [(x.to(dev), y.to(dev)) for x, y in DataLoader(val, batch_size=256)]

        metrics: dict[str, float] = {}
        for epoch in range(1, epochs + 1):
            batches = []
            for i, (x, y) in enumerate(loader):
                if max_batches is not None and i >= max_batches:
                    break
                batches.append((x.to(dev), y.to(dev)))
            # Stage 1: explainer weights E on its training batches.
            explainer.train()
            for x, y in batches:
                opt_e.zero_grad()
                F.cross_entropy(explainer(x), y).backward()
                opt_e.step()
            # Stages 2 and 3: explain the listener's inputs with the trained explainer, train W on δ ⊙ x.
            explainer.eval()
            listener.train()
            for x, y in batches:
                explained = pgd_explain(explainer, x, generator=pgd_generator, **pgd).explained
                opt_w.zero_grad()
                F.cross_entropy(listener(explained), y).backward()
                opt_w.step()
            # Stage 4 (score): both validation losses.
            listener.eval()
            loss_e, acc_e = _mean_loss_and_accuracy(explainer, val_batches)
            explained_val = [(pgd_explain(explainer, x, generator=pgd_generator, **pgd).explained, y)
                             for x, y in val_batches]
            loss_a, acc_a = _mean_loss_and_accuracy(listener, explained_val)
            objective = loss_e + gamma * loss_a
            if not math.isfinite(objective):
                raise RuntimeError(f"the LeaSE objective is not finite at epoch {epoch}: "
                                   f"explainer loss {loss_e}, listener loss {loss_a}.")
            metrics = {"default": objective, "explainer_val_loss": loss_e, "listener_val_loss": loss_a,
                       "explainer_accuracy": acc_e, "listener_accuracy": acc_a, "epoch": epoch}
            logger.info("epoch %d: %s", epoch, metrics)
            nni.report_intermediate_result(metrics)
    nni.report_final_result(metrics)
    return metrics


def lease_evaluator(**kwargs: Any) -> FunctionalEvaluator:
    """An NNI evaluator running :func:`evaluate_lease` with these keyword arguments (checked now).

    Examples
    --------
    >>> evaluator = lease_evaluator(gamma=1.0, epochs=1, max_batches=4)
    >>> evaluator.arguments["gamma"]
    1.0
    """
    check_trial_arguments(**kwargs)
    return FunctionalEvaluator(evaluate_lease, **kwargs)
