"""Tests of the multi-trial LeaSE strategy on a toy space, with NNI's in-process sequential engine."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from nni.nas.evaluator import FunctionalEvaluator
from nni.nas.execution import SequentialExecutionEngine
from nni.nas.space import SimplifiedModelSpace

from nni_lease.multitrial._strategy import LeaseMultiTrial
from tests.nni_lease._toy_space import OBJECTIVES, ToySpace, evaluate_toy


def _run(strategy: LeaseMultiTrial, n_models: int, **evaluator_kwargs) -> SequentialExecutionEngine:
    space = SimplifiedModelSpace.from_model(ToySpace(), FunctionalEvaluator(evaluate_toy, **evaluator_kwargs))
    engine = SequentialExecutionEngine(max_model_count=n_models, continue_on_failure=True)
    strategy(space, engine)
    return engine


def test_logits_move_toward_the_highest_metric():
    strategy = LeaseMultiTrial(learning_rate=1.0, seed=0)
    _run(strategy, 40)
    probs = strategy.probabilities()
    assert len(strategy.history) == 40
    assert probs["op"]["relu"] == max(probs["op"].values())
    assert probs["op"]["relu"] > 0.6
    # Input 1 costs +0.5 whatever the op.
    assert probs["inp"][0] > probs["inp"][1]
    assert strategy.best_sample() == {"op": "relu", "inp": [0]}
    # NNI's convention: list_models (and export_top_models) give the largest metric first.
    metrics = [m.metric for m in strategy.list_models()]
    assert metrics == sorted(metrics, reverse=True) and metrics[0] == pytest.approx(-OBJECTIVES["relu"])
    assert strategy.best_trial()["metric"] == metrics[0]


def test_update_is_the_score_function_step_with_baseline():
    strategy = LeaseMultiTrial(learning_rate=0.5, baseline_decay=0.5, seed=1)
    _run(strategy, 6)
    # Replay the recorded history with the documented update rule, in float64.
    logits = {"op": np.zeros(3), "inp": np.zeros(2)}
    index = {"op": {"identity": 0, "relu": 1, "tanh": 2}, "inp": {0: 0, 1: 1}}
    baseline = None
    for record in strategy.history:
        r = record["metric"]
        if baseline is None:
            baseline = r
            continue
        for label, value in record["sample"].items():
            value = value[0] if isinstance(value, list) else value
            p = np.exp(logits[label]) / np.exp(logits[label]).sum()
            onehot = np.eye(len(p))[index[label][value]]
            logits[label] = logits[label] + 0.5 * (r - baseline) * (onehot - p)
        baseline = 0.5 * baseline + 0.5 * r
    for label in logits:
        np.testing.assert_allclose(strategy.logits[label], logits[label], rtol=1e-12, atol=1e-12)
    assert strategy.baseline == pytest.approx(baseline, rel=1e-12)


def test_crashing_trial_is_failed_and_search_goes_on():
    strategy = LeaseMultiTrial(learning_rate=1.0, seed=0)
    engine = _run(strategy, 12, fail_op="relu")
    statuses = [r["status"] for r in strategy.history]
    assert len(statuses) == 12
    assert "failed" in statuses and "trained" in statuses
    assert all(r["metric"] is None for r in strategy.history if r["status"] == "failed")
    assert strategy.state_dict()["n_failed"] == statuses.count("failed")
    assert len(list(engine.list_models())) == 12


def test_state_dict_round_trip_continues_the_same_search(tmp_path):
    first = LeaseMultiTrial(seed=3)
    _run(first, 5)
    state = first.state_dict()
    # NNI checkpoints the strategy with torch.save/torch.load; the state must load with weights_only=True.
    torch.save(state, tmp_path / "state.ckpt")
    loaded = torch.load(tmp_path / "state.ckpt", weights_only=True)

    resumed = LeaseMultiTrial(seed=3)
    space = SimplifiedModelSpace.from_model(ToySpace(), FunctionalEvaluator(evaluate_toy))
    resumed.initialize(space, SequentialExecutionEngine(max_model_count=3, continue_on_failure=True))
    resumed.load_state_dict(loaded)
    assert resumed.logits == first.logits and resumed.history == first.history
    resumed.run()
    assert [r["trial"] for r in resumed.history] == list(range(1, 9))

    # The same 8 trials in one go give the same policy: resuming continued the sampler and the baseline.
    straight = LeaseMultiTrial(seed=3)
    _run(straight, 8)
    assert [r["sample"] for r in straight.history] == [r["sample"] for r in resumed.history]
    assert straight.logits == resumed.logits


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"learning_rate": 0}, "learning_rate"),
        ({"learning_rate": float("nan")}, "learning_rate"),
        ({"baseline_decay": 1.0}, "baseline_decay"),
        ({"seed": -1}, "seed"),
    ],
)
def test_bad_arguments_are_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LeaseMultiTrial(**kwargs)


def test_load_state_dict_rejects_a_foreign_state():
    strategy = LeaseMultiTrial()
    space = SimplifiedModelSpace.from_model(ToySpace(), FunctionalEvaluator(evaluate_toy))
    strategy.initialize(space, SequentialExecutionEngine(max_model_count=1))
    with pytest.raises(ValueError, match="state_dict"):
        strategy.load_state_dict({"population": []})
    bad = strategy.state_dict()
    bad["logits"] = {"op": [0.0, 0.0]}
    with pytest.raises(ValueError, match="does not match"):
        strategy.load_state_dict(bad)


def test_load_state_dict_before_initialize_is_kept():
    """NNI's Random / Evolution resume order: load_state_dict, then initialize (via __call__)."""
    first = LeaseMultiTrial(seed=3)
    _run(first, 5)
    resumed = LeaseMultiTrial(seed=3)
    resumed.load_state_dict(first.state_dict())
    _run(resumed, 3)  # initialize + run on a fresh engine: continues from the loaded state
    straight = LeaseMultiTrial(seed=3)
    _run(straight, 8)
    assert [r["sample"] for r in resumed.history] == [r["sample"] for r in straight.history]
    assert resumed.logits == straight.logits
    wrong = LeaseMultiTrial()
    bad = first.state_dict()
    bad["logits"] = {"op": [0.0, 0.0]}
    wrong.load_state_dict(bad)  # not checkable yet: checked when the space is known
    with pytest.raises(ValueError, match="does not match"):
        _run(wrong, 1)
