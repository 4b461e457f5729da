"""Tests of the LeaSE trial code (one explainer architecture: explainer, PGD explanation, listener)."""

from __future__ import annotations

import nni
import pytest
import torch
import torch.nn.functional as F

from nni_lease._data import DigitsDataset
from nni_lease._spaces import LeaseCellSpace
from nni_lease.multitrial._trial import check_trial_arguments, evaluate_lease, lease_evaluator
from tests.nni_lease._toy_space import DigitsToySpace

TINY = {"epochs": 2, "limit_batches": 3, "batch_size": 32, "limit": 96, "pgd_steps": 2}


@pytest.fixture
def reports(monkeypatch):
    """Capture nni.report_intermediate_result / report_final_result."""
    captured = {"intermediate": [], "final": []}
    monkeypatch.setattr(nni, "report_intermediate_result", captured["intermediate"].append)
    monkeypatch.setattr(nni, "report_final_result", captured["final"].append)
    return captured


def _cell_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    space = LeaseCellSpace(width=4, cells=1, nodes=2)
    return space.freeze({"op0": "conv_3x3", "op1": "skip_connect", "input1": [0]})


def test_reports_every_epoch_and_the_objective(reports):
    result = evaluate_lease(_cell_model(), gamma=0.5, **TINY)
    assert [m["epoch"] for m in reports["intermediate"]] == [1, 2]
    assert reports["final"] == [result] and reports["intermediate"][-1] == result
    for m in reports["intermediate"]:
        # NNI's convention: larger is better, so default is the negated objective
        assert m["lease_objective"] == pytest.approx(m["explainer_val_loss"] + 0.5 * m["listener_val_loss"], rel=1e-12)
        assert m["default"] == -m["lease_objective"]
        assert 0.0 <= m["explainer_accuracy"] <= 1.0 and 0.0 <= m["listener_accuracy"] <= 1.0
        assert m["explainer_val_loss"] > 0 and m["listener_val_loss"] > 0


def test_explainer_loss_matches_a_direct_computation(reports):
    """The reported L_e^val is the mean cross entropy of the trained explainer on the validation split."""
    model = DigitsToySpace().freeze({"op": "linear"})
    result = evaluate_lease(model, gamma=0.0, **TINY)
    val = DigitsDataset("val", seed=0, limit=TINY["limit"])
    model.eval()
    with torch.no_grad():
        logits = model(val.x.double().float())
        loss = F.cross_entropy(logits.double(), val.y).item()
        acc = (logits.argmax(1) == val.y).double().mean().item()
    assert result["explainer_val_loss"] == pytest.approx(loss, rel=1e-5)
    assert result["explainer_accuracy"] == pytest.approx(acc)
    assert result["default"] == -result["explainer_val_loss"]  # gamma = 0: plain explainer objective


def test_a_useless_explainer_scores_clearly_worse(reports):
    """The objective separates a dead explainer (constant logits: loss ln 10) from a learning one."""
    dead = evaluate_lease(DigitsToySpace().freeze({"op": "dead"}), learning_rate=0.05, **TINY)
    linear = evaluate_lease(DigitsToySpace().freeze({"op": "linear"}), learning_rate=0.05, **TINY)
    assert dead["explainer_val_loss"] == pytest.approx(torch.log(torch.tensor(10.0)).item(), rel=1e-6)
    assert linear["default"] > dead["default"] + 0.5  # higher is better


def test_seeded_and_leaves_the_global_rng_alone(reports):
    model = _cell_model()
    state = torch.get_rng_state()
    first = evaluate_lease(model, seed=3, **TINY)
    assert torch.equal(torch.get_rng_state(), state)
    second = evaluate_lease(_cell_model(), seed=3, **TINY)
    assert first == second


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"gamma": -1.0}, "gamma"),
        ({"epochs": 0}, "epochs"),
        ({"pgd_steps": 0}, "pgd_steps"),
        ({"pgd_epsilon": 0.0}, "pgd_epsilon"),
        ({"dataset": "mnist"}, "dataset"),
        ({"dataset": "cifar10"}, "data_dir"),
        ({"limit_batches": 0}, "limit_batches"),
        ({"limit": 0}, "limit"),
        ({"learning_rate": float("inf")}, "learning_rate"),
        ({"device": "tpu"}, "device"),
        ({"seed": -1}, "seed"),
        ({"pgd_norm": "l3"}, "pgd_norm"),
        ({"hypergradient": "unrolled"}, "takes the LeaSE settings"),
    ],
)
def test_bad_arguments_fail_before_any_work(kwargs, match, reports):
    with pytest.raises(ValueError, match=match):
        check_trial_arguments(**kwargs)
    with pytest.raises(ValueError, match=match):
        lease_evaluator(**kwargs)
    model = _cell_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=match):
        evaluate_lease(model, **kwargs)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert reports["intermediate"] == [] and reports["final"] == []


def test_evaluator_is_trace_safe():
    """NNI serialises the evaluator into each trial's parameters (64 KB limit): small, and it round-trips."""
    evaluator = lease_evaluator(gamma=0.5, **TINY)
    dumped = nni.dump(evaluator)
    assert len(dumped) < 2000
    loaded = nni.load(dumped)
    assert loaded.function is evaluate_lease and loaded.arguments == evaluator.arguments


def test_the_trial_runs_the_shared_lease_step(reports, monkeypatch):
    """Every training batch goes through LeaseStep.train_listener (the strategy's code); validation is scored
    on explanations by the trained explainer in eval mode."""
    import nni_lease.core._step as step_module

    calls, steps = [], []
    real_explain, real_train = step_module.pgd_explain, step_module.LeaseStep.train_listener

    def spy(model, x, **kwargs):
        calls.append((model.training, x.shape[0], kwargs["epsilon"], kwargs["step_size"], kwargs["steps"]))
        return real_explain(model, x, **kwargs)

    def train_spy(self, explainer, x, y, **kwargs):
        steps.append(len(y))
        return real_train(self, explainer, x, y, **kwargs)

    monkeypatch.setattr(step_module, "pgd_explain", spy)
    monkeypatch.setattr(step_module.LeaseStep, "train_listener", train_spy)
    evaluate_lease(_cell_model(), pgd_epsilon=0.1, **TINY)
    per_epoch = TINY["limit_batches"] + 1  # training batches, then the validation set (96 < 256: one batch)
    assert steps == [TINY["batch_size"]] * (TINY["limit_batches"] * TINY["epochs"])
    assert len(calls) == TINY["epochs"] * per_epoch
    assert [training for training, *_ in calls[:per_epoch]] == [True] * TINY["limit_batches"] + [False]
    assert [n for _, n, *_ in calls[:per_epoch]] == [TINY["batch_size"]] * TINY["limit_batches"] + [TINY["limit"]]
    assert {c[2:] for c in calls} == {(0.1, 2.5 * 0.1 / TINY["pgd_steps"], TINY["pgd_steps"])}
