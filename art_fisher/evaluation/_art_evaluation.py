"""The evaluation as an ART ``Evaluation``: attack a classifier, fit every detector, measure at one operating point.

:class:`DetectionEvaluation` follows ART's :class:`art.evaluations.evaluation.Evaluation` (settings in the
constructor, the work in ``evaluate``), as ART's ``SecurityCurve`` does: ``evaluate(classifier)`` runs
the protocol of :mod:`art_fisher.evaluation` on an ART ``PyTorchClassifier`` (or on a model
trained here when ``classifier`` is None), over one seed or several, and returns the
:class:`~art_fisher.evaluation.EvaluationResult` or the aggregated
:class:`~art_fisher.evaluation.SeedsResult` (with the detection-aware security curve).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from art.evaluations.evaluation import Evaluation

from art_fisher.evaluation._config import EvaluationConfig, config_of
from art_fisher.evaluation._seeds import evaluate_seeds
from art_fisher.evaluation._user_inputs import check_classifier, user_datasets
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
    >>> result = evaluation.evaluate(classifier, x, y, x_reference=x_train, output_dir="out")  # doctest: +SKIP
    >>> result = evaluation.evaluate(classifier, output_dir="out", seeds=[0, 1, 2])  # doctest: +SKIP
    >>> result.summary[0]["unseen_auc_mean"]                                         # doctest: +SKIP
    """

    def __init__(self, config: EvaluationConfig | None = None, /, **settings: Any) -> None:
        self.config = config_of(config, settings)

    def evaluate(
        self,
        classifier: Any = None,
        x: np.ndarray | None = None,
        y: np.ndarray | None = None,
        *,
        x_reference: np.ndarray | None = None,
        output_dir: str | Path = "art_fisher_results",
        seeds: Sequence[int] | None = None,
        seed: int = 0,
    ) -> Any:
        """Run the evaluation on ``classifier`` and the images ``x``, ``y`` (or the configured data set).

        Parameters
        ----------
        classifier : art.estimators.classification.PyTorchClassifier, optional
            Used as given: its preprocessing, clip values and class count; its model is evaluated in eval mode
            and comes back with its modes, ``requires_grad`` flags and gradients as they were. None: a model
            of ``arch`` is trained per seed on the configured ``dataset``.
        x : ndarray of shape (N, *classifier.input_shape), optional
            The user's clean images, inside the classifier's ``clip_values``. None: the configured ``dataset``
            (its test split is attacked, its training split is the reference).
        y : ndarray of shape (N,) or (N, nb_classes), optional
            Integer labels or one-hot rows of ``x``.
        x_reference : ndarray of shape (M, *classifier.input_shape), optional
            Clean images (e.g. from the classifier's training set) for the reference statistics of the
            Mahalanobis, LID and stacked detectors. None: 20 % of ``x`` (at least 10 images), drawn with
            ``seed`` (the first of ``seeds``), is set aside for them and never attacked or scored.
        output_dir : str or Path
        seeds : sequence of int, optional
            Several seeds: the aggregated :class:`~art_fisher.evaluation.SeedsResult`.
        seed : int
            With ``seeds`` None: one run, an :class:`~art_fisher.evaluation.EvaluationResult`.

        Raises
        ------
        TypeError
            If ``classifier`` is not an ART ``PyTorchClassifier``, or ``x`` / ``y`` are not numpy arrays.
        ValueError
            If the classifier takes channels-last inputs, ``x`` does not match its ``input_shape`` or
            ``clip_values``, ``y`` its ``nb_classes``, the configured data set its input shape or class
            count; or as :func:`art_fisher.evaluation.evaluate`.
        """
        changes: dict[str, Any] = {"output_dir": output_dir}
        if classifier is not None:
            check_classifier(classifier)
            changes["classifier"] = classifier
        if x is None:
            if y is not None or x_reference is not None:
                raise ValueError("y and x_reference come with x; got x=None.")
        else:
            if classifier is None or y is None:
                raise ValueError("x needs its labels y and the classifier to evaluate.")
            first = seed if seeds is None else next(iter(seeds), seed)
            reference, test, _ = user_datasets(classifier, x, y, x_reference, seed=first)
            changes.update(data=(reference, test), data_dir=None)
        config = self.config.replace(**changes)
        if seeds is not None:
            return evaluate_seeds(config, seeds=seeds)
        return run_plan(prepare(config, seed=seed))
