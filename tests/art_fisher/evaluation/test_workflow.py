"""The evaluation workflow end to end on a reduced digits run: protocol, unseen attacks, clean-only rows,
reproducibility, the model cache's recovery and argument checks."""

from __future__ import annotations

import csv
import json
import math
import os
import stat
from typing import ClassVar

import numpy as np
import pytest
import torch

from art_fisher.data._loaders import load_digits
from art_fisher.evaluation import (
    DEFAULT_DETECTORS,
    DETECTORS,
    DetectorSpec,
    EvaluationResult,
    Scored,
    evaluate,
    prepare,
)
from art_fisher.evaluation.report._report import transfer_matrix, unseen_summary
from art_fisher.models._architectures import SmallCNN, train_model

# A reduced run: few images, two quick attacks, a model trained once for the module (below).
SMALL = {"attacks": ["fgsm", "pgd"], "n_samples": 40, "seed": 3}


# In-process training kept tiny where the cache is what is tested.
TINY = {"attacks": ["fgsm"], "detectors": ["max_softmax"], "n_samples": 12, "epochs": 2, "seed": 1}


ALL_DETECTORS = list(DEFAULT_DETECTORS)


SUPERVISED = [d for d in ALL_DETECTORS if DETECTORS[d].supervised]


CLEAN_FIT = [d for d in ALL_DETECTORS if not DETECTORS[d].supervised]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny runs: one torch thread is faster than two on a busy 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _numbers(result: EvaluationResult) -> list[tuple]:
    """Everything in the table except the timings."""
    keys = ("detector", "fit_attack", "attack", "roc_auc", "tpr", "fpr", "own_tpr", "own_fpr", "n_train", "n_test")
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


def test_default_set_has_fisher_clean_rows_and_the_free_baseline():
    assert {"max_softmax", "binary_input", "binary_activation", "fisher_combined"} <= set(SUPERVISED)
    fisher = [d for d in SUPERVISED if d.startswith(("fisher_", "stacked"))]
    assert {f"{d}_clean" for d in fisher} <= set(CLEAN_FIT)
    assert "subset_scanning" in CLEAN_FIT


@pytest.mark.slow
def test_every_artefact_and_every_cell(small_run):
    result, out = small_run
    for key in ("results_json", "results_csv", "report_md", "roc_curves", "transfer_auc", "model"):
        assert result.paths[key].is_file(), key
    for key in ("score_histograms", "sensitivity_maps"):
        assert result.paths[key].is_file(), key
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]  # every file renamed into place
    data = json.loads(result.paths["results_json"].read_text())
    cells = {(r["detector"], r["fit_attack"], r["attack"]): r for r in data["table"]}
    attacks = SMALL["attacks"]
    expected = {(d, f, a) for d in SUPERVISED for f in attacks for a in attacks}
    expected |= {(d, "clean", a) for d in CLEAN_FIT for a in attacks}
    assert set(cells) == expected and len(data["table"]) == len(expected)
    for row in cells.values():
        for key in ("roc_auc", "detection_accuracy", "tpr", "fpr", "own_tpr", "own_fpr"):
            assert 0.0 <= row[key] <= 1.0, (key, row)
        assert row["seconds_per_sample"] > 0
        assert row["n_test"] > 0 and row["n_test"] % 2 == 0  # clean + adversarial of the same images
        # the operating point's decision on a balanced set: accuracy = (TPR + 1 - FPR) / 2
        assert row["detection_accuracy"] == pytest.approx((row["tpr"] + 1 - row["fpr"]) / 2)
    # The test side is the same whatever the detector was fitted on.
    for a in attacks:
        assert len({r["n_test"] for r in data["table"] if r["attack"] == a}) == 1
    with open(result.paths["results_csv"], newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == len(expected) and {"attack", "fit_attack", "detector", "roc_auc"} <= set(rows[0])
    md = result.paths["report_md"].read_text()
    for text in ("## Unseen attacks", "## Clean-only calibration", "transfer_auc.png", "fitted on \\ test"):
        assert text in md, text
    table = result.format_table()
    assert "Unseen attacks" in table and "fisher_combined" in table


@pytest.mark.slow
def test_unseen_summary_is_the_mean_off_the_diagonal(small_run):
    result, _ = small_run
    summary = {s["detector"]: s for s in result.unseen_summary()}
    for det in SUPERVISED:
        matrix = result.transfer_matrix(det)
        assert matrix.shape == (2, 2)
        assert summary[det]["same_attack_auc"] == pytest.approx(np.mean(np.diag(matrix)))
        assert summary[det]["unseen_auc"] == pytest.approx(np.mean([matrix[0, 1], matrix[1, 0]]))
        assert summary[det]["min_unseen_auc"] == pytest.approx(min(matrix[0, 1], matrix[1, 0]))
    for det in CLEAN_FIT:  # fitted on no attack: every attack is unseen
        row = result.transfer_matrix(det)
        assert row.shape == (1, 2) and summary[det]["unseen_auc"] == pytest.approx(row.mean())
        assert math.isnan(summary[det]["same_attack_auc"])
        fit = next(f for f in result.fits if f["detector"] == det)
        assert fit["fit_attack"] == "clean" and summary[det]["clean_fpr"] == fit["clean_fpr"]
    # A single-metric Fisher detector ranks inputs by the metric whatever it was fitted on.
    trace = result.transfer_matrix("fisher_trace")
    np.testing.assert_allclose(trace[0], trace[1])
    np.testing.assert_allclose(result.transfer_matrix("fisher_trace_clean")[0], trace[0])


@pytest.mark.slow
def test_same_seed_same_numbers(small_run, digits_model, tmp_path):
    result, _ = small_run
    subset = ["fisher_combined", "max_softmax", "binary_input", "subset_scanning", "fisher_trace_clean"]
    again = evaluate(**SMALL, model=digits_model, detectors=subset, output_dir=tmp_path)
    assert sorted(_numbers(again)) == sorted(r for r in _numbers(result) if r[0] in subset)
    assert [a["n_successful"] for a in again.attacks] == [a["n_successful"] for a in result.attacks]
    assert [a["mean_l2"] for a in again.attacks] == [a["mean_l2"] for a in result.attacks]


def test_nan_free_json(small_run):
    result, _ = small_run
    text = result.paths["results_json"].read_text()
    assert "NaN" not in text
    assert all(not math.isnan(r["roc_auc"]) for r in result.table)


class _Spy:
    """A registry entry that records what the protocol hands to a detector."""

    calls: ClassVar[list] = []

    def __init__(self, ctx):
        pass

    def fit(self, x, y):
        _Spy.calls.append(("fit", x.copy(), None if y is None else y.copy()))

    def detect(self, x):
        _Spy.calls.append(("detect", x.copy(), None))
        score = np.arange(len(x), dtype=float)
        return Scored(score=score, is_adversarial=score >= len(x) / 2)


def test_protocol_keeps_sides_apart_across_attacks(monkeypatch, tmp_path):
    """Fitted on one attack, scored on the other: no source image (clean or attacked) on both sides."""
    monkeypatch.setitem(DETECTORS, "spy", DetectorSpec("spy", _Spy))
    monkeypatch.setitem(DETECTORS, "spy_clean", DetectorSpec("spy clean", _Spy, supervised=False))
    _Spy.calls.clear()
    result = evaluate(
        attacks=["fgsm", "pgd"], detectors=["spy", "spy_clean"], n_samples=30, epochs=1, output_dir=tmp_path
    )
    fits = [c for c in _Spy.calls if c[0] == "fit"]
    detects = [c for c in _Spy.calls if c[0] == "detect"]
    assert len(fits) == 3 and len(detects) == 3  # spy: once per attack; spy_clean: once
    pool = {r.tobytes() for r in detects[0][1]}
    assert all({r.tobytes() for r in d[1]} == pool for d in detects)  # one test pool for every fit
    for _, x_fit, y_fit in fits[:2]:
        n = len(x_fit) // 2
        np.testing.assert_array_equal(y_fit, np.repeat([0, 1], n))
        assert np.abs(x_fit[n:] - x_fit[:n]).max() <= 0.2 + 1e-6  # the attacked twins of the same images
        assert not {r.tobytes() for r in x_fit} & pool
    _, x_clean, y_clean = fits[2]
    assert y_clean is None and not {r.tobytes() for r in x_clean} & pool
    assert len(x_clean) == result.settings["n_detector_train_images"]
    # The clean fit saw only clean train-side images: those are the clean halves of the supervised fits.
    assert {r.tobytes() for r in fits[0][1][: len(fits[0][1]) // 2]} <= {r.tobytes() for r in x_clean}
    rows = {(r["detector"], r["fit_attack"], r["attack"]) for r in result.table}
    assert rows == {("spy", f, a) for f in ("fgsm", "pgd") for a in ("fgsm", "pgd")} | {
        ("spy_clean", "clean", a) for a in ("fgsm", "pgd")
    }


def test_progress_bar_over_attacks_and_fits(tmp_path, capsys, digits_model):
    evaluate(
        model=digits_model,
        attacks=["fgsm"],
        detectors=["max_softmax", "subset_scanning"],
        n_samples=12,
        output_dir=tmp_path,
        progress=True,
    )
    err = capsys.readouterr().err
    assert "art-fisher evaluate" in err and "3/3" in err  # 1 attack + 1 supervised fit + 1 clean fit
    evaluate(model=digits_model, attacks=["fgsm"], detectors=["max_softmax"], n_samples=12, output_dir=tmp_path)
    assert capsys.readouterr().err == ""


def _not_torch(tmp_path):
    path = tmp_path / "notes.pt"
    path.write_text("e" * 64)  # a text file: torch.load raised KeyError: 101 or IndexError on such files
    return path


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
        ({"n_samples": 2}, ValueError, "n_samples must be an int in \\[4, "),
        ({"n_samples": 10.5}, TypeError, "n_samples must be an int"),
        ({"seed": -1}, ValueError, "seed must be"),
        ({"epochs": 0}, ValueError, "epochs must be"),
        ({"epochs": 10**9}, ValueError, "epochs must be an int in \\[1, 10000\\]"),
        ({"batch_size": 10**20}, ValueError, "batch_size must be an int in \\[1, 65536\\]"),
        ({"target_fpr": 1.0}, ValueError, "target_fpr must be"),
        ({"device": "tpu"}, ValueError, "device"),
        ({"model": "does/not/exist.pt"}, FileNotFoundError, "exist.pt"),
        ({"model": "{tmp}"}, FileNotFoundError, "is a folder"),
        ({"model": _not_torch}, ValueError, "notes.pt is not a torch zip archive"),
        ({"output_dir": "{tmp}/file/sub"}, ValueError, "lies under the file"),
        ({"output_dir": "{tmp}/file"}, ValueError, "is a file"),
        ({"output_dir": "/proc/art_fisher_out"}, ValueError, "not writable"),
    ],
)
def test_bad_arguments_fail_before_any_work(tmp_path, kwargs, error, match):
    (tmp_path / "file").write_text("a file, not a folder")
    kwargs = {k: v(tmp_path) if callable(v) else v for k, v in kwargs.items()}
    kwargs = {k: v.replace("{tmp}", str(tmp_path)) if isinstance(v, str) else v for k, v in kwargs.items()}
    out = tmp_path / "never_created"
    kwargs.setdefault("output_dir", out)
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(error, match=match):
        prepare(**kwargs)
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing created, nothing left behind


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through permission bits")
def test_read_only_output_folder(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        with pytest.raises(ValueError, match="not writable"):
            prepare(output_dir=locked / "out")
    finally:
        locked.chmod(stat.S_IRWXU)


def test_sensitivity_detector_and_summary_helpers(digits_model, tmp_path):
    result = evaluate(
        attacks=["fgsm"], detectors=["fisher_sensitivity"], n_samples=8, model=digits_model, output_dir=tmp_path
    )
    assert 0.0 <= result.table[0]["roc_auc"] <= 1.0
    assert [r["detector"] for r in json.loads(result.paths["results_json"].read_text())["table"]] == [
        "fisher_sensitivity"
    ]
    assert "transfer_auc" not in result.paths  # one attack: nothing unseen to draw
    summary = unseen_summary(result.table, result.fits)[0]
    assert math.isnan(summary["unseen_auc"]) and summary["n_unseen"] == 0
    assert transfer_matrix(result.table, "fisher_sensitivity", ["fgsm"]).shape == (1, 1)


def test_fisher_values_are_computed_once_per_input_and_metric(digits_cnn, monkeypatch):
    """Every Fisher detector and fit of a run shares one cache; values and decisions are unchanged by it."""
    from art_fisher.detection import _features
    from art_fisher.detection._detector import FisherInformationDetector
    from art_fisher.evaluation.detectors._base import RunContext
    from art_fisher.evaluation.detectors._fisher import FisherRun

    clf = digits_cnn.classifier
    ctx = RunContext(
        classifier=clf,
        model=clf.model,
        x_background=digits_cnn.x_train[:4],
        seed=0,
        device=torch.device("cpu"),
        batch_size=16,
        target_fpr=0.1,
        progress=False,
    )
    computed: list[tuple[str, int]] = []
    original = _features.compute

    def counting(classifier, x, *, metrics, **kwargs):
        computed.extend((m, len(x)) for m in metrics)
        return original(classifier, x, metrics=metrics, **kwargs)

    monkeypatch.setattr(_features, "compute", counting)
    x = digits_cnn.x_test[:60]
    y = np.r_[np.zeros(30, int), np.ones(30, int)]
    trace, both = FisherRun(ctx, ("trace",)), FisherRun(ctx, ("trace", "quadratic_form"))
    trace.fit(x[:40], y[10:50])
    both.fit(x[:40], y[10:50])
    scored = both.detect(x)  # 20 new rows
    clean = FisherRun(ctx, ("trace",))
    clean.fit(x[:40], None)
    assert computed == [("trace", 40), ("quadratic_form", 40), ("trace", 20), ("quadratic_form", 20)]
    plain = FisherInformationDetector(clf, metrics=("trace", "quadratic_form"), chunk_size=16)
    plain.fit(x[:40], y[10:50])
    report, flagged = plain.detect(x)
    np.testing.assert_allclose(scored.score, report["decision_scores"], rtol=1e-5, atol=1e-8)
    np.testing.assert_array_equal(scored.is_adversarial, flagged)
    assert scored.seconds > 0
