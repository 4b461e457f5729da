"""Multi-trial LeaSE: a policy over the space's choices, learnt from trials run by the NNI manager.

The one-shot LeaSE strategy (:mod:`nni_lease.oneshot`) trains a supernet and learns the architecture
``A`` by gradient descent inside one process, so NNI's web UI never sees it. Here the architecture is
instead a categorical *policy* over every choice of the model space, and each architecture sampled from
it is trained as one NNI trial (:func:`nni_lease.multitrial.evaluate_lease`: explainer, explanation,
listener). Like every NNI strategy and the web UI, this strategy reads a trial's ``default`` metric as
**higher is better**; the LeaSE trial reports the negated objective

.. math::

    r(A) = -J(A), \\qquad J(A) = L\\big(E^*(A), D_e^{val}\\big) + \\gamma \\,
    L\\big(W^*(\\delta^*(E^*(A))), D_a^{val}\\big),

(any evaluator whose ``default`` is higher-is-better, e.g. a validation accuracy, works the same), and
the policy moves toward architectures with a high metric by the score-function (REINFORCE) estimator of
:math:`\\nabla_\\theta \\, \\mathbb{E}_{A \\sim p_\\theta}[r(A)]` with a moving-average baseline ``b``: for
every choice ``k`` with logits :math:`\\theta_k` and sampled value ``a_k``,

.. math::

    \\theta_k \\leftarrow \\theta_k + \\eta \\, (r - b) \\, (\\mathrm{onehot}(a_k) - \\mathrm{softmax}(\\theta_k)),
    \\qquad b \\leftarrow \\beta b + (1 - \\beta) r.

The baseline starts at the first reward received, so the first result only sets the baseline.
This is the same estimator NNI's ``PolicyBasedRL`` uses, without its tianshou dependency.

Spaces with constraints (e.g. ``nni.mutable.ExpressionConstraint``): a sample that violates one is
skipped and another is drawn, as NNI's ``Random`` does (up to 500 draws in a row; then the search ends
with a message). Skipped samples are never trained and leave the policy unchanged.
"""

from __future__ import annotations

import logging
import math
import threading
from typing import Any

import numpy as np
from nni.mutable import Categorical, CategoricalMultiple, MutableAnnotation, SampleValidationError
from nni.nas.execution import ExecutionEngine
from nni.nas.execution.event import ModelEvent, ModelEventType
from nni.nas.space import ExecutableModelSpace, ModelStatus
from nni.nas.strategy.base import Strategy

from art_fisher.utils import check_int, check_real
from nni_lease._limits import MAX_RATE, MAX_SEED

logger = logging.getLogger(__name__)

_STATE_VERSION = 2  # 1: lower-is-better "objective" records, not loadable (the policy learnt the other way)

#: Draws in a row that may violate the space's constraints before the search gives up (NNI's ``Random``: 500).
MAX_INVALID_DRAWS = 500


def _softmax(logits: list[float]) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64)
    z = np.exp(z - z.max())
    return z / z.sum()


class LeaseMultiTrial(Strategy):
    """Multi-trial LeaSE strategy: REINFORCE over categorical choices; a larger ``default`` metric is better.

    Every trial's ``default`` metric is the reward and is **maximised**, as by every NNI 3.0 strategy and
    NNI's web UI ("Best metric", "Top trials"); ``list_models`` (and so ``export_top_models``)
    returns the best first. The LeaSE trial (:func:`nni_lease.multitrial.evaluate_lease`) reports the negated
    objective ``-(L_e^val + γ·L_a^val)`` as ``default``.

    Parameters
    ----------
    learning_rate : float
        Step size ``η`` of the policy-gradient update on the logits (> 0).
    baseline_decay : float
        ``β`` in the moving-average baseline, in ``[0, 1)``; 0 uses the previous reward as baseline.
    seed : int or None
        Seed of the sampler (a :class:`numpy.random.Generator`); its state is part of :meth:`state_dict`.

    Attributes
    ----------
    logits : dict of str to list of float
        One logit per candidate value for every choice label (empty before ``initialize``).
    baseline : float or None
        Current baseline ``b`` (``None`` until the first result arrives).
    history : list of dict
        ``{"trial": k, "sample": {label: value}, "metric": m or None, "status": ...}`` per finished
        trial, in the order results arrived (``metric``: the trial's ``default``, higher is better).

    Notes
    -----
    Supported choices: :class:`nni.mutable.Categorical` (``LayerChoice``, ``nni.choice``) and
    :class:`nni.mutable.CategoricalMultiple` with ``n_chosen=1`` (``InputChoice(n_chosen=1)``).
    Other mutables (numerical choices) are refused at ``initialize`` with a ValueError.
    A trial that fails or reports no final metric leaves the policy unchanged; the search goes on.
    Metric callbacks arrive on NNI's listener thread, so updates are guarded by a lock.
    :meth:`load_state_dict` may be called before ``initialize`` (the order NNI's ``Random`` and
    ``RegularizedEvolution`` accept): the state is checked and applied when the space is known.

    Examples
    --------
    >>> from nni.nas.experiment import NasExperiment
    >>> strategy = LeaseMultiTrial(learning_rate=0.5, seed=0)
    >>> # NasExperiment(space, FunctionalEvaluator(evaluate_lease, gamma=1.0), strategy).run(port=8080)
    """

    def __init__(self, *, learning_rate: float = 0.5, baseline_decay: float = 0.7, seed: int | None = None) -> None:
        check_real(learning_rate, "learning_rate", low=0.0, high=MAX_RATE, low_open=True)
        check_real(baseline_decay, "baseline_decay", low=0.0, high=1.0, high_open=True)
        check_int(seed, "seed", low=0, high=MAX_SEED, optional=True)
        super().__init__()
        self.learning_rate = float(learning_rate)
        self.baseline_decay = float(baseline_decay)
        self.seed = seed
        self._rng = np.random.default_rng(seed)
        self._lock = threading.RLock()
        self._choices: dict[str, Categorical | CategoricalMultiple] = {}
        self.logits: dict[str, list[float]] = {}
        self.baseline: float | None = None
        self.history: list[dict[str, Any]] = []
        self._n_submitted = 0
        self._n_updates = 0
        self._n_failed = 0
        self._n_invalid = 0
        self._running: dict[int, tuple[int, ExecutableModelSpace, dict[str, int]]] = {}
        self._pending_state: dict | None = None

    def extra_repr(self) -> str:
        return f"learning_rate={self.learning_rate}, baseline_decay={self.baseline_decay}, seed={self.seed}"

    # ------------------------------------------------------------------ NNI strategy seams
    def _initialize(self, model_space: ExecutableModelSpace, engine: ExecutionEngine) -> ExecutableModelSpace:
        choices: dict[str, Categorical | CategoricalMultiple] = {}
        for label, mutable in model_space.simplify().items():
            if isinstance(mutable, MutableAnnotation):
                continue
            if isinstance(mutable, CategoricalMultiple):
                if mutable.n_chosen != 1:
                    raise ValueError(
                        f"LeaseMultiTrial supports CategoricalMultiple only with n_chosen=1; choice {label!r} "
                        f"has n_chosen={mutable.n_chosen!r}."
                    )
            elif not isinstance(mutable, Categorical):
                raise ValueError(
                    f"LeaseMultiTrial supports only categorical choices (LayerChoice, InputChoice(n_chosen=1), "
                    f"nni.choice); choice {label!r} is a {type(mutable).__name__}."
                )
            choices[str(label)] = mutable  # a plain str: NNI labels are a str subclass torch.load rejects
        if not choices:
            raise ValueError("the model space has no categorical choice to search.")
        self._choices = choices
        self.logits = {label: [0.0] * len(mutable.values) for label, mutable in choices.items()}
        if self._pending_state is not None:
            pending, self._pending_state = self._pending_state, None
            self.load_state_dict(pending)
        engine.register_model_event_callback(ModelEventType.TrainingEnd, self._on_training_end)
        return model_space

    def _cleanup(self) -> None:
        self.engine.unregister_model_event_callback(ModelEventType.TrainingEnd, self._on_training_end)

    def _run(self) -> None:
        logger.info("LeaSE multi-trial search over %d choices: %s", len(self._choices), list(self._choices))
        while self.wait_for_resource():
            with self._lock:
                drawn = self._sample_valid_model()
                if drawn is None:
                    logger.warning(
                        "%d samples in a row violated the space's constraints; ending the search.", MAX_INVALID_DRAWS
                    )
                    break
                model, indices = drawn
                self._n_submitted += 1
                self._running[id(model)] = (self._n_submitted, model, indices)
            logger.info("[trial %d] submitting %s", self._n_submitted, model.sample)
            self.engine.submit_models(model)
        logger.info("No budget left; waiting for the running trials.")
        self.engine.wait_models()

    # ------------------------------------------------------------------ policy
    def probabilities(self) -> dict[str, dict[Any, float]]:
        """Current policy: for every choice label, the probability of each candidate value."""
        with self._lock:
            return {
                label: {self._value_key(label, i): float(p) for i, p in enumerate(_softmax(self.logits[label]))}
                for label in self.logits
            }

    def best_sample(self) -> dict[str, Any]:
        """The most probable architecture under the current policy (``{label: value}``, freezable)."""
        with self._lock:
            return {label: self._value(label, int(np.argmax(self.logits[label]))) for label in self.logits}

    def _value(self, label: str, index: int) -> Any:
        value = self._value_key(label, index)
        return [value] if isinstance(self._choices[label], CategoricalMultiple) else value

    def _value_key(self, label: str, index: int) -> Any:
        value = self._choices[label].values[index]
        return str(value) if isinstance(value, str) else value

    def _sample_model(self) -> tuple[ExecutableModelSpace, dict[str, int]]:
        indices = {
            label: int(self._rng.choice(len(logits), p=_softmax(logits))) for label, logits in self.logits.items()
        }
        sample = {label: self._value(label, i) for label, i in indices.items()}
        return self.model_space.freeze(sample), indices

    def _sample_valid_model(self) -> tuple[ExecutableModelSpace, dict[str, int]] | None:
        """Draw until a sample satisfies the space's constraints (as NNI's ``Random``); ``None`` if none did."""
        for _ in range(MAX_INVALID_DRAWS):
            try:
                return self._sample_model()
            except SampleValidationError as exc:
                self._n_invalid += 1
                logger.debug("Skipping a sample that violates the space's constraints: %s", exc)
        return None

    def _update(self, indices: dict[str, int], reward: float) -> None:
        if self.baseline is None:
            self.baseline = reward
            return
        advantage = reward - self.baseline
        for label, index in indices.items():
            probs = _softmax(self.logits[label])
            grad = -probs
            grad[index] += 1.0
            self.logits[label] = [
                float(v) for v in np.asarray(self.logits[label]) + self.learning_rate * advantage * grad
            ]
        self.baseline = self.baseline_decay * self.baseline + (1.0 - self.baseline_decay) * reward
        self._n_updates += 1

    def _on_training_end(self, event: ModelEvent) -> None:
        with self._lock:
            entry = self._running.pop(id(event.model), None)
            if entry is None:
                logger.debug("Ignoring the end of a model this strategy did not submit: %s", event.model)
                return
            trial, model, indices = entry
            metric = model.metric
            status = getattr(event, "status", model.status)
            record = {
                "trial": trial,
                "sample": {k: self._value(k, i) for k, i in indices.items()},
                "metric": None,
                "status": str(getattr(status, "value", status)),
            }
            if status != ModelStatus.Trained or metric is None or not math.isfinite(float(metric)):
                self._n_failed += 1
                logger.warning(
                    "[trial %d] ended with status %s and metric %r: the policy is not updated.",
                    trial,
                    record["status"],
                    metric,
                )
            else:
                record["metric"] = float(metric)
                self._update(indices, float(metric))
                logger.info("[trial %d] metric %.4f, baseline %s", trial, float(metric), self.baseline)
            self.history.append(record)

    def best_trial(self) -> dict[str, Any] | None:
        """The history record with the largest metric (``None`` before any trial gave one)."""
        with self._lock:
            scored = [r for r in self.history if r["metric"] is not None]
            return max(scored, key=lambda r: r["metric"], default=None)

    # ------------------------------------------------------------------ checkpointing
    def state_dict(self) -> dict:
        """Plain-Python state (loads with ``torch.load(weights_only=True)``, which NNI's checkpoint uses).

        Running trials are not part of the state: their results are lost if the experiment stops
        before they end (NNI 3.0 behaves the same for its built-in strategies). ``n_submitted`` counts
        every model sent to NNI, which can exceed the trials NNI ran: when the budget runs out, NNI may
        still ask for one more model before it reports that no trial is left.
        """
        with self._lock:
            return {
                "version": _STATE_VERSION,
                "logits": {k: list(v) for k, v in self.logits.items()},
                "baseline": self.baseline,
                "history": [dict(r) for r in self.history],
                "n_submitted": self._n_submitted,
                "n_updates": self._n_updates,
                "n_failed": self._n_failed,
                "n_invalid": self._n_invalid,
                "rng_state": self._rng.bit_generator.state,
            }

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore :meth:`state_dict` before ``run``.

        After ``initialize`` it is checked against the space and applied at once; before it, it is
        kept and applied (and checked) at the end of ``initialize``.

        Raises
        ------
        ValueError
            If the state is not one of this class's, or does not match the model space's choices.
        """
        if not isinstance(state_dict, dict) or state_dict.get("version") != _STATE_VERSION:
            raise ValueError(
                f"state_dict must come from LeaseMultiTrial.state_dict() (version {_STATE_VERSION}); "
                f"got {type(state_dict).__name__} with version "
                f"{state_dict.get('version') if isinstance(state_dict, dict) else None!r}."
            )
        if not self._choices:
            self._pending_state = dict(state_dict)
            return
        logits = state_dict["logits"]
        if {k: len(v) for k, v in logits.items()} != {k: len(v) for k, v in self.logits.items()}:
            raise ValueError(
                "state_dict['logits'] does not match the model space's choices: expected "
                f"{ {k: len(v) for k, v in self.logits.items()} }, got "
                f"{ {k: len(v) for k, v in logits.items()} }."
            )
        with self._lock:
            self.logits = {k: [float(x) for x in v] for k, v in logits.items()}
            self.baseline = None if state_dict["baseline"] is None else float(state_dict["baseline"])
            self.history = [dict(r) for r in state_dict["history"]]
            self._n_submitted = int(state_dict["n_submitted"])
            self._n_updates = int(state_dict["n_updates"])
            self._n_failed = int(state_dict["n_failed"])
            self._n_invalid = int(state_dict.get("n_invalid", 0))
            self._rng.bit_generator.state = state_dict["rng_state"]
