r"""KD+BU (Feinman, Curtin, Shintre, Gardner 2017, "Detecting adversarial samples from artifacts") in the evaluation.

Two scores of an input ``x`` with predicted class ``t``, combined by a standardised logistic regression
fitted on clean (0) and adversarial (1) examples (``kd_bu``; the paper defines no clean-only variant):

- **kernel density** (KD) of the last hidden layer :math:`\phi(x)` (the input of the model's last
  ``nn.Linear``) under a Gaussian kernel density estimate of the reference training images of class
  ``t``, as scikit-learn's ``KernelDensity(kernel="gaussian", bandwidth=σ).score_samples`` gives it (the
  paper's code):

  .. math:: \log \hat k(x) = \log \frac{1}{|X_t|} \sum_{x_i \in X_t}
     \frac{\exp(-\|\phi(x) - \phi(x_i)\|^2 / 2σ^2)}{(2πσ^2)^{d/2}};

  ``σ = 1.2`` (:data:`BANDWIDTH`, the paper's MNIST value). The reference images are the run's clean
  training images (the Mahalanobis detector's), labelled by the classifier (the run holds no training
  labels); a class that none of them is predicted as falls back to the density of all of them.
- **Bayesian uncertainty** (BU) from ``T = 50`` (:data:`MC_SAMPLES`) Monte-Carlo dropout predictions
  :math:`\hat y_1..\hat y_T` (softmax vectors):
  :math:`U(x) = \frac1T \sum_i \hat y_i^\top \hat y_i - \bar y^\top \bar y`, :math:`\bar y = \frac1T\sum_i \hat y_i`.
  A model with ``nn.Dropout`` modules runs them in training mode (everything else in eval mode); **a
  model without dropout** (the evaluation's CNNs) gets dropout of rate 0.5 (:data:`DROPOUT`) on its
  last hidden layer — the input of its last ``nn.Linear``, where the paper's models have theirs — in
  these passes only. The dropout masks come from a generator seeded with the run's seed; the global
  random state is left as it was.

The detector has no input gradient here (its uncertainty is a random estimate).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from art_fisher.detection._decision import fit_logistic
from art_fisher.detection._features import _eval_mode
from art_fisher.evaluation.detectors._base import DetectorRun, DetectorSpec, RunContext, Scored, decided

BANDWIDTH = 1.2
MC_SAMPLES = 50
DROPOUT = 0.5


def last_linear(model: nn.Module) -> nn.Linear:
    """The model's last ``nn.Linear`` module (its input is the last hidden layer)."""
    linear = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linear:
        raise ValueError("kd_bu needs a model with an nn.Linear output layer (its input is the last hidden layer).")
    return linear[-1]


def hidden_features(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The last hidden layer (N, d) (the input of :func:`last_linear`, flattened) and the logits (N, C)."""
    captured: list[torch.Tensor] = []
    handle = last_linear(model).register_forward_pre_hook(lambda _m, args: captured.append(args[0]))
    try:
        logits = model(x)
    finally:
        handle.remove()
    return captured[-1].flatten(1), logits


@contextmanager
def _mc_dropout(model: nn.Module, rate: float, generator: torch.Generator) -> Iterator[None]:
    """Dropout on: the model's own modules in training mode, or ``rate`` on the last hidden layer."""
    modes = [(m, m.training) for m in model.modules()]
    own = [m for m in model.modules() if isinstance(m, nn.modules.dropout._DropoutNd)]
    model.eval()
    handle = None
    if own:
        for m in own:
            m.train()
    else:

        def drop(_m: nn.Module, args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
            h = args[0]
            keep = torch.empty_like(h).bernoulli_(1 - rate, generator=generator)
            return (h * keep / (1 - rate), *args[1:])

        handle = last_linear(model).register_forward_pre_hook(drop)
    try:
        with torch.random.fork_rng(devices=[]):  # the model's own dropout draws from the global generator
            torch.manual_seed(int(generator.initial_seed()))
            yield
    finally:
        if handle is not None:
            handle.remove()
        for module, training in modes:
            module.training = training


def bayesian_uncertainty(
    model: nn.Module, x: torch.Tensor, *, samples: int = MC_SAMPLES, rate: float = DROPOUT, seed: int = 0
) -> torch.Tensor:
    """Feinman et al.'s :math:`U(x)` (N,) from ``samples`` Monte-Carlo dropout softmax predictions (module doc)."""
    generator = torch.Generator(device=x.device).manual_seed(seed)
    with torch.no_grad(), _mc_dropout(model, rate, generator):
        probs = torch.stack([F.softmax(model(x), dim=1) for _ in range(samples)])  # (T, N, C)
    mean = probs.mean(0)
    return (probs * probs).sum(2).mean(0) - (mean * mean).sum(1)


class KdBuRun(DetectorRun):
    """KD+BU: per-class Gaussian KDE of the last hidden layer and MC-dropout uncertainty, logistic regression."""

    def __init__(self, ctx: RunContext, bandwidth: float = BANDWIDTH, samples: int = MC_SAMPLES) -> None:
        self.ctx, self.bandwidth, self.samples = ctx, bandwidth, samples
        last_linear(ctx.classifier.model)

    def _hidden(self, x: np.ndarray, *, uncertainty: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Last-hidden features (N, d), predicted classes (N,) and uncertainties (N,; empty if not asked) of ``x``."""
        clf, model = self.ctx.classifier, self.ctx.classifier.model
        parameter = next(model.parameters())
        feats, preds, uncert = [], [], []
        for start in range(0, len(x), self.ctx.batch_size):
            batch = x[start : start + self.ctx.batch_size]
            if clf.preprocessing_operations:
                batch, _ = clf._apply_preprocessing(batch, y=None, fit=False)
            xt = torch.as_tensor(np.asarray(batch), dtype=parameter.dtype, device=parameter.device)
            with torch.no_grad(), _eval_mode(model):
                h, z = hidden_features(model, xt)
            feats.append(h.cpu().numpy().astype(np.float64))
            preds.append(z.argmax(1).cpu().numpy())
            if uncertainty:
                u = bayesian_uncertainty(model, xt, samples=self.samples, seed=self.ctx.seed + start)
                uncert.append(u.cpu().numpy().astype(np.float64))
        return np.concatenate(feats), np.concatenate(preds), np.concatenate(uncert) if uncert else np.empty(0)

    def _reference_kdes(self) -> dict[int, Any]:
        """Per class (and ``-1``: all classes), the KDE of the reference images' last hidden layer; once per run."""
        from sklearn.neighbors import KernelDensity

        shared = self.ctx.shared.setdefault(__name__, {})
        key = ("kdes", self.bandwidth)
        if key not in shared:
            h, labels, _ = self._hidden(self.ctx.gaussian_images, uncertainty=False)
            kdes = {-1: KernelDensity(kernel="gaussian", bandwidth=self.bandwidth).fit(h)}
            for c in np.unique(labels):
                kdes[int(c)] = KernelDensity(kernel="gaussian", bandwidth=self.bandwidth).fit(h[labels == c])
            shared[key] = kdes
        return shared[key]

    def features(self, x: np.ndarray) -> np.ndarray:
        """``(log-density, uncertainty)`` (N, 2) of raw inputs ``x``."""
        kdes = self._reference_kdes()
        h, preds, uncert = self._hidden(x)
        density = np.empty(len(x))
        for c in np.unique(preds):
            rows = preds == c
            density[rows] = kdes.get(int(c), kdes[-1]).score_samples(h[rows])
        return np.column_stack([density, uncert])

    def fit(self, x: np.ndarray, y: np.ndarray | None) -> None:
        if y is None:
            raise ValueError(
                "kd_bu is fitted on clean and adversarial examples (Feinman et al. define no clean-only fit)."
            )
        self.estimator, self.threshold = fit_logistic(self.features(x), np.asarray(y), self.ctx.target_fpr)

    def detect(self, x: np.ndarray) -> Scored:
        return decided(self.estimator, self.features(x), self.threshold)


def kd_bu_specs() -> dict[str, DetectorSpec]:
    """The registry entry ``kd_bu``."""
    return {
        "kd_bu": DetectorSpec(
            "KD+BU (Feinman et al. 2017)",
            KdBuRun,
            no_gradient="no input gradient (its uncertainty is a Monte-Carlo dropout estimate)",
        )
    }
