r"""The one-step spectral attack (OSSA) of Zhao et al. (AAAI 2019, arXiv:1810.03806) as an ART evasion attack.

Each input ``x`` moves by ``eps`` (L2) along the top eigenvector ``v₁`` of its input Fisher matrix
``G(x) = Jₓᵀ S Jₓ`` (:func:`~art_fisher.metrics.fisher_input_spectrum`): the direction in which the
predictive distribution changes fastest to second order (``KL(p(x) ‖ p(x + εv)) ≈ ½ ε² vᵀ G v``). An
eigenvector's sign is arbitrary; the attack takes the sign that increases the cross-entropy loss of the
predicted class (or of the given label), ``sign(⟨v₁, ∇ₓ(−log p_y)⟩)``, then clips to the classifier's
``clip_values``:

.. math::

    x_{adv} = \operatorname{clip}\bigl(x + \varepsilon \, \sigma \, v_1(x)\bigr), \qquad
    \sigma = \operatorname{sign}\langle v_1, \nabla_x (-\log p_y(x)) \rangle \ (+1 \text{ where } 0).

The spectrum is taken with respect to the raw input: the classifier's preprocessing (e.g. a
standardisation) is part of the differentiated function, as in ``classifier.loss_gradient``.
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar, cast

import numpy as np
import torch
from art.attacks.attack import EvasionAttack
from art.estimators.classification.classifier import ClassifierMixin
from art.estimators.estimator import BaseEstimator, LossGradientsMixin
from torch import nn
from tqdm.auto import tqdm

from art_fisher import _checks
from art_fisher.detection._features import _eval_mode, check_classifier, check_inputs
from art_fisher.metrics import fisher_input_spectrum
from art_fisher.utils import check_bool, check_int, check_real

logger = logging.getLogger(__name__)


class _RawInputModel(nn.Module):
    """The classifier's model after its preprocessing: a function of the raw input."""

    def __init__(self, classifier: Any) -> None:
        super().__init__()
        self.net = classifier.model
        self.preprocess = classifier._apply_preprocessing if classifier.preprocessing_operations else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.preprocess is not None:
            x, _ = self.preprocess(x, y=None, fit=False, no_grad=False)
        return self.net(x)


class OneStepSpectralAttack(EvasionAttack):
    """One step of L2 size ``eps`` along ± the top eigenvector of the input Fisher matrix (module docstring).

    Parameters
    ----------
    classifier : art.estimators.classification.PyTorchClassifier
        The attacked classifier.
    eps : float
        L2 norm of the step (before clipping), > 0.
    norm : {2}
        The step's norm; the eigenvector is a unit L2 direction, so only 2.
    batch_size : int
        Inputs per spectrum computation.
    output : {"logits", "log_probs", "probs"}
        What the classifier's model returns.
    verbose : bool
        Show a progress bar.

    Examples
    --------
    >>> import numpy as np, torch
    >>> from torch import nn
    >>> from art.estimators.classification import PyTorchClassifier
    >>> from art_fisher import OneStepSpectralAttack
    >>> _ = torch.manual_seed(0)
    >>> model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))
    >>> clf = PyTorchClassifier(model, loss=nn.CrossEntropyLoss(), input_shape=(6,), nb_classes=3,
    ...                         clip_values=(-10.0, 10.0))
    >>> x = np.random.default_rng(0).normal(size=(4, 6)).astype(np.float32)
    >>> x_adv = OneStepSpectralAttack(clf, eps=0.5).generate(x)
    >>> np.round(np.linalg.norm(x_adv - x, axis=1), 4)
    array([0.5, 0.5, 0.5, 0.5], dtype=float32)
    """

    attack_params: ClassVar[list[str]] = [
        *EvasionAttack.attack_params, "eps", "norm", "batch_size", "output", "verbose",
    ]  # fmt: skip
    _estimator_requirements = (BaseEstimator, LossGradientsMixin, ClassifierMixin)

    def __init__(
        self, classifier: Any, eps: float = 0.3, norm: int | float | str = 2, batch_size: int = 32,
        output: str = "logits", verbose: bool = False,
    ) -> None:  # fmt: skip
        check_classifier(classifier)
        super().__init__(estimator=classifier)
        self.eps = eps
        self.norm = norm
        self.batch_size = batch_size
        self.output = output
        self.verbose = verbose
        self._check_params()

    def _check_params(self) -> None:
        check_real(self.eps, "eps", low=0.0, low_open=True)
        if isinstance(self.norm, bool) or self.norm not in (2, 2.0, "2"):
            raise ValueError(f"norm must be 2 (the eigenvector is a unit L2 direction); got {self.norm!r}.")
        check_int(self.batch_size, "batch_size", low=1)
        _checks.check_choice("output", self.output, _checks.OUTPUTS)
        check_bool(self.verbose, "verbose")

    def _labels(self, x: np.ndarray, y: np.ndarray | None) -> np.ndarray:
        if y is None:
            return np.argmax(self.estimator.predict(x, batch_size=self.batch_size), axis=1)
        from art.utils import check_and_transform_label_format

        y = check_and_transform_label_format(y, nb_classes=self.estimator.nb_classes, return_one_hot=True)
        if y is None or len(y) != len(x):
            raise ValueError(f"y must hold one label per input of x ({len(x)}); got {None if y is None else len(y)}.")
        return np.argmax(y, axis=1)

    def directions(self, x: np.ndarray, y: np.ndarray | None = None) -> np.ndarray:
        """The signed unit steps ``σ v₁`` (N, *input_shape), before scaling by ``eps`` and clipping."""
        x = check_inputs(self.estimator, x)
        labels = self._labels(x, y)
        model = _RawInputModel(self.estimator)
        parameter = next(self.estimator.model.parameters())
        out = np.empty_like(x)
        starts = range(0, len(x), self.batch_size)
        with _eval_mode(self.estimator.model):
            for start in tqdm(starts, desc="OSSA", disable=not self.verbose, leave=False):
                sl = slice(start, start + self.batch_size)
                xt = torch.as_tensor(x[sl], dtype=parameter.dtype, device=parameter.device)
                spectrum = fisher_input_spectrum(model, xt, k=1, output=self.output, chunk_size=self.batch_size)
                v = cast(torch.Tensor, spectrum.vectors)[:, 0]
                grad = self._loss_gradient(model, xt, torch.as_tensor(labels[sl], device=parameter.device))
                sign = torch.where((v * grad).flatten(1).sum(1) < 0, -1.0, 1.0).to(v.dtype)
                out[sl] = (v * sign.view(-1, *[1] * (v.dim() - 1))).cpu().numpy()
        return out

    def _loss_gradient(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``∇ₓ(−log p_y(x))`` (N, ...) of each input, the model's output read as ``self.output``."""
        x = x.detach().requires_grad_(True)
        with torch.enable_grad():
            out = model(x)
            log_p = torch.log(out) if self.output == "probs" else torch.log_softmax(out, dim=1)
            loss = -log_p.gather(1, y.view(-1, 1)).sum()
            return torch.autograd.grad(loss, x)[0]

    def generate(self, x: np.ndarray, y: np.ndarray | None = None, **kwargs: Any) -> np.ndarray:
        """Adversarial examples (N, *input_shape), float32.

        Parameters
        ----------
        x : ndarray of shape (N, *input_shape)
            Inputs to attack.
        y : ndarray, optional
            Labels (indices of shape (N,) or one-hot (N, C)) whose loss the step's sign increases;
            default: the classifier's predictions.

        Returns
        -------
        ndarray
            ``clip(x + eps · σ v₁)``, clipped to ``clip_values`` when the classifier has them.
        """
        x = np.asarray(x, dtype=np.float32)
        x_adv = x + np.float32(self.eps) * self.directions(x, y)
        clip = self.estimator.clip_values
        if clip is not None:
            x_adv = np.clip(x_adv, clip[0], clip[1])
        return x_adv.astype(np.float32)
