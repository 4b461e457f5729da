"""The evaluation workflow end to end on a reduced digits run, its protocol and its reproducibility."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from art_fisher import evaluation
from art_fisher.evaluation import DEFAULT_DETECTORS, DETECTORS, DetectorSpec, EvaluationResult, evaluate
from art_fisher.data import load_digits
from art_fisher.models import SmallCNN, train_model

# A reduced run: few images, two quick attacks, a model trained once for the module (below).
SMALL = {"attacks": ["fgsm", "pgd"], "n_samples": 30, "seed": 3}
# In-process training kept tiny where the cache is what is tested.
TINY = {"attacks": ["fgsm"], "detectors": ["binary_input"], "n_samples": 12, "epochs": 2, "seed": 1}
FISHER = [name for name in DEFAULT_DETECTORS if DETECTORS[name].kind == "fisher"]
# The default set: every scalar Fisher metric alone and combined, the sensitivity-map detector and ART's
# baselines.
ALL_DETECTORS = list(DEFAULT_DETECTORS)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny runs: one torch thread is faster than two on a busy 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _numbers(result: EvaluationResult) -> list[tuple]:
    """Everything in the table except the timings."""
    keys = ("attack", "detector", "roc_auc", "tpr_at_5pct_fpr", "detection_accuracy", "n_train", "n_test")
    return [tuple(row[k] for k in keys) for row in result.table]


@pytest.fixture(scope="module")
def digits_model(tmp_path_factory):
    """A SmallCNN trained on the digits train split, saved as a state dict (the ``--model`` path)."""
    torch.manual_seed(0)
    train = load_digits(split="train")
    net = train_model(SmallCNN(), train.x, train.y, epochs=12, seed=0)
    path = tmp_path_factory.mktemp("model") / "small_cnn.pt"
    torch.save(net.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def small_run(tmp_path_factory, digits_model):
    out = tmp_path_factory.mktemp("eval")
    return evaluate(**SMALL, model=digits_model, detectors=ALL_DETECTORS, output_dir=out), out


@pytest.mark.slow
def test_every_artefact_and_every_cell(small_run):
    result, out = small_run
    for key in ("results_json", "results_csv", "report_md", "roc_curves", "model"):
        assert result.paths[key].is_file(), key
    if FISHER:
        for key in ("score_histograms", "sensitivity_maps"):
            assert result.paths[key].is_file(), key
    for path in result.paths.values():
        assert path.stat().st_size > 0
    data = json.loads(result.paths["results_json"].read_text())
    cells = {(row["attack"], row["detector"]): row for row in data["table"]}
    assert set(cells) == {(a, d) for a in SMALL["attacks"] for d in ALL_DETECTORS}
    for row in cells.values():
        assert 0.0 <= row["roc_auc"] <= 1.0
        assert 0.0 <= row["tpr_at_5pct_fpr"] <= 1.0
        assert 0.0 <= row["detection_accuracy"] <= 1.0
        assert row["seconds_per_sample"] > 0
        assert row["n_test"] > 0 and row["n_test"] % 2 == 0  # clean + adversarial of the same images
    assert [a["attack"] for a in data["attacks"]] == SMALL["attacks"]
    for a in data["attacks"]:
        assert 0.0 < a["success_rate"] <= 1.0 and a["n_attacked"] == SMALL["n_samples"]
    csv_lines = result.paths["results_csv"].read_text().strip().splitlines()
    assert len(csv_lines) == 1 + len(cells)
    md = result.paths["report_md"].read_text()
    assert "ROC-AUC" in md and "## Versions" in md and "roc_curves.png" in md
    assert result.format_table().count("\n") == 1 + len(cells)


@pytest.mark.slow
def test_same_seed_same_numbers(small_run, digits_model, tmp_path):
    result, _ = small_run
    subset = ["fisher_combined", "binary_input", "subset_scanning"]
    again = evaluate(**SMALL, model=digits_model, detectors=subset, output_dir=tmp_path)
    assert _numbers(again) == [r for r in _numbers(result) if r[1] in subset]
    assert [a["n_successful"] for a in again.attacks] == [a["n_successful"] for a in result.attacks]
    assert [a["mean_l2"] for a in again.attacks] == [a["mean_l2"] for a in result.attacks]


def test_trained_model_is_cached_and_reloaded(tmp_path):
    first = evaluate(**TINY, output_dir=tmp_path)
    assert not first.settings["model_cached"] and first.paths["model"].parent == tmp_path / "models"
    # Same settings, same folder: the state dict is loaded (weights_only) instead of training again.
    again = evaluate(**TINY, output_dir=tmp_path)
    assert again.settings["model_cached"] and again.timings["training"] == 0.0
    assert again.paths["model"] == first.paths["model"]
    assert _numbers(again) == _numbers(first)
    # Another setting that changes the model (the seed) gets its own cache entry.
    other = evaluate(**{**TINY, "seed": 2}, output_dir=tmp_path)
    assert not other.settings["model_cached"] and other.paths["model"] != first.paths["model"]


class _Spy:
    """A registry entry that records what the protocol hands to a detector."""

    calls: list = []

    def __init__(self, ctx):
        pass

    def fit(self, x, y):
        _Spy.calls.append(("fit", x.copy(), y.copy()))

    def detect(self, x):
        _Spy.calls.append(("detect", x.copy(), None))
        score = np.arange(len(x), dtype=float)
        return evaluation._Scored(score=score, is_adversarial=score >= len(x) / 2)


def test_protocol_splits_by_source_image(monkeypatch, tmp_path):
    """Clean and adversarial versions of one image are on one side only; each side is balanced."""
    monkeypatch.setitem(DETECTORS, "spy", DetectorSpec("spy", _Spy, "baseline"))
    _Spy.calls.clear()
    result = evaluate(attacks=["fgsm"], detectors=["spy"], n_samples=30, epochs=1, output_dir=tmp_path)
    (_, x_fit, y_fit), (_, x_det, _) = _Spy.calls
    n_fit, n_det = len(x_fit) // 2, len(x_det) // 2
    np.testing.assert_array_equal(y_fit, np.repeat([0, 1], n_fit))
    clean_fit = {r.tobytes() for r in x_fit[:n_fit]}
    clean_det = {r.tobytes() for r in x_det[:n_det]}
    assert not clean_fit & clean_det
    # Adversarial halves are the attacked versions of the same side's clean images (FGSM moves by <= eps).
    assert np.abs(x_fit[n_fit:] - x_fit[:n_fit]).max() <= 0.2 + 1e-6
    assert np.abs(x_det[n_det:] - x_det[:n_det]).max() <= 0.2 + 1e-6
    assert n_fit + n_det == result.attacks[0]["n_successful"]
    # The spy ranks the second (adversarial) half higher: a perfect score.
    assert result.table[0]["roc_auc"] == 1.0 and result.table[0]["tpr_at_5pct_fpr"] == 1.0


def test_state_dict_model_is_used(tmp_path):
    torch.manual_seed(0)
    net = SmallCNN()
    path = tmp_path / "net.pt"
    torch.save(net.state_dict(), path)
    monkey_out = tmp_path / "out"
    result = evaluate(model=path, attacks=["fgsm"], detectors=["binary_input"], n_samples=8, output_dir=monkey_out)
    assert result.settings["model"] == str(path) and result.timings["training"] == 0.0
    assert not (monkey_out / "models").exists()


def test_wrong_state_dict_is_a_clear_error(tmp_path):
    path = tmp_path / "net.pt"
    torch.save(SmallCNN(width=4).state_dict(), path)
    with pytest.raises(ValueError, match="net.pt.*small_cnn"):
        evaluate(model=path, attacks=["fgsm"], detectors=["binary_input"], n_samples=8, output_dir=tmp_path / "o")


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"dataset": "svhn"}, ValueError, "dataset must be one of"),
        ({"dataset": "mnist"}, ValueError, "data_dir is required"),
        ({"arch": "resnet"}, ValueError, "arch must be one of"),
        ({"attacks": ["fgsm", "jsma"]}, ValueError, r"unknown \['jsma'\]"),
        ({"attacks": "fgsm"}, TypeError, "sequence of names"),
        ({"attacks": []}, ValueError, "at least one"),
        ({"detectors": ["fisher_nope"]}, ValueError, "detectors must be names"),
        ({"detectors": ["binary_input", "binary_input"]}, ValueError, "must not repeat"),
        ({"eps": 0.0}, ValueError, "eps must be"),
        ({"eps": 3.0}, ValueError, "eps must be"),
        ({"n_samples": 2}, ValueError, "n_samples must be an integer >= 4"),
        ({"n_samples": 10.5}, ValueError, "n_samples"),
        ({"seed": -1}, ValueError, "seed must be"),
        ({"epochs": 0}, ValueError, "epochs must be"),
        ({"device": "tpu"}, ValueError, "device"),
        ({"model": "does/not/exist.pt"}, FileNotFoundError, "exist.pt"),
    ],
)
def test_bad_arguments_fail_before_any_work(tmp_path, kwargs, error, match):
    out = tmp_path / "never_created"
    with pytest.raises(error, match=match):
        evaluate(output_dir=out, **kwargs)
    assert not out.exists()


def test_sensitivity_detector(digits_model, tmp_path):
    result = evaluate(
        attacks=["fgsm"], detectors=["fisher_sensitivity"], n_samples=8, model=digits_model, output_dir=tmp_path
    )
    assert 0.0 <= result.table[0]["roc_auc"] <= 1.0
    data = json.loads(result.paths["results_json"].read_text())
    assert [r["detector"] for r in data["table"]] == ["fisher_sensitivity"]


def test_nan_free_json(small_run):
    result, _ = small_run
    text = result.paths["results_json"].read_text()
    assert "NaN" not in text
    assert all(not math.isnan(r["roc_auc"]) for r in result.table)
