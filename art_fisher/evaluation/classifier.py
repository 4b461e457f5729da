"""The ART classifier the evaluation attacks: ART's ``PyTorchClassifier`` that feeds the model its own dtype.

ART's ``PyTorchClassifier`` hands arrays to the model in whatever dtype they come: an attack that works in
float64 (HopSkipJump, and others that build their queries with NumPy) then fails inside a float32 model
with ``RuntimeError: Input type (double) and bias type (float)``. :class:`ModelDtypeClassifier` casts
every input, after ART's preprocessing, to the dtype of the model's first floating-point parameter; in
``loss_gradient`` the cast is part of the graph, so gradients come back for the input as given. With it,
any ART evasion attack can be registered in :data:`art_fisher.evaluation.attacks.ATTACKS`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from art.estimators.classification import PyTorchClassifier
from torch import nn

__all__ = ["ModelDtypeClassifier", "attacked_classifier"]


def _model_dtype(model: nn.Module) -> torch.dtype:
    for tensor in (*model.parameters(), *model.buffers()):
        if tensor.is_floating_point():
            return tensor.dtype
    return torch.get_default_dtype()


class ModelDtypeClassifier(PyTorchClassifier):
    """ART's ``PyTorchClassifier`` whose inputs reach the model in the model's dtype (see the module docstring).

    Takes ``PyTorchClassifier``'s arguments; ``model_dtype`` is the dtype of the model's first
    floating-point parameter or buffer.
    """

    def __init__(self, model: nn.Module, *args: Any, **kwargs: Any) -> None:
        super().__init__(model, *args, **kwargs)
        self.model_dtype = _model_dtype(model)

    def _apply_preprocessing(self, x: Any, y: Any, fit: bool = False, no_grad: bool = True) -> tuple[Any, Any]:
        x, y = super()._apply_preprocessing(x, y, fit=fit, no_grad=no_grad)
        if isinstance(x, torch.Tensor):
            if x.is_floating_point() and x.dtype != self.model_dtype:
                x = x.to(self.model_dtype)
        elif isinstance(x, np.ndarray) and x.dtype.kind == "f":
            wanted = torch.empty((), dtype=self.model_dtype).numpy().dtype
            if x.dtype != wanted:
                x = x.astype(wanted)
        return x, y


def attacked_classifier(
    model: nn.Module, *, input_shape: tuple[int, ...], nb_classes: int, device: torch.device
) -> ModelDtypeClassifier:
    """The evaluation's classifier: cross-entropy loss, inputs in [0, 1], on ``device``."""
    return ModelDtypeClassifier(
        model, loss=nn.CrossEntropyLoss(), input_shape=tuple(input_shape), nb_classes=nb_classes,
        clip_values=(0.0, 1.0), device_type="gpu" if device.type == "cuda" else "cpu",
    )  # fmt: skip
