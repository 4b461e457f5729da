"""LeaSE one-shot strategy: validation, gradient flow, DARTS equivalence at gamma=0, resume, hub space."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from nni.nas.evaluator.pytorch import Classification, DataLoader
from nni.nas.execution import SequentialExecutionEngine
from nni.nas.nn.pytorch import ModelSpace
from nni.nas.space import RawFormatModelSpace
from nni.nas.strategy import DARTS
from torch import nn

from nni_lease import LeaSE
from nni_lease._data import Cifar10Dataset, DigitsDataset
from nni_lease._spaces import LeaseCellSpace
from nni_lease.core._step import LeaseStep

torch.set_num_threads(1)


def _evaluator(train, val, *, batch_size=16, shuffle=False, batches=3, epochs=1, num_classes=10):
    return Classification(
        train_dataloaders=DataLoader(train, batch_size=batch_size, shuffle=shuffle),
        val_dataloaders=DataLoader(val, batch_size=batch_size, shuffle=shuffle),
        num_classes=num_classes,
        max_epochs=epochs,
        limit_train_batches=batches,
        enable_progress_bar=False,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
    )


def _digits_evaluator(**kwargs):
    return _evaluator(DigitsDataset("train", limit=96), DigitsDataset("val", limit=96), **kwargs)


def _space(seed=0, **kwargs):
    torch.manual_seed(seed)
    return LeaseCellSpace(**{"width": 4, "cells": 2, "nodes": 2, **kwargs})


def _initialize(strategy, space, evaluator):
    strategy.initialize(RawFormatModelSpace.from_model(space, evaluator), SequentialExecutionEngine())
    return strategy


def _run(strategy, space, evaluator):
    _initialize(strategy, space, evaluator).run()
    return strategy


def _batches(n=16):
    train, val = DigitsDataset("train", limit=n), DigitsDataset("val", limit=n)
    return (train.x, train.y), (val.x, val.y)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (dict(gamma=-0.1), ValueError, "gamma must be"),
        (dict(gamma=float("nan")), ValueError, "gamma must be"),
        (dict(gamma="1"), TypeError, "gamma must be"),
        (dict(pgd_steps=0), ValueError, r"pgd_steps must be an int in \[1, 10000\]; got 0"),
        (dict(pgd_epsilon=0.0), ValueError, r"pgd_epsilon must be a finite number in \(0, "),
        (dict(pgd_step_size=-1e-3), ValueError, r"pgd_step_size must be None or a finite number in \(0, "),
        (dict(pgd_norm="l1"), ValueError, "pgd_norm must be one of"),
        (dict(hypergradient="second_order"), ValueError, "hypergradient must be one of"),
        (dict(listener="cnn"), TypeError, "listener must be None or a torch.nn.Module"),
        (dict(listener_learning_rate=0.0), ValueError, "listener_learning_rate must be"),
        (dict(listener_optimizer="adam"), TypeError, "listener_optimizer must be"),
        (dict(pdg_steps=3), ValueError, r"unknown LeaSE setting\(s\) \['pdg_steps'\]"),
        (dict(config={"gamma": 1}), TypeError, "config must be None or a LeaseConfig"),
        (dict(arc_learning_rate=float("nan")), ValueError, "arc_learning_rate must be"),
    ],
)
def test_bad_arguments_fail_at_construction(kwargs, error, match):
    with pytest.raises(error, match=match):
        LeaSE(**kwargs)


def test_wrong_listener_output_size_fails_before_training():
    listener = nn.Sequential(nn.Flatten(), nn.Linear(64, 7))
    strategy = LeaSE(listener=listener)
    with pytest.raises(ValueError, match=r"listener output must have shape \(N, n_classes\) = \(N, 10\)"):
        _initialize(strategy, _space(), _digits_evaluator())


class _NothingToSearch(ModelSpace):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        return self.fc(x.flatten(1))


def test_space_without_choices_is_rejected():
    with pytest.raises(ValueError, match="model_space has nothing to search"):
        _initialize(LeaSE(), _NothingToSearch(), _digits_evaluator())


def test_user_listener_is_copied_not_trained():
    torch.manual_seed(3)
    listener = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    before = [p.detach().clone() for p in listener.parameters()]
    strategy = _run(LeaSE(listener=listener), _space(), _digits_evaluator(batches=2))
    assert all(torch.equal(a, b) for a, b in zip(before, listener.parameters(), strict=False))
    trained = strategy.oneshot_module.listener
    assert trained is not listener
    assert not all(torch.equal(a, b) for a, b in zip(before, trained.parameters(), strict=False))


def test_listener_loss_sends_gradient_to_the_architecture_both_ways():
    strategy = _initialize(
        LeaSE(gamma=1.0, listener_optimizer=torch.optim.SGD, listener_learning_rate=0.5), _space(), _digits_evaluator()
    )
    module = strategy.oneshot_module
    module.training_module.set_model(strategy.supernet)
    module.configure_architecture_optimizers()
    step = module.lease_step
    alphas = module.arch_parameters()
    assert alphas
    trn, val = _batches()
    loss, logits, expl = step.listener_validation_loss(module.training_module, *val, differentiable="last_step")
    assert logits.shape == (16, 10) and expl.delta.flatten(1).norm(dim=1).max() <= strategy.config.pgd_epsilon + 1e-6
    first_order = torch.autograd.grad(loss, alphas, allow_unused=True)
    assert sum(float(g.abs().sum()) for g in first_order if g is not None) > 0.0
    terms = step.unrolled_objective(module.training_module, alphas, trn, val, explainer_step_size=3e-3)
    unrolled = torch.autograd.grad(terms.listener_val_loss, alphas, allow_unused=True)
    assert sum(float(g.abs().sum()) for g in unrolled if g is not None) > 0.0
    diffs = [
        float((a - b).abs().max())
        for a, b in zip(first_order, unrolled, strict=False)
        if a is not None and b is not None
    ]
    assert max(diffs) > 0.0  # the whole chain is not the first-order approximation


def _supernet_state(strategy):
    return {k: v.detach().clone() for k, v in strategy.supernet.state_dict().items()}


def test_gamma_zero_is_darts_step_for_step_and_gamma_one_is_not(monkeypatch):
    """Same seed, same batches (shuffled by the global RNG): LeaSE(gamma=0) reproduces NNI's DARTS."""

    def run(strategy):
        torch.manual_seed(0)
        space = _space(seed=0)
        return _supernet_state(_run(strategy, space, _digits_evaluator(batches=4, shuffle=True)))

    darts = run(DARTS())
    with monkeypatch.context() as patch:  # gamma=0: the listener's loss is never built for alpha
        real = LeaseStep.listener_validation_loss

        def _diagnostics_only(self, *args, differentiable="none", **kwargs):
            assert differentiable == "none", "no differentiable listener loss with gamma=0"
            return real(self, *args, differentiable=differentiable, **kwargs)

        patch.setattr(LeaseStep, "listener_validation_loss", _diagnostics_only)
        patch.setattr(LeaseStep, "unrolled_objective", None)
        lease0 = run(LeaSE(gamma=0.0, hypergradient="unrolled"))
    lease1 = run(LeaSE(gamma=1.0))
    assert darts.keys() == lease0.keys()
    alpha_keys = [k for k in darts if "_arch_alpha" in k]
    assert alpha_keys
    for key in darts:
        torch.testing.assert_close(lease0[key], darts[key], rtol=1e-6, atol=1e-7, msg=key)
    # the comparison can fail: gamma > 0 moves the architecture differently
    assert max(float((lease1[k] - darts[k]).abs().max()) for k in alpha_keys) > 1e-6


def test_state_dict_round_trip(tmp_path):
    strategy = _run(LeaSE(gamma=1.0), _space(seed=0), _digits_evaluator(batches=2))
    state = strategy.state_dict()
    torch.save(state, tmp_path / "state.pt")
    loaded = torch.load(tmp_path / "state.pt", weights_only=True)

    fresh = _initialize(LeaSE(gamma=1.0), _space(seed=1), _digits_evaluator(batches=2))
    assert not all(torch.equal(v, state["lease"]["supernet"][k]) for k, v in fresh.supernet.state_dict().items())
    fresh.load_state_dict(loaded)
    for key, value in fresh.supernet.state_dict().items():
        assert torch.equal(value, state["lease"]["supernet"][key]), key
    for key, value in fresh.oneshot_module.listener.state_dict().items():
        assert torch.equal(value, state["lease"]["listener"][key]), key
    assert torch.equal(fresh.oneshot_module.generator.get_state(), strategy.oneshot_module.generator.get_state())
    assert next(fresh.list_models()).sample == next(strategy.list_models()).sample


def test_logged_metrics_cover_both_networks():
    strategy = _run(LeaSE(gamma=1.0), _space(), _digits_evaluator(batches=2))
    metrics = strategy.oneshot_module.trainer.callback_metrics
    for name in [
        "explainer/train_loss",
        "explainer/train_acc",
        "explainer/val_loss",
        "explainer/val_acc",
        "listener/train_loss",
        "listener/train_acc",
        "listener/val_loss",
        "listener/val_acc",
        "explanation/mean_abs_delta",
        "lease/objective",
    ]:
        assert name in metrics and torch.isfinite(metrics[name]), name
    assert 0 < float(metrics["explanation/mean_abs_delta"]) <= strategy.config.pgd_epsilon
    torch.testing.assert_close(metrics["lease/objective"], metrics["explainer/val_loss"] + metrics["listener/val_loss"])


def _write_cifar(folder, n=8):
    rng = np.random.default_rng(0)
    folder.mkdir()
    for name in ["data_batch_1", "test_batch"]:
        batch = {b"labels": rng.integers(0, 10, n).tolist(), b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8)}
        with open(folder / name, "wb") as fh:
            pickle.dump(batch, fh, protocol=2)


@pytest.mark.slow
def test_hub_darts_space_at_tiny_size(tmp_path):
    from nni.nas.hub.pytorch import DARTS as DartsSpace

    _write_cifar(tmp_path / "cifar")
    root = str(tmp_path / "cifar")
    torch.manual_seed(0)
    space = DartsSpace(width=2, num_cells=3, dataset="cifar")
    evaluator = _evaluator(
        Cifar10Dataset(root, "train", val_fraction=0.5),
        Cifar10Dataset(root, "val", val_fraction=0.5),
        batch_size=4,
        batches=1,
    )
    strategy = _run(LeaSE(gamma=1.0, pgd_steps=1), space, evaluator)
    sample = next(strategy.list_models()).sample
    assert "normal/op_2_0" in sample and "reduce/op_2_0" in sample
    assert torch.isfinite(strategy.oneshot_module.trainer.callback_metrics["lease/objective"])


def test_unrolled_search_runs_and_moves_the_architecture_differently():
    def alphas(strategy):
        return {k: v.detach().clone() for k, v in strategy.supernet.state_dict().items() if "_arch_alpha" in k}

    first = _run(LeaSE(gamma=1.0), _space(seed=0), _digits_evaluator(batches=2))
    unrolled = _run(LeaSE(gamma=1.0, hypergradient="unrolled"), _space(seed=0), _digits_evaluator(batches=2))
    metrics = unrolled.oneshot_module.trainer.callback_metrics
    assert torch.isfinite(metrics["lease/objective"])
    a, b = alphas(first), alphas(unrolled)
    assert max(float((a[k] - b[k]).abs().max()) for k in a) > 1e-7


class _SetupDataModule(pl.LightningDataModule):
    """Builds its data sets in setup(), as Lightning recommends (and NNI's own one-shot tests do)."""

    def __init__(self):
        super().__init__()
        self.train = self.val = None

    def setup(self, stage=None):
        self.train, self.val = DigitsDataset("train", limit=48), DigitsDataset("val", limit=48)

    def train_dataloader(self):
        return DataLoader(self.train, batch_size=16)

    def val_dataloader(self):
        return DataLoader(self.val, batch_size=16)


def test_datamodule_that_builds_its_data_in_setup():
    evaluator = Classification(
        datamodule=_SetupDataModule(),
        num_classes=10,
        max_epochs=1,
        limit_train_batches=2,
        enable_progress_bar=False,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
    )
    strategy = _run(LeaSE(gamma=1.0), _space(), evaluator)
    assert strategy.oneshot_module.listener is not None
    assert torch.isfinite(strategy.oneshot_module.trainer.callback_metrics["listener/val_loss"])
    assert sorted(next(strategy.list_models()).sample) == ["input1", "op0", "op1"]


class _TupleInputs(torch.utils.data.Dataset):
    def __len__(self):
        return 8

    def __getitem__(self, i):
        return (torch.rand(1, 8, 8), torch.rand(1, 8, 8)), torch.tensor(i % 10)


def test_regression_evaluator_and_tuple_inputs_get_a_clear_error_at_start():
    from nni.nas.evaluator.pytorch import Regression

    regression = Regression(
        train_dataloaders=DataLoader(DigitsDataset("train", limit=8), batch_size=4),
        val_dataloaders=DataLoader(DigitsDataset("val", limit=8), batch_size=4),
        max_epochs=1,
    )
    with pytest.raises(ValueError, match="classification evaluator"):
        _initialize(LeaSE(), _space(), regression)
    tuples = _evaluator(_TupleInputs(), _TupleInputs(), batch_size=4)
    with pytest.raises(ValueError, match="x one floating-point tensor"):
        _initialize(LeaSE(), _space(), tuples)


def test_load_state_dict_before_initialize_is_applied_at_initialize():
    strategy = _run(LeaSE(gamma=1.0), _space(seed=0), _digits_evaluator(batches=2))
    state = strategy.state_dict()
    fresh = LeaSE(gamma=1.0)
    fresh.load_state_dict(state)  # NNI's Random / Evolution resume order
    _initialize(fresh, _space(seed=1), _digits_evaluator(batches=2))
    for key, value in fresh.supernet.state_dict().items():
        assert torch.equal(value, state["lease"]["supernet"][key]), key
    for key, value in fresh.oneshot_module.listener.state_dict().items():
        assert torch.equal(value, state["lease"]["listener"][key]), key
    with pytest.raises(ValueError, match="state_dict must be a dict"):
        LeaSE().load_state_dict([1, 2])


def test_the_strategy_runs_the_shared_lease_step(monkeypatch):
    """One LeaseStep.train_listener per training batch: the same code as the multi-trial trial."""
    sizes = []
    real = LeaseStep.train_listener

    def spy(self, explainer, x, y, **kwargs):
        sizes.append(len(y))
        return real(self, explainer, x, y, **kwargs)

    monkeypatch.setattr(LeaseStep, "train_listener", spy)
    _run(LeaSE(gamma=1.0), _space(), _digits_evaluator(batches=3))
    assert sizes == [16, 16, 16]
