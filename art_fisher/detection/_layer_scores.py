r"""The adversarial- and out-of-distribution-detection field's standard scores, as torch functions of the input.

- :func:`energy_score` (Liu et al. 2020, "Energy-based Out-of-distribution Detection"):
  :math:`E(x; T) = -T \log \sum_c e^{z_c(x) / T}` of the classifier's logits :math:`z`; higher energy
  means less like the training data.
- :class:`ClassGaussians` and :func:`mahalanobis_scores` (Lee et al. 2018, "A Simple Unified Framework
  for Detecting Out-of-Distribution Samples and Adversarial Attacks"): per layer :math:`\ell`, the
  features :math:`f_\ell(x)` (channel means of a convolutional map), class means :math:`\mu_{\ell,c}`
  and one covariance :math:`\Sigma_\ell` tied across classes, fitted on clean training images; the
  confidence score :math:`M_\ell(x) = \max_c -(f_\ell(x) - \mu_{\ell,c})^\top \Sigma_\ell^{-1}
  (f_\ell(x) - \mu_{\ell,c})`, optionally after the paper's input preprocessing
  :math:`\hat x = x - \epsilon \operatorname{sign} \nabla_x (f_\ell(x) - \mu_{\ell,\hat c})^\top
  \Sigma_\ell^{-1} (f_\ell(x) - \mu_{\ell,\hat c})` (:math:`\hat c` the closest class), which raises the
  score of in-distribution inputs more than that of others.
- :func:`lid_estimates` (Ma et al. 2018, "Characterizing Adversarial Subspaces Using Local Intrinsic
  Dimensionality"): the maximum-likelihood estimate of the local intrinsic dimensionality of each layer's
  activation at :math:`x` among the :math:`k` nearest activations of a mini-batch of clean reference
  images, :math:`\widehat{\mathrm{LID}}(x) = -\bigl(\frac{1}{k} \sum_{i=1}^{k} \log (r_i(x) / r_k(x))\bigr)^{-1}`,
  :math:`r_i` the Euclidean distance to the :math:`i`-th nearest neighbour.

The layers (:func:`feature_layers`) are the model's activation and pooling modules in definition order,
then the logits (named ``"logits"``); :func:`layer_activations` reads them with forward hooks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from art_fisher import _checks

_LAYER_TYPES = (
    nn.ReLU,
    nn.LeakyReLU,
    nn.ELU,
    nn.GELU,
    nn.SiLU,
    nn.Softplus,
    nn.Tanh,
    nn.Sigmoid,
    nn.MaxPool2d,
    nn.AvgPool2d,
    nn.AdaptiveMaxPool2d,
    nn.AdaptiveAvgPool2d,
)


def energy_score(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    r""":math:`-T \log \sum_c \exp(z_c / T)` of logits (N, C), shape (N,); higher = less in-distribution."""
    if not temperature > 0:
        raise ValueError(f"temperature must be positive; got {temperature!r}.")
    return -temperature * torch.logsumexp(logits / temperature, dim=1)


def feature_layers(model: nn.Module) -> list[str]:
    """Names of ``model``'s activation and pooling modules in definition order, then ``"logits"``."""
    names = [name for name, module in model.named_modules() if name and isinstance(module, _LAYER_TYPES)]
    return [*names, "logits"]


def layer_activations(model: nn.Module, x: torch.Tensor, layers: Sequence[str]) -> dict[str, torch.Tensor]:
    """The outputs of ``layers`` (names from :func:`feature_layers`) for ``x``, with the graph to ``x``.

    A module called several times (a shared ReLU) gives its last output. The model's mode is not changed:
    put it in eval mode first.
    """
    modules = dict(model.named_modules())
    unknown = [name for name in layers if name != "logits" and name not in modules]
    if unknown:
        raise ValueError(f"layers must be names from {feature_layers(model)}; got unknown {unknown}.")
    captured: dict[str, torch.Tensor] = {}
    handles = [
        modules[name].register_forward_hook(lambda _m, _i, out, name=name: captured.__setitem__(name, out))
        for name in layers
        if name != "logits"
    ]
    try:
        logits = model(x)
    finally:
        for handle in handles:
            handle.remove()
    captured["logits"] = logits
    _checks.check_logits(logits, "the field's scores (energy, softmax confidence, Mahalanobis on the logits)")
    return {name: captured[name] for name in layers}


def pooled(activation: torch.Tensor) -> torch.Tensor:
    """Lee et al.'s layer feature: the mean over the spatial positions of a map (N, C, ...), else the vector."""
    return activation.flatten(2).mean(dim=2) if activation.dim() > 2 else activation


@dataclass(frozen=True)
class ClassGaussians:
    """Class means and the tied precision of one layer's features (Lee et al. 2018).

    Attributes
    ----------
    means : ndarray of shape (n_classes, d)
        :math:`\\mu_c`, the mean feature of each class.
    precision : ndarray of shape (d, d)
        :math:`\\Sigma^{-1}`, the pseudo-inverse of the covariance tied across classes,
        :math:`\\Sigma = \\frac{1}{N} \\sum_c \\sum_{i: y_i = c} (f_i - \\mu_c)(f_i - \\mu_c)^\\top`.
    """

    means: np.ndarray
    precision: np.ndarray

    @classmethod
    def fit(cls, features: np.ndarray, labels: np.ndarray, n_classes: int) -> ClassGaussians:
        """Fit on features (N, d) with class labels (N,) in ``range(n_classes)``; a class with no sample is left out.

        Raises
        ------
        ValueError
            If the shapes do not match or a label is outside ``range(n_classes)``.
        """
        f = np.asarray(features, np.float64)
        y = np.asarray(labels)
        if f.ndim != 2 or y.shape != (len(f),):
            raise ValueError(f"features must be (N, d) and labels (N,); got {f.shape} and {y.shape}.")
        if len(y) and (y.min() < 0 or y.max() >= n_classes):
            raise ValueError(f"labels must be in range({n_classes}); got values from {y.min()} to {y.max()}.")
        present = [c for c in range(n_classes) if np.any(y == c)]
        means = np.stack([f[y == c].mean(axis=0) for c in present])
        centred = f - means[np.searchsorted(present, y)]
        covariance = centred.T @ centred / len(f)
        return cls(means, np.linalg.pinv(covariance, hermitian=True))

    def scores(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        r""":math:`M(x) = \max_c -(f - \mu_c)^\top \Sigma^{-1} (f - \mu_c)` (N,) and the closest class's index (N,)."""
        means = torch.as_tensor(self.means, dtype=features.dtype, device=features.device)
        precision = torch.as_tensor(self.precision, dtype=features.dtype, device=features.device)
        diff = features[:, None, :] - means[None]  # (N, C, d)
        distances = torch.einsum("ncd,de,nce->nc", diff, precision, diff)
        best = distances.min(dim=1)
        return -best.values, best.indices


def mahalanobis_scores(
    model: nn.Module,
    x: torch.Tensor,
    gaussians: dict[str, ClassGaussians],
    *,
    noise: float = 0.0,
    clip_values: tuple[float, float] | None = None,
) -> torch.Tensor:
    """Lee et al.'s confidence score of each layer of ``gaussians``, shape (N, n_layers), higher = more in-distribution.

    ``noise`` > 0 applies the paper's input preprocessing per layer (module docstring) with magnitude
    ``noise`` (clipped to ``clip_values``); the preprocessed score has no input gradient here (it is a
    step of a signed gradient). The model runs as it is: put it in eval mode first.
    """
    layers = list(gaussians)
    if noise == 0.0:
        acts = layer_activations(model, x, layers)
        return torch.stack([gaussians[name].scores(pooled(acts[name]))[0] for name in layers], dim=1)
    columns = []
    for name in layers:
        with torch.enable_grad():
            xg = x.detach().clone().requires_grad_(True)
            score, _ = gaussians[name].scores(pooled(layer_activations(model, xg, [name])[name]))
            (grad,) = torch.autograd.grad(score.sum(), xg)
        x_hat = x.detach() + noise * grad.sign()  # ascend the score = descend the distance to the closest class
        if clip_values is not None:
            x_hat = x_hat.clamp(*clip_values)
        with torch.no_grad():
            columns.append(gaussians[name].scores(pooled(layer_activations(model, x_hat, [name])[name]))[0])
    return torch.stack(columns, dim=1)


def lid_estimates(activations: np.ndarray, reference: np.ndarray, k: int) -> np.ndarray:
    r"""MLE of the local intrinsic dimensionality of each row of ``activations`` among ``reference``'s rows.

    .. math:: \widehat{\mathrm{LID}}(x) = -\Bigl(\frac{1}{k} \sum_{i=1}^{k} \log \frac{r_i(x)}{r_k(x)}\Bigr)^{-1}

    with :math:`r_1 \le \dots \le r_k` the Euclidean distances from :math:`x` to its :math:`k` nearest rows
    of ``reference``; a reference row at distance 0 (the point itself) is not a neighbour.

    Parameters
    ----------
    activations : ndarray of shape (N, d)
    reference : ndarray of shape (B, d)
        The mini-batch of clean reference activations (more than ``k`` rows).
    k : int
        Neighbours, at least 2.

    Returns
    -------
    ndarray of shape (N,)
        Finite where the :math:`k` distances are not all equal; ``inf`` where they are.
    """
    a, r = np.asarray(activations, np.float64), np.asarray(reference, np.float64)
    if a.ndim != 2 or r.ndim != 2 or a.shape[1] != r.shape[1]:
        raise ValueError(f"activations (N, d) and reference (B, d) must share d; got {a.shape} and {r.shape}.")
    if not 2 <= k < len(r):
        raise ValueError(f"k must be from 2 to {len(r) - 1} (reference rows - 1); got {k!r}.")
    squared = (a * a).sum(1)[:, None] + (r * r).sum(1)[None] - 2.0 * a @ r.T
    distances = np.sqrt(np.maximum(squared, 0.0))
    distances[distances <= 1e-12 * (1.0 + distances.max())] = np.inf  # the point itself
    nearest = np.sort(distances, axis=1)[:, :k]
    with np.errstate(divide="ignore"):
        mean_log = np.mean(np.log(nearest / nearest[:, -1:]), axis=1)
        return -1.0 / mean_log
