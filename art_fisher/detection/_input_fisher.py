r"""Detection features from the spectrum of the input Fisher matrix ``G(x) = Jₓᵀ S Jₓ``.

Zhao et al. (AAAI 2019, arXiv:1810.03806) detect adversarial examples from the eigenvalues of ``G``
(:func:`~art_fisher.metrics.fisher_input_spectrum`). The features here are the logarithms of its
``min(C − 1, D)`` eigenvalues, descending (``"spectrum"``), or of the largest alone (``"top"``, the
paper's score). Each eigenvalue is floored at the rounding level of the largest
(``16 · C' · eps · λ₁``, as :func:`~art_fisher.metrics.fisher_input_spectrum` sets it to 0), so that an eigenvalue
lost to rounding gives a finite feature that does not jump. ``G`` is taken with respect to the model's
input after the classifier's preprocessing (as every Fisher metric of the detectors is), in eval mode.
The torch form (:func:`spectrum_features`) is differentiable in the input, for adaptive attacks.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from art_fisher.detection._features import _eval_mode
from art_fisher.metrics._input_spectrum import ZERO_TOLERANCE, fisher_input_spectrum

#: ``"spectrum"``: every non-zero eigenvalue; ``"top"``: the largest (the paper's detector).
FEATURE_SETS = ("spectrum", "top")


def feature_count(classifier: Any, features: str) -> int:
    """Columns of ``features`` for the classifier: ``min(C − 1, D)`` eigenvalues, or 1."""
    if features not in FEATURE_SETS:
        raise ValueError(f"features must be one of {list(FEATURE_SETS)}; got {features!r}.")
    if features == "top":
        return 1
    return int(min(classifier.nb_classes - 1, np.prod(classifier.input_shape)))


def spectrum_features(
    model: torch.nn.Module, x: torch.Tensor, n_values: int, *, create_graph: bool = False, chunk_size: int | None = None
) -> torch.Tensor:
    """``log max(λ_i, floor)`` (N, n_values) of the model's input Fisher at preprocessed inputs ``x`` (N, ...)."""
    values = fisher_input_spectrum(
        model, x, k=n_values, vectors=False, create_graph=create_graph, chunk_size=chunk_size
    ).values
    floor = ZERO_TOLERANCE * (n_values + 1) * torch.finfo(values.dtype).eps * values[:, :1]
    return torch.log(torch.maximum(values, floor.clamp_min(torch.finfo(values.dtype).tiny)))


def input_fisher_features(
    classifier: Any, x: np.ndarray, *, features: str = "spectrum", chunk_size: int = 128
) -> np.ndarray:
    """Float64 features (N, :func:`feature_count`) of raw inputs ``x`` (N, *input_shape) of an ART PyTorchClassifier."""
    n_values = feature_count(classifier, features)
    model = classifier.model
    parameter = next(model.parameters())
    out = []
    with _eval_mode(model):
        for start in range(0, len(x), chunk_size):
            batch = x[start : start + chunk_size]
            if classifier.preprocessing_operations:
                batch, _ = classifier._apply_preprocessing(batch, y=None, fit=False)
            xt = torch.as_tensor(np.asarray(batch), dtype=parameter.dtype, device=parameter.device)
            xt = xt.clone(memory_format=torch.contiguous_format)
            out.append(spectrum_features(model, xt, n_values).cpu().numpy().astype(np.float64))
    return np.concatenate(out)
