"""Several seeds (aggregation as mean ± sd) and the detection-aware security curve (an ART Evaluation)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from art.evaluations.evaluation import Evaluation

from art_fisher.evaluation.security_curve import DetectionSecurityCurve, robust_accuracy
from art_fisher.evaluation.seeds import aggregate, format_mean_sd, parse_seeds


def test_parse_seeds():
    assert parse_seeds("0, 1,2") == (0, 1, 2)
    assert parse_seeds([3]) == (3,)
    for bad in ("0,0", "", "1,x", "-1", [True]):
        with pytest.raises(ValueError, match="seeds"):
            parse_seeds(bad)


def test_aggregate_is_mean_and_sample_sd_per_group_ignoring_nan():
    seeds = [
        [{"detector": "a", "attack": "p", "roc_auc": 0.8}, {"detector": "b", "attack": "p", "roc_auc": 0.6}],
        [{"detector": "a", "attack": "p", "roc_auc": 0.9}, {"detector": "b", "attack": "p", "roc_auc": float("nan")}],
        [{"detector": "a", "attack": "p", "roc_auc": 1.0}],
    ]
    rows = aggregate(seeds, ("detector", "attack"), ("roc_auc",))
    assert [r["detector"] for r in rows] == ["a", "b"]
    assert rows[0]["roc_auc_mean"] == pytest.approx(0.9) and rows[0]["roc_auc_sd"] == pytest.approx(0.1)
    assert rows[0]["n_seeds"] == 3 and rows[0]["roc_auc_n"] == 3
    assert rows[1]["roc_auc_mean"] == pytest.approx(0.6) and rows[1]["roc_auc_sd"] == 0.0 and rows[1]["roc_auc_n"] == 1
    assert format_mean_sd(rows[0], "roc_auc") == "0.900 ± 0.100"
    assert format_mean_sd(rows[1], "roc_auc") == "0.600"
    assert format_mean_sd({"x_mean": math.nan}, "x") == "n/a"


def test_robust_accuracy_counts_caught_attacks_and_false_alarms():
    correct = np.array([True, True, False, False])
    flagged = np.array([True, False, True, False])
    assert robust_accuracy(correct, flagged, attacked=False) == 0.25  # clean: right and not flagged
    assert robust_accuracy(correct, flagged, attacked=True) == 0.75  # attacked: right or caught


def test_detection_security_curve_is_an_art_evaluation_and_reduces_to_art_without_flags():
    from art.estimators.classification import PyTorchClassifier
    from art.evaluations.security_curve.security_curve import SecurityCurve

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(9, 6), torch.nn.Tanh(), torch.nn.Linear(6, 4))
    clf = PyTorchClassifier(model.eval(), torch.nn.CrossEntropyLoss(), (1, 3, 3), 4, clip_values=(0.0, 1.0))
    x = np.random.default_rng(1).uniform(0.1, 0.9, size=(40, 1, 3, 3)).astype(np.float32)
    y = clf.predict(x).argmax(1)
    curve = DetectionSecurityCurve(eps=[0.05, 0.3], target_fpr=0.1)
    assert isinstance(curve, Evaluation)

    def never(xx: np.ndarray) -> np.ndarray:
        return np.zeros(len(xx))

    torch.manual_seed(0)
    eps, acc, clean = curve.evaluate(clf, x, y, score_fn=never, x_calibration=x[:10])
    art_acc = []
    for budget in (0.05, 0.3):  # ART's curve takes one step size for every budget; ours is eps / 8
        _, (acc_b,), art_clean = SecurityCurve(eps=[budget]).evaluate(
            clf, x, np.eye(4)[y], norm=np.inf, eps_step=budget / 8, max_iter=20, num_random_init=0, verbose=False
        )
        art_acc.append(acc_b)
    assert eps == [0.05, 0.3] and clean == pytest.approx(art_clean) == 1.0
    assert acc[0] <= 1.0 and acc[1] <= acc[0]
    assert acc == pytest.approx(art_acc)  # a detector that never flags leaves ART's curve unchanged

    # a score that flags exactly the perturbed inputs: every attacked image is caught, no false alarm
    def moved(xx: np.ndarray) -> np.ndarray:
        return np.abs(xx - x).reshape(len(xx), -1).max(1)

    _, acc_moved, clean_moved = curve.evaluate(clf, x, y, score_fn=moved, x_calibration=x[:40])
    assert clean_moved == 1.0 and acc_moved == [1.0, 1.0]
    with pytest.raises(ValueError, match="target_fpr"):
        DetectionSecurityCurve(eps=[0.1], target_fpr=0.0).evaluate(clf, x, y, score_fn=never, x_calibration=x)


@pytest.mark.slow
def test_evaluate_seeds_aggregates_the_runs_and_the_cli_runs_it(tmp_path):
    from art_fisher.cli import main
    from art_fisher.evaluation.security_curve import security_curve_stage
    from art_fisher.evaluation.seeds import evaluate_seeds

    tiny = {"attacks": ["fgsm"], "detectors": ["max_softmax", "energy_clean"], "n_samples": 24, "epochs": 2}
    result = evaluate_seeds(
        seeds="0,1", output_dir=tmp_path / "agg", extra_stages={"security_curve": security_curve_stage()}, **tiny
    )
    assert [r.settings["seed"] for r in result.runs] == [0, 1]
    row = next(r for r in result.table if r["detector"] == "max_softmax" and r["fit_attack"] == "fgsm")
    per_seed = [next(t["roc_auc"] for t in r.table if t["detector"] == "max_softmax") for r in result.runs]
    assert row["roc_auc_mean"] == pytest.approx(np.mean(per_seed))
    assert row["roc_auc_sd"] == pytest.approx(np.std(per_seed, ddof=1))
    curve = result.extra["security_curve"]
    assert {r["detector"] for r in curve} == {"none", "max_softmax", "energy_clean"}
    assert all(r["n_seeds"] == 2 for r in curve)
    text = result.paths["report_md"].read_text()
    assert "±" in text and "## security_curve" in text and result.paths["unseen_auc"].is_file()
    assert (tmp_path / "agg" / "seed_1" / "report.md").is_file()
    code = main(["evaluate", "--seeds", "0,1", "--attacks", "fgsm", "--detectors", "max_softmax", "--n-samples", "16",
                 "--epochs", "2", "--output", str(tmp_path / "cli"), "--quiet"])  # fmt: skip
    assert code == 0 and (tmp_path / "cli" / "results.json").is_file()
    assert main(["evaluate", "--seeds", "0,0", "--output", str(tmp_path / "bad"), "--quiet"]) == 2


@pytest.mark.slow
def test_the_evaluation_as_an_art_evaluation_on_a_given_classifier(tmp_path):
    from art.estimators.classification import PyTorchClassifier

    from art_fisher.data.loaders import load_digits
    from art_fisher.evaluation.art_evaluation import DetectionEvaluation
    from art_fisher.models import SmallCNN, train_model

    train = load_digits(split="train")
    net = train_model(SmallCNN(), train.x, train.y, epochs=3, seed=0)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    clf = PyTorchClassifier(net, torch.nn.CrossEntropyLoss(), (1, 8, 8), 10, clip_values=(0.0, 1.0))
    evaluation = DetectionEvaluation(attacks=["fgsm"], detectors=["max_softmax", "energy_clean"], n_samples=20)
    assert isinstance(evaluation, Evaluation)
    one = evaluation.evaluate(clf, output_dir=tmp_path / "one", seed=2)
    assert one.settings["model_status"] == "given" and one.settings["seed"] == 2 and one.security_curve
    several = evaluation.evaluate(clf, output_dir=tmp_path / "many", seeds=[0, 1])
    assert len(several.runs) == 2 and all(r.settings["model_status"] == "given" for r in several.runs)
    for key, value in net.state_dict().items():
        assert torch.equal(value, before[key])  # the user's model comes back untouched
    wrong = PyTorchClassifier(net, torch.nn.CrossEntropyLoss(), (1, 28, 28), 10)
    with pytest.raises(ValueError, match="input_shape"):
        evaluation.evaluate(wrong, output_dir=tmp_path / "bad")
    with pytest.raises(TypeError, match="PyTorchClassifier"):
        evaluation.evaluate(object(), output_dir=tmp_path / "bad")


def test_evaluate_seeds_loads_the_data_once_and_runs_the_seeds_one_after_another(tmp_path, monkeypatch):
    """Before: every seed's run was prepared up front, each with its own copy of the data set."""
    from art_fisher.evaluation import workflow
    from art_fisher.evaluation.seeds import evaluate_seeds

    loads, runs = [], []
    real_load = workflow.load_dataset

    def counting_load(*args, **kwargs):
        loads.append(kwargs.get("split"))
        return real_load(*args, **kwargs)

    class _Stop(Exception):
        pass

    def recording_run(plan):
        runs.append((plan.seed, plan.output_dir.name, id(plan.train), len(loads)))
        if len(runs) == 3:
            raise _Stop

    monkeypatch.setattr(workflow, "load_dataset", counting_load)
    monkeypatch.setattr(workflow, "run", recording_run)
    with pytest.raises(_Stop):
        evaluate_seeds(seeds="4,0,7", output_dir=tmp_path, attacks=["fgsm"], detectors=["max_softmax"], n_samples=8)
    assert loads == ["train", "test"]  # one load of each split, before the first run
    assert [r[:2] for r in runs] == [(4, "seed_4"), (0, "seed_0"), (7, "seed_7")]
    assert len({r[2] for r in runs}) == 1 and all(r[3] == 2 for r in runs)
    with pytest.raises(ValueError, match="seeds must be integers from 0 to 4294967295"):
        evaluate_seeds(seeds=[0, 2**40], output_dir=tmp_path / "big", attacks=["fgsm"])
    assert loads == ["train", "test"]  # refused before any data was read
