"""The evaluation as an ART ``Evaluation``: attack a classifier, fit every detector, measure at one operating point.

:class:`DetectionEvaluation` follows ART's :class:`art.evaluations.evaluation.Evaluation` (settings in the
constructor, the work in ``evaluate``), as ART's ``SecurityCurve`` does: ``evaluate(classifier)`` runs
the protocol of :mod:`art_fisher.evaluation` on an ART ``PyTorchClassifier`` (or on a model
trained here when ``classifier`` is None), over one seed or several, and returns the
:class:`~art_fisher.evaluation.EvaluationResult` or the aggregated
:class:`~art_fisher.evaluation.SeedsResult` (with the detection-aware security curve).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from art.evaluations.evaluation import Evaluation

from art_fisher.data._loaders import load_dataset
from art_fisher.evaluation._attacks import DEFAULT_ATTACKS
from art_fisher.evaluation._security_curve import security_curve_stage
from art_fisher.evaluation._seeds import evaluate_seeds
from art_fisher.evaluation._workflow import prepare, run


class DetectionEvaluation(Evaluation):
    """ART ``Evaluation`` of adversarial-example detectors (the art-fisher protocol).

    Parameters
    ----------
    dataset, data_dir, attacks, eps, detectors, n_samples, target_fpr, adaptive, batch_size, device, epochs, arch
        As in :func:`art_fisher.evaluation.evaluate`.

    Examples
    --------
    >>> evaluation = DetectionEvaluation(dataset="digits", attacks=["fgsm", "pgd"], target_fpr=0.05)  # doctest: +SKIP
    >>> result = evaluation.evaluate(classifier, output_dir="out", seeds=[0, 1, 2])  # doctest: +SKIP
    >>> result.summary[0]["unseen_auc_mean"]                                         # doctest: +SKIP
    """

    def __init__(
        self,
        *,
        dataset: str = "digits",
        data_dir: str | Path | None = None,
        attacks: Sequence[str] = DEFAULT_ATTACKS,
        eps: float | None = None,
        detectors: Sequence[str] | None = None,
        n_samples: int = 300,
        target_fpr: float = 0.05,
        adaptive: bool = False,
        batch_size: int = 128,
        device: str = "cpu",
        epochs: int | None = None,
        arch: str | None = None,
    ) -> None:
        self.settings: dict[str, Any] = {
            "dataset": dataset,
            "data_dir": data_dir,
            "attacks": attacks,
            "eps": eps,
            "detectors": detectors,
            "n_samples": n_samples,
            "target_fpr": target_fpr,
            "adaptive": adaptive,
            "batch_size": batch_size,
            "device": device,
            "epochs": epochs,
            "arch": arch,
        }

    def evaluate(
        self,
        classifier: Any = None,
        *,
        output_dir: str | Path = "art_fisher_results",
        seeds: Sequence[int] | None = None,
        seed: int = 0,
    ) -> Any:
        """Run the evaluation on ``classifier``'s model (None: train one per seed).

        Parameters
        ----------
        classifier : art.estimators.classification.PyTorchClassifier, optional
            Its ``model`` is evaluated (its input shape must be the data set's); it is not modified.
        output_dir : str or Path
        seeds : sequence of int, optional
            Several seeds: the aggregated :class:`~art_fisher.evaluation.SeedsResult`.
        seed : int
            With ``seeds`` None: one run, an :class:`~art_fisher.evaluation.EvaluationResult`.

        Raises
        ------
        TypeError
            If ``classifier`` is not an ART ``PyTorchClassifier``.
        ValueError
            If its input shape differs from the data set's, or as :func:`art_fisher.evaluation.evaluate`.
        """
        net = None
        if classifier is not None:
            from art.estimators.classification import PyTorchClassifier

            if not isinstance(classifier, PyTorchClassifier):
                raise TypeError(f"classifier must be an ART PyTorchClassifier; got {type(classifier).__qualname__}.")
            data = load_dataset(self.settings["dataset"], data_dir=self.settings["data_dir"], split="test")
            if tuple(classifier.input_shape) != tuple(data.input_shape):
                raise ValueError(
                    f"classifier's input_shape {tuple(classifier.input_shape)} differs from the "
                    f"{self.settings['dataset']} images' {tuple(data.input_shape)}."
                )
            net = classifier.model
        if seeds is not None:
            return evaluate_seeds(
                seeds=seeds,
                output_dir=output_dir,
                extra_stages={"security_curve": security_curve_stage()},
                net=net,
                **self.settings,
            )
        plan = prepare(seed=seed, output_dir=output_dir, **self.settings)
        return run(plan if net is None else dataclasses.replace(plan, net=net))
