"""Build an exported architecture and train it from scratch (the usual last step of a NAS search).

The search's supernet weights are discarded: the chosen architecture is frozen out of the model space,
every layer is re-initialised under ``seed``, trained with Adam on cross entropy
(:func:`art_fisher.models.train_model`) and evaluated on held-out data.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from nni.nas.nn.pytorch import ModelSpace
from torch import nn
from torch.utils.data import DataLoader, Dataset

from art_fisher.models import train_model
from art_fisher.utils import check_int, check_real
from nni_lease._limits import MAX_BATCH_SIZE, MAX_EPOCHS, MAX_RATE
from nni_lease._spaces import check_model_size

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RetrainResult:
    """Outcome of :func:`retrain`.

    Attributes
    ----------
    test_accuracy : float
        Fraction of test samples classified correctly, in ``[0, 1]``.
    test_loss : float
        Mean cross entropy on the test set, in nats.
    val_accuracy : float or None
        Same on the validation set, when one was given.
    n_parameters : int
        Trainable parameters of the built model.
    seconds : float
        Wall-clock training time.
    model : nn.Module
        The trained model, in eval mode.
    """

    test_accuracy: float
    test_loss: float
    val_accuracy: float | None
    n_parameters: int
    seconds: float
    model: nn.Module

    def as_dict(self) -> dict[str, Any]:
        """The numbers (no model), e.g. for JSON."""
        return {
            "test_accuracy": self.test_accuracy,
            "test_loss": self.test_loss,
            "val_accuracy": self.val_accuracy,
            "n_parameters": self.n_parameters,
            "seconds": self.seconds,
        }


def _check_architecture(model_space: ModelSpace, architecture: Mapping[str, Any]) -> dict[str, Any]:
    if not isinstance(model_space, ModelSpace):
        raise ValueError(f"model_space must be an nni ModelSpace; got {type(model_space).__name__}.")
    if not isinstance(architecture, Mapping):
        raise ValueError(f"architecture must be a dict of choice label -> value; got {type(architecture).__name__}.")
    labels = set(model_space.simplify())
    missing, unknown = sorted(labels - set(architecture)), sorted(set(architecture) - labels)
    if missing or unknown:
        raise ValueError(
            f"architecture must give exactly the space's choices {sorted(labels)}; "
            f"missing {missing}, unknown {unknown}."
        )
    return dict(architecture)


def build_architecture(model_space: ModelSpace, architecture: Mapping[str, Any], *, seed: int = 0) -> nn.Module:
    """Freeze ``architecture`` out of ``model_space`` and re-initialise every layer under ``seed``.

    Parameters
    ----------
    model_space : ModelSpace
        The search space (not modified), possibly built on the meta device
        (:func:`nni_lease._spaces.build_space_on_meta`): then only the chosen network is allocated.
    architecture : mapping
        Choice label → chosen value, as ``NasExperiment.export_top_models(formatter="dict")[0]`` gives.
    seed : int
        Seed of the re-initialisation (the global RNG is left as it was).

    Returns
    -------
    nn.Module
        A fixed model with fresh weights, in train mode.

    Raises
    ------
    ValueError
        If ``architecture`` misses a choice of the space, names an unknown one, or a value is invalid, or the
        network would have more than :data:`~nni_lease._limits.MAX_PARAMETERS` parameters.
    """
    sample = _check_architecture(model_space, architecture)
    on_meta = any(t.is_meta for t in model_space.parameters())
    try:
        # freeze() may share layers with the space: copy, so re-initialising leaves the space untouched. A space on
        # the meta device is frozen there too (a space that rebuilds itself for a sample would allocate otherwise).
        with torch.device("meta") if on_meta else contextlib.nullcontext():
            model = copy.deepcopy(model_space.freeze(sample))
    except Exception as exc:
        raise ValueError(f"architecture {sample} is not a valid sample of the model space: {exc}") from exc
    check_model_size(model, f"the network of the architecture ({len(sample)} choices)")
    if on_meta:  # allocate the chosen network only, then initialise it below
        model.to_empty(device="cpu")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for module in model.modules():
            reset = getattr(module, "reset_parameters", None)
            if callable(reset):
                reset()
            elif on_meta and any(True for _ in module.buffers(recurse=False)):
                raise ValueError(f"{type(module).__name__} has buffers but no reset_parameters to initialise them.")
    return model.train()


def _arrays(dataset: Dataset) -> tuple[np.ndarray, np.ndarray]:
    x, y = getattr(dataset, "x", None), getattr(dataset, "y", None)
    if isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor):
        return x.numpy(), y.numpy()
    xs, ys = zip(
        *[(torch.as_tensor(a), torch.as_tensor(b)) for a, b in DataLoader(dataset, batch_size=256)], strict=True
    )
    return torch.cat(xs).numpy(), torch.cat(ys).numpy()


def evaluate(model: nn.Module, x: np.ndarray, y: np.ndarray, *, batch_size: int = 256) -> tuple[float, float]:
    """Accuracy (fraction) and mean cross entropy (nats) of ``model`` on ``(x, y)``, in eval mode."""
    device = next(model.parameters()).device
    model.eval()
    correct, total_loss = 0, 0.0
    with torch.no_grad():
        for start in range(0, len(x), batch_size):
            xb = torch.as_tensor(x[start : start + batch_size], dtype=torch.float32, device=device)
            yb = torch.as_tensor(y[start : start + batch_size], dtype=torch.long, device=device)
            logits = model(xb)
            correct += int((logits.argmax(-1) == yb).sum())
            total_loss += float(F.cross_entropy(logits, yb, reduction="sum"))
    return correct / len(x), total_loss / len(x)


def retrain(
    model_space: ModelSpace,
    architecture: Mapping[str, Any],
    train: Dataset,
    test: Dataset,
    *,
    val: Dataset | None = None,
    epochs: int = 20,
    batch_size: int = 64,
    learning_rate: float = 1e-3,
    seed: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> RetrainResult:
    """Train the exported ``architecture`` from scratch on ``train`` and report test accuracy.

    Parameters
    ----------
    model_space : ModelSpace
        The space that was searched (e.g. a fresh :class:`nni_lease.LeaseCellSpace`).
    architecture : mapping
        Choice label → value, e.g. ``experiment.export_top_models(formatter="dict")[0]``.
    train, test : Dataset
        Yield ``(x, y)`` pairs (e.g. :class:`nni_lease.DigitsDataset` splits).
    val : Dataset or None
        Optional validation set, reported as ``val_accuracy``.
    epochs, batch_size, learning_rate : int, int, float
        Adam training settings.
    seed : int
        Seeds the weight initialisation and the shuffling.
    device : str or torch.device
        Where to train.
    progress : bool
        Show a tqdm bar over epochs.

    Returns
    -------
    RetrainResult

    Raises
    ------
    ValueError
        For a bad architecture or non-positive ``epochs`` / ``batch_size`` / ``learning_rate``.
    """
    check_int(epochs, "epochs", low=1, high=MAX_EPOCHS)
    check_int(batch_size, "batch_size", low=1, high=MAX_BATCH_SIZE)
    check_real(learning_rate, "learning_rate", low=0.0, high=MAX_RATE, low_open=True)
    model = build_architecture(model_space, architecture, seed=seed)
    x_tr, y_tr = _arrays(train)
    start = time.perf_counter()
    train_model(
        model,
        x_tr,
        y_tr,
        epochs=epochs,
        batch_size=batch_size,
        lr=learning_rate,
        seed=seed,
        device=device,
        progress=progress,
    )
    seconds = time.perf_counter() - start
    test_acc, test_loss = evaluate(model, *_arrays(test))
    val_acc = evaluate(model, *_arrays(val))[0] if val is not None else None
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    logger.info(
        "Retrained %s: test accuracy %.4f (%d parameters, %.1f s).", dict(architecture), test_acc, n_params, seconds
    )
    return RetrainResult(
        test_accuracy=test_acc,
        test_loss=test_loss,
        val_accuracy=val_acc,
        n_parameters=n_params,
        seconds=seconds,
        model=model,
    )
