"""The adaptive-attack stage of the evaluation (``evaluate(..., adaptive=True)``) on a tiny digits run."""

from __future__ import annotations

import csv
import json
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from art_fisher.data._loaders import load_digits
from art_fisher.evaluation import DEFAULT_DETECTORS, DETECTORS, evaluate, prepare
from art_fisher.evaluation._attacks import ADAPTIVE_ATTACKS, STEPS, THREAT_MODEL, adaptive_detectors
from art_fisher.models._architectures import SmallCNN, train_model

DETECTORS_HERE = ["fisher_trace", "fisher_trace_clean", "max_softmax"]


@pytest.fixture(scope="module")
def adaptive_run(tmp_path_factory):
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    train = load_digits(split="train")
    net = train_model(SmallCNN(), train.x, train.y, epochs=6, seed=0)
    out = tmp_path_factory.mktemp("adaptive")
    torch.save(net.state_dict(), out / "model.pt")
    result = evaluate(
        model=out / "model.pt",
        attacks=["pgd"],
        detectors=DETECTORS_HERE,
        n_samples=12,
        seed=2,
        target_fpr=0.2,
        output_dir=out / "run",
        adaptive=True,
    )
    torch.set_num_threads(before)
    return result, out / "run"


def test_every_differentiable_detector_is_attacked_and_reported(adaptive_run):
    result, out = adaptive_run
    rows = result.adaptive
    assert [(r["detector"], r["attack"]) for r in rows] == [(d, a) for d in DETECTORS_HERE for a in ADAPTIVE_ATTACKS]
    for r in rows:
        assert r["fit_attack"] == ("clean" if r["detector"].endswith("_clean") else "pgd")
        assert r["steps"] == STEPS and r["n_attacked"] == 6  # the detector-test side
        assert 0 <= r["evasion_rate"] <= r["success_rate"] <= 1
        assert np.isfinite([r["loss_start"], r["loss_half"], r["loss_final"]]).all()
        assert r["loss_final"] >= r["loss_start"]  # PGD ascended the attacker's loss
    eps = {r["attack"]: r["eps"] for r in rows}
    assert eps == {"pgd_linf": pytest.approx(0.2), "pgd_l2": pytest.approx(0.2 * 8 / 4)}
    saved = json.loads((out / "results.json").read_text())
    assert len(saved["adaptive"]) == len(rows) and saved["settings"]["adaptive_detectors"] == DETECTORS_HERE
    with open(out / "adaptive.csv", newline="") as fh:
        assert len(list(csv.DictReader(fh))) == len(rows)
    report = (out / "report.md").read_text()
    assert "## Adaptive attacks" in report and THREAT_MODEL in report
    assert "Adaptive attacks" in result.format_table()


def test_non_differentiable_detectors_are_refused_before_any_work(tmp_path):
    out = tmp_path / "never"
    with pytest.raises(ValueError, match=r"fisher_sensitivity: no input gradient through the statistics"):
        prepare(detectors=["fisher_trace", "fisher_sensitivity"], adaptive=True, output_dir=out)
    with pytest.raises(ValueError, match="subset_scanning: no input gradient"):
        prepare(detectors=["subset_scanning"], adaptive=True, output_dir=out)
    with pytest.raises(TypeError, match="adaptive must be True or False"):
        prepare(adaptive="yes", output_dir=out)
    assert not out.exists()
    # the default set: the differentiable ones are attacked, the others skipped
    usable = adaptive_detectors(DEFAULT_DETECTORS, explicit=False)
    assert "fisher_sensitivity" not in usable and "subset_scanning" not in usable
    assert {"fisher_combined", "binary_input", "binary_activation", "max_softmax_clean"} <= set(usable)
    assert all(DETECTORS[d].no_gradient is None for d in usable)


# ---------------------------------------------------------------- evaluation: any ART attack
class _Float64Queries:
    """A stub ART evasion attack that queries like HopSkipJump: predict on float64 arrays, then a loss gradient."""

    def __init__(self, classifier) -> None:
        self.classifier = classifier

    def generate(self, x: np.ndarray) -> np.ndarray:
        x64 = np.asarray(x, dtype=np.float64)
        labels = self.classifier.predict(x64).argmax(1)
        g = self.classifier.loss_gradient(x64, np.eye(self.classifier.nb_classes)[labels])
        return np.clip(x64 + 0.1 * np.sign(g), 0, 1)


def test_attacks_that_query_in_float64_reach_a_float32_model(digits_cnn):
    from art.attacks.evasion import HopSkipJump
    from art.estimators.classification import PyTorchClassifier

    from art_fisher.evaluation._model import attacked_classifier

    model = digits_cnn.classifier.model
    x = digits_cnn.x_test[:2].astype(np.float32)
    plain = PyTorchClassifier(model, nn.CrossEntropyLoss(), (1, 8, 8), 10, clip_values=(0.0, 1.0), device_type="cpu")
    with pytest.raises(RuntimeError, match="double"):  # the failure the evaluation's classifier removes
        _Float64Queries(plain).generate(x)
    clf = attacked_classifier(model, input_shape=(1, 8, 8), nb_classes=10, device=torch.device("cpu"))
    np.testing.assert_allclose(clf.predict(x.astype(np.float64)), plain.predict(x), rtol=1e-6)
    adv = _Float64Queries(clf).generate(x)
    assert adv.shape == x.shape and np.isfinite(adv).all()
    g64 = clf.loss_gradient(x.astype(np.float64), np.eye(10)[[0, 1]])
    np.testing.assert_allclose(g64, plain.loss_gradient(x, np.eye(10)[[0, 1]]), rtol=1e-5, atol=1e-7)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hsj = HopSkipJump(clf, max_iter=1, max_eval=20, init_eval=5, init_size=20, verbose=False)
        adv = hsj.generate(x=x)
    assert adv.shape == x.shape and np.isfinite(adv).all()
