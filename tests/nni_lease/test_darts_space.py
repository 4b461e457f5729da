"""nni_lease on MNIST (a synthetic ``mnist.npz``) and on NNI's hub DARTS space, at tiny sizes."""

from __future__ import annotations

import json

import nni
import numpy as np
import pytest
import torch
from nni.nas.evaluator import FunctionalEvaluator
from nni.nas.execution import SequentialExecutionEngine
from nni.nas.space import SimplifiedModelSpace

from nni_lease._darts_space import DartsSpace
from nni_lease._data import MnistDataset, check_dataset, make_dataset
from nni_lease._spaces import LeaseCellSpace, build_space
from nni_lease.cli import main
from nni_lease.multitrial._strategy import LeaseMultiTrial
from nni_lease.multitrial._trial import evaluate_lease
from nni_lease.oneshot._config import RetrainConfig, SearchConfig
from nni_lease.oneshot._workflow import retrain_architecture, search_oneshot
from tests.fake_mnist import write_fake_mnist


@pytest.fixture(scope="module")
def mnist_dir(tmp_path_factory):
    return str(write_fake_mnist(tmp_path_factory.mktemp("mnist"), n_train=200, n_test=50))


def test_mnist_splits_are_disjoint_seeded_and_trace_small(mnist_dir):
    train, val, test = (MnistDataset(mnist_dir, split, seed=3, val_fraction=0.25) for split in ("train", "val", "test"))
    assert (len(train), len(val), len(test)) == (150, 50, 50)
    assert train.x.shape[1:] == (1, 28, 28) and train.x.dtype == torch.float32 and train.n_classes == 10
    assert float(train.x.max()) == 1.0 and float(train.x.min()) >= 0.0
    # train and val partition the official training set: every image exactly once
    with np.load(f"{mnist_dir}/mnist.npz") as npz:
        pool = torch.as_tensor(npz["x_train"].astype(np.float32) / 255.0)
    both = torch.cat([train.x, val.x])[:, 0]
    assert sorted(both.flatten(1).sum(1).tolist()) == pytest.approx(sorted(pool.flatten(1).sum(1).tolist()))
    assert torch.equal(MnistDataset(mnist_dir, "val", seed=3, val_fraction=0.25).x, val.x)
    assert not torch.equal(MnistDataset(mnist_dir, "val", seed=4, val_fraction=0.25).x, val.x)
    assert len(nni.dump(train)) < 1000  # NNI records the path, not the tensors (its limit is 64 KB)
    assert len(MnistDataset(mnist_dir, "test", limit=7)) == 7


@pytest.mark.parametrize(
    ("name", "root", "match"),
    [
        ("mnist", None, "data_dir must name a folder of mnist.npz"),
        ("mnist", "/nonexistent/folder", "is not a folder"),
        ("svhn", None, "dataset must be one of"),
    ],
)
def test_bad_data_arguments_are_refused_before_reading(name, root, match):
    with pytest.raises(ValueError, match=match):
        check_dataset(name, root)
    with pytest.raises((ValueError, FileNotFoundError)):
        make_dataset(name, "train", data_dir=root)


def test_darts_space_takes_grey_images_and_freezes_to_itself():
    torch.manual_seed(0)
    space = DartsSpace(in_channels=1, width=2, cells=3)
    assert space(torch.rand(2, 1, 28, 28)).shape == (2, 10)
    choices = space.simplify()
    assert {"normal/op_2_0", "reduce/input_5_1"} <= set(choices) and len(choices) == 32
    sample = {label: choice.default() for label, choice in choices.items()}
    net = space.freeze(sample)
    assert type(net) is DartsSpace and not net.simplify()
    assert net(torch.rand(3, 1, 8, 8)).shape == (3, 10)
    # a grey image is the colour image with three equal channels
    x = torch.rand(2, 1, 16, 16)
    net.eval()
    torch.testing.assert_close(net(x), net(x.expand(-1, 3, -1, -1).contiguous()))
    assert isinstance(build_space("darts", in_channels=3, width=2, cells=3), DartsSpace)
    assert isinstance(build_space("LeaseCellSpace", width=4), LeaseCellSpace)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"in_channels": 2}, r"in_channels must be one of \[1, 3\]"),
        ({"n_classes": 100}, r"n_classes must be one of \[10\]"),
        ({"cells": 2}, "cells must be an int >= 3"),
        ({"width": 0}, "width must be an int >= 1"),
    ],
)
def test_darts_space_refuses_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DartsSpace(**kwargs)


def test_search_config_resolves_per_space_defaults():
    assert (SearchConfig().width, SearchConfig().cells, SearchConfig().nodes) == (8, 2, 2)
    darts = SearchConfig(space="darts")
    assert (darts.width, darts.cells, darts.nodes) == (4, 3, 4)
    with pytest.raises(ValueError, match="space must be one of"):
        SearchConfig(space="nasnet")


def test_oneshot_lease_on_darts_and_mnist_then_retrain(mnist_dir, tmp_path):
    config = SearchConfig(
        dataset="mnist", data_dir=mnist_dir, space="darts", width=2, limit=32, epochs=1, limit_batches=1, batch_size=16
    )
    result = search_oneshot(tmp_path / "search", config=config, plot=False)
    record = json.loads((tmp_path / "search" / "architecture.json").read_text())
    assert record["space"] == {
        "name": "DartsSpace",
        "kwargs": {"in_channels": 1, "n_classes": 10, "width": 2, "cells": 3},
    }
    assert record["dataset"] == "mnist" and record["search"]["space"] == "darts"
    assert set(result.architecture) == set(DartsSpace(in_channels=1, width=2).simplify())
    summary = retrain_architecture(
        tmp_path / "search" / "architecture.json", config=RetrainConfig(epochs=1, batch_size=50)
    )
    assert summary["dataset"] == "mnist" and 0.0 <= summary["test_accuracy"] <= 1.0
    assert json.loads((tmp_path / "search" / "retrain.json").read_text())["n_parameters"] == summary["n_parameters"]


def test_cli_search_and_retrain_on_mnist_with_the_darts_space(mnist_dir, tmp_path, capsys):
    out = tmp_path / "cli"
    rc = main(
        [
            "search",
            "--dataset",
            "mnist",
            "--data-dir",
            mnist_dir,
            "--space",
            "darts",
            "--width",
            "2",
            "--limit",
            "32",
            "--epochs",
            "1",
            "--limit-batches",
            "1",
            "--batch-size",
            "16",
            "--output",
            str(out),
        ]
    )
    err = capsys.readouterr().err
    assert rc == 0, err
    assert "INFO nni_lease.oneshot._progress: search epoch 1/1 (" in err and "lease/objective=" in err
    assert json.loads((out / "architecture.json").read_text())["space"]["name"] == "DartsSpace"
    assert main(["retrain", str(out / "architecture.json"), "--epochs", "1", "--batch-size", "50"]) == 0
    printed = capsys.readouterr()
    assert "test accuracy" in printed.out
    assert (
        "INFO art_fisher.models._architectures: training epoch 1/1: mean loss" in printed.err
    )  # off a terminal: log lines
    assert main(["search", "--space", "darts", "--nodes", "3", "--output", str(tmp_path / "bad")]) == 2
    assert "nodes must be 4 for space 'darts'" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_multitrial_lease_samples_and_trains_darts_architectures_on_mnist(mnist_dir):
    torch.manual_seed(0)
    evaluator = FunctionalEvaluator(
        evaluate_lease,
        dataset="mnist",
        data_dir=mnist_dir,
        epochs=1,
        batch_size=16,
        limit=16,
        limit_batches=1,
        pgd_steps=1,
    )
    space = SimplifiedModelSpace.from_model(DartsSpace(in_channels=1, width=2), evaluator)
    strategy = LeaseMultiTrial(seed=0)
    strategy(space, SequentialExecutionEngine(max_model_count=2))
    assert len(strategy.history) == 2
    assert all(np.isfinite(r["metric"]) for r in strategy.history)
    assert set(strategy.best_sample()) == set(DartsSpace(in_channels=1, width=2).simplify())
