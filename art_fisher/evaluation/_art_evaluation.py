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

from art.estimators.classification import PyTorchClassifier
from art.evaluations.evaluation import Evaluation

from art_fisher.data._loaders import load_dataset
from art_fisher.evaluation._config import EvaluationConfig, config_of
from art_fisher.evaluation._seeds import evaluate_seeds
from art_fisher.evaluation._workflow import prepare, run_plan


class DetectionEvaluation(Evaluation):
    """ART ``Evaluation`` of adversarial-example detectors (the art-fisher protocol).

    Parameters
    ----------
    config : EvaluationConfig, optional
        The settings of the runs (its ``seed`` and ``output_dir`` are set by :meth:`evaluate`).
    **settings
        Keywords of :class:`~art_fisher.evaluation.EvaluationConfig`, applied on top of ``config``.

    Examples
    --------
    >>> evaluation = DetectionEvaluation(dataset="digits", attacks=["fgsm", "pgd"], target_fpr=0.05)  # doctest: +SKIP
    >>> result = evaluation.evaluate(classifier, output_dir="out", seeds=[0, 1, 2])  # doctest: +SKIP
    >>> result.summary[0]["unseen_auc_mean"]                                         # doctest: +SKIP
    """

    def __init__(self, config: EvaluationConfig | None = None, /, **settings: Any) -> None:
        self.config = config_of(config, settings)

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
        config = self.config.replace(output_dir=output_dir)
        net = None
        if classifier is not None:
            if not isinstance(classifier, PyTorchClassifier):
                raise TypeError(f"classifier must be an ART PyTorchClassifier; got {type(classifier).__qualname__}.")
            data = load_dataset(config.dataset, data_dir=config.data_dir, split="test")
            if tuple(classifier.input_shape) != tuple(data.input_shape):
                raise ValueError(
                    f"classifier's input_shape {tuple(classifier.input_shape)} differs from the "
                    f"{config.dataset} images' {tuple(data.input_shape)}."
                )
            net = classifier.model
        if seeds is not None:
            return evaluate_seeds(config, seeds=seeds, net=net)
        plan = prepare(config, seed=seed)
        return run_plan(plan if net is None else dataclasses.replace(plan, net=net))
