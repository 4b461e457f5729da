r"""Detection features from the spectrum of the input Fisher matrix ``G(x) = Jₓᵀ S Jₓ``.

Zhao et al. (AAAI 2019, arXiv:1810.03806) detect adversarial examples from the eigenvalues of ``G``
(:func:`~art_fisher.metrics.fisher_input_spectrum`). The features here are ``log λ₁`` and
``log tr G`` (the sum of its ``min(C − 1, D)`` eigenvalues; ``"spectrum"``), or ``log λ₁`` alone
(``"top"``, the paper's score). The smaller eigenvalues are not features: in float32 those of confident
inputs are rounding noise of size ``eps · λ₁``, and the two computations of the features (numpy for the
protocol, torch with ``create_graph`` for the attacker, which factor ``S`` differently) gave them values
that differed beyond any tolerance; ``λ₁`` and the trace agree. ``G`` is taken with respect to the model's
input after the classifier's preprocessing (as every Fisher metric of the detectors is), in eval mode.
The torch form (:func:`spectrum_features`) is differentiable in the input, for adaptive attacks.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from art_fisher.detection._feature_source import COMPUTE, FeatureSource
from art_fisher.detection._features import _eval_mode
from art_fisher.metrics._input_spectrum import fisher_input_spectrum

#: ``"spectrum"``: every non-zero eigenvalue; ``"top"``: the largest (the paper's detector).
FEATURE_SETS = ("spectrum", "top")


def feature_count(classifier: Any, features: str) -> int:
    """Columns of ``features``: 2 (``log λ₁``, ``log tr G``) or 1 (``log λ₁``)."""
    if features not in FEATURE_SETS:
        raise ValueError(f"features must be one of {list(FEATURE_SETS)}; got {features!r}.")
    return 1 if features == "top" else 2


def spectrum_rank(classifier: Any) -> int:
    """``min(C − 1, D)``: the number of eigenvalues of ``G`` that can be non-zero."""
    return int(min(classifier.nb_classes - 1, np.prod(classifier.input_shape)))


def spectrum_features(
    model: torch.nn.Module, x: torch.Tensor, rank: int, *, create_graph: bool = False, chunk_size: int | None = None
) -> torch.Tensor:
    """``(log λ₁, log tr G)`` (N, 2) of the model's input Fisher at preprocessed inputs ``x`` (N, ...).

    ``tr G`` is the sum of the ``rank`` eigenvalues. Both are stable to rounding (unlike the smallest
    eigenvalues, which in float32 are rounding noise of size ``eps · λ₁``).
    """
    values = fisher_input_spectrum(
        model, x, k=rank, vectors=False, create_graph=create_graph, chunk_size=chunk_size
    ).values
    tiny = torch.finfo(values.dtype).tiny
    return torch.log(torch.stack([values[:, 0], values.sum(1)], dim=1).clamp_min(tiny))


def input_fisher_features(
    classifier: Any,
    x: np.ndarray,
    *,
    features: str = "spectrum",
    chunk_size: int = 128,
    source: FeatureSource = COMPUTE,
) -> np.ndarray:
    """Float64 features (N, :func:`feature_count`) of raw inputs ``x`` (N, *input_shape) of an ART PyTorchClassifier.

    Both columns are taken through ``source`` under the key ``("input_fisher",)`` (a
    :class:`~art_fisher.detection.FeatureCache` shares them between detectors); ``"top"`` keeps the first.
    """
    n_columns = feature_count(classifier, features)
    return source.rows(("input_fisher",), x, lambda rows: _spectrum_numpy(classifier, rows, chunk_size))[:, :n_columns]


def _spectrum_numpy(classifier: Any, x: np.ndarray, chunk_size: int) -> np.ndarray:
    """``(log λ₁, log tr G)`` (N, 2) of raw inputs, in float64."""
    rank = spectrum_rank(classifier)
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
            out.append(spectrum_features(model, xt, rank).cpu().numpy().astype(np.float64))
    return np.concatenate(out)
