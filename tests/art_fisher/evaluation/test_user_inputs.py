"""The evaluation on the user's classifier and images: Python (DetectionEvaluation) and the command line.

The classifier is a 20-class 3×16×16 model the project has never seen, wrapped with per-channel
standardisation in an ART PyTorchClassifier (tests/art_fisher/own_model.py).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from art_fisher.cli import main
from art_fisher.evaluation import DetectionEvaluation
from tests.art_fisher import own_model

FAST = {"attacks": ["fgsm", "pgd"], "detectors": ["fisher_trace", "max_softmax", "mahalanobis"], "n_samples": 40}


@pytest.fixture(scope="module")
def net() -> nn.Module:
    return own_model.trained_net()


@pytest.fixture(scope="module")
def images():
    x, y = own_model.make_data(120, seed=7)
    x_ref, _ = own_model.make_data(60, seed=8)
    return x, y, x_ref


def _state(model: nn.Module):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_own_20_class_model_with_preprocessing_goes_through_and_reports_its_own_accuracy(net, images, tmp_path):
    x, y, x_ref = images
    clf = own_model.classifier(net)
    own = float(np.mean(np.argmax(clf.predict(x), axis=1) == y))
    assert own < 0.98  # not a trivially perfect model: a wrong accuracy would show
    net.train()
    before = _state(net)
    grads = [None if p.grad is None else p.grad.clone() for p in net.parameters()]
    result = DetectionEvaluation(**FAST).evaluate(clf, x, np.eye(20)[y], x_reference=x_ref, output_dir=tmp_path)
    written = json.loads((tmp_path / "results.json").read_text())["settings"]
    assert written["clean_test_accuracy"] == pytest.approx(own, abs=1e-12)
    assert written["n_test_images"] == len(x) and written["classifier"]["nb_classes"] == 20
    assert written["classifier"]["preprocessing"] == ["StandardisationMeanStdPyTorch"]
    assert all(m.training for m in net.modules())  # the train-mode model comes back in train mode
    for p, grad in zip(net.parameters(), grads, strict=True):
        assert (p.grad is None) == (grad is None) and (grad is None or torch.equal(p.grad, grad))
    for key, value in _state(net).items():
        torch.testing.assert_close(value, before[key], rtol=0, atol=0)
    rows = {(r["detector"], r["fit_attack"], r["attack"]) for r in result.table}
    assert ("fisher_trace", "fgsm", "pgd") in rows and all(np.isfinite(r["roc_auc"]) for r in result.table)
    net.eval()


def test_without_reference_a_share_of_x_is_set_aside_and_never_scored(net, images, tmp_path):
    from art_fisher.evaluation._user_inputs import MIN_REFERENCE, REFERENCE_SHARE

    x, y, _ = images
    clf = own_model.classifier(net)
    evaluation = DetectionEvaluation(**{**FAST, "detectors": ["fisher_trace", "max_softmax"]}, tau=0.1)
    result = evaluation.evaluate(clf, x, y, output_dir=tmp_path)
    n_aside = max(MIN_REFERENCE, round(REFERENCE_SHARE * len(x)))
    assert result.settings["n_test_images"] == len(x) - n_aside
    assert result.settings["n_train_images"] == n_aside
    assert result.settings["tau"] == 0.1  # the many-class option reaches the Fisher detectors


@pytest.mark.parametrize(
    ("change", "error", "message"),
    [
        ({"x": np.zeros((10, 3, 16, 15), np.float32)}, ValueError, r"shape \(N, \*classifier.input_shape\)"),
        ({"y": np.full(120, 20)}, ValueError, "nb_classes=20"),
        ({"y": np.eye(19)[np.zeros(120, int)]}, ValueError, r"one-hot rows must have shape \(120, 20\)"),
        ({"x": np.full((120, 3, 16, 16), 2.0, np.float32)}, ValueError, "outside the classifier's clip_values"),
        ({"x": np.zeros((12, 3, 16, 16), np.float32), "y": np.zeros(12, int)}, ValueError, "x_reference"),
        ({"y": [0] * 120}, TypeError, "numpy array of labels"),
    ],
)
def test_user_data_that_does_not_fit_the_classifier_is_refused_before_work(
    net, images, tmp_path, change, error, message
):
    x, y, _ = images
    args = {"x": x, "y": y, **change}
    with pytest.raises(error, match=message):
        DetectionEvaluation(**FAST).evaluate(own_model.classifier(net), args["x"], args["y"], output_dir=tmp_path)
    assert not any(tmp_path.iterdir())


def test_channels_last_and_foreign_classifiers_are_refused(net, tmp_path):
    from art.estimators.classification import PyTorchClassifier

    last = PyTorchClassifier(net, loss=nn.CrossEntropyLoss(), input_shape=(16, 16, 3), nb_classes=20,
                             channels_first=False)  # fmt: skip
    x = np.zeros((20, 16, 16, 3), np.float32)
    with pytest.raises(ValueError, match="channels_first=False"):
        DetectionEvaluation(**FAST).evaluate(last, x, np.zeros(20, int), output_dir=tmp_path)
    with pytest.raises(TypeError, match="PyTorchClassifier"):
        DetectionEvaluation(**FAST).evaluate(net, x, np.zeros(20, int), output_dir=tmp_path)


# --------------------------------------------------- a classifier on the built-in digits (DetectionEvaluation)
def _digits_classifier(*, n_classes: int = 10, mean: float = 0.3, std: float = 0.35):
    """SmallCNN trained on standardised digits, wrapped with that standardisation as ART preprocessing."""
    from art.estimators.classification import PyTorchClassifier

    from art_fisher.data import load_digits
    from art_fisher.models import SmallCNN

    data = load_digits(split="train")
    torch.manual_seed(0)
    model = SmallCNN(in_channels=1, n_classes=n_classes, width=8)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    xt, yt = (torch.from_numpy(data.x) - mean) / std, torch.from_numpy(data.y)
    for _ in range(4):
        for idx in torch.randperm(len(yt), generator=torch.Generator().manual_seed(0)).split(64):
            opt.zero_grad()
            nn.functional.cross_entropy(model(xt[idx]), yt[idx]).backward()
            opt.step()
    return PyTorchClassifier(model.eval(), loss=nn.CrossEntropyLoss(), input_shape=(1, 8, 8), nb_classes=n_classes,
                             clip_values=(0.0, 1.0), preprocessing=(mean, std))  # fmt: skip


@pytest.fixture(scope="module")
def digits_classifier():
    return _digits_classifier()


def _digits_run(clf, tmp_path):
    evaluation = DetectionEvaluation(dataset="digits", attacks=["fgsm"], detectors=["max_softmax"], n_samples=20)
    return evaluation.evaluate(clf, output_dir=tmp_path)


def test_digits_run_keeps_the_classifier_preprocessing(digits_classifier, tmp_path):
    from art_fisher.data import load_digits

    test = load_digits(split="test")
    own = float(np.mean(np.argmax(digits_classifier.predict(test.x), axis=1) == test.y))
    result = _digits_run(digits_classifier, tmp_path)
    assert result.settings["clean_test_accuracy"] == pytest.approx(own, abs=1e-12)


def test_digits_run_gives_a_train_mode_model_back_in_train_mode(digits_classifier, tmp_path):
    model = digits_classifier.model
    model.train()
    try:
        _digits_run(digits_classifier, tmp_path)
        assert all(m.training for m in model.modules())
    finally:
        model.eval()


def test_digits_run_refuses_a_classifier_with_another_class_count(tmp_path):
    with pytest.raises(ValueError, match="nb_classes=12 but the digits data have 10 classes"):
        _digits_run(_digits_classifier(n_classes=12), tmp_path)


# ------------------------------------------------------------------------------------------ command line
@pytest.fixture(scope="module")
def files(net, images, tmp_path_factory):
    folder = tmp_path_factory.mktemp("own")
    x, y, x_ref = images
    np.savez(folder / "data.npz", x_train=(x_ref * 255).round().astype(np.uint8), y_train=np.zeros(len(x_ref), int),
             x_test=x, y_test=y)  # fmt: skip
    own_model.exported(net, folder / "model.pt2")
    return folder


def _cli_args(files, out):
    return ["evaluate", "--data", str(files / "data.npz"), "--model", str(files / "model.pt2"), "--mean",
            ",".join(map(str, own_model.MEAN)), "--std", ",".join(map(str, own_model.STD)), "--attacks", "fgsm",
            "--detectors", "max_softmax", "--n-samples", "20", "--output", str(out), "--quiet"]  # fmt: skip


def test_cli_runs_an_exported_model_on_an_npz_with_its_preprocessing(net, images, files, tmp_path, capsys):
    assert main(_cli_args(files, tmp_path / "out")) == 0
    settings = json.loads((tmp_path / "out" / "results.json").read_text())["settings"]
    x, y, _ = images
    own = float(np.mean(np.argmax(own_model.classifier(net).predict(x), axis=1) == y))
    assert settings["clean_test_accuracy"] == pytest.approx(own, abs=1e-12)
    assert settings["data"] == str(files / "data.npz") and settings["classifier"]["nb_classes"] == 20


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--data", "missing.npz", "does not exist"),
        ("--model", "missing.pt2", "does not exist"),
        ("--mean", "0.5,0.5", "1 or 3 finite numbers"),
        ("--std", "0,1,1", "std must be positive"),
        ("--clip-values", "0,0.5", "outside the classifier's clip_values"),
        ("--detectors", "max_softmax,mahalanobis", "read the model's layers"),
        ("--data-dir", "somewhere", "not both"),
    ],
)
def test_cli_bad_inputs_get_one_line_and_exit_2_before_work(files, tmp_path, capsys, flag, value, message):
    args = _cli_args(files, tmp_path / "out")
    if flag in args:
        args[args.index(flag) + 1] = value
    else:
        args += [flag, value]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "out").exists()


@pytest.mark.slow  # three runs, one of them two processes: about a minute on the shared 2-core machine
def test_torchrun_two_processes_give_the_one_process_rows(files, tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[3]
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
    args = _cli_args(files, tmp_path / "x")[1:-3]  # evaluate's options without --output DIR --quiet
    args[args.index("--attacks") + 1] = "fgsm,pgd,deepfool"
    args[args.index("--detectors") + 1] = "fisher_trace,fisher_trace_clean,max_softmax,energy_clean"
    args[args.index("--n-samples") + 1] = "40"
    tables = []
    for launcher, out in (
        ([sys.executable, "-m", "art_fisher"], tmp_path / "one"),
        ([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "art_fisher"],
         tmp_path / "two"),
    ):  # fmt: skip
        done = subprocess.run([*launcher, "evaluate", *args, "--output", str(out), "--quiet"], env=env, cwd=root,
                              capture_output=True, text=True, timeout=600, check=False)  # fmt: skip
        assert done.returncode == 0, done.stderr[-2000:]
        results = json.loads((out / "results.json").read_text())
        tables.append({(r["detector"], r["fit_attack"], r["attack"]): r["roc_auc"] for r in results["table"]})
        assert results["settings"]["processes"] == (1 if out.name == "one" else 2)
    assert tables[0].keys() == tables[1].keys() and len(tables[0]) > 10
    for key, auc in tables[0].items():
        assert abs(tables[1][key] - auc) <= 1e-4, key
