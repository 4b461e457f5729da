"""NNI 3.0's own strategy tests, ported to this package's strategies (LeaSE one-shot, LeaseMultiTrial).

Sources (microsoft/nni, tag v3.0; MIT licence):

- ``test/ut/nas/strategy/test_sanity.py``: the ``base`` / ``constraint`` / ``numerical`` toy spaces and the
  ``foo`` evaluator (metric normalised to 1.0 at the optimum, larger is better), run with
  ``SequentialExecutionEngine(max_model_count=30)``, then resumed with ``load_state_dict`` called
  *before* the strategy is initialised, as the upstream Random / Evolution tests do. Ported for
  :class:`LeaseMultiTrial` as upstream tests ``PolicyBasedRL``: a numerical space is refused with a
  ValueError naming categorical choices.
- ``test/algo/nas/oneshot/test_strategy.py``: ``_test_strategy`` over the ``ut.nas.nn.models`` spaces,
  with plain dataloaders and with a DataModule that builds its data in ``setup()``, and ``test_resume``.
  Changes: random 28×28 tensors instead of MNIST files (nothing is downloaded here), 2 batches of 16;
  the regression space (``multihead_attention``, tuple inputs) must give LeaSE's clear error at start;
  multi-GPU cases and the RandomOneShot-only ``test_oneshot_freeze`` / ``test_optimizer_lr_scheduler``
  (DartsLightningModule without a listener) are left out.
- ``test/ut/nas/experiment/test_experiment.py``: ``test_oneshot_sanity`` with LeaSE and
  ``test_experiment_resume`` (sequential engine) with LeaseMultiTrial. ``test_experiment_sanity`` starts
  an NNI manager and is covered by ``tests/nni_lease/test_experiment.py``.
"""

from __future__ import annotations

import logging

import nni
import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from nni.mutable import ExpressionConstraint, Mutable, MutableList, ensure_frozen
from nni.nas.evaluator import FunctionalEvaluator
from nni.nas.evaluator.pytorch import Classification, DataLoader, Regression
from nni.nas.execution import SequentialExecutionEngine
from nni.nas.experiment import NasExperiment
from nni.nas.experiment.config import NasExperimentConfig
from nni.nas.nn.pytorch import (
    Cell,
    InputChoice,
    LayerChoice,
    ModelSpace,
    MutableBatchNorm2d,
    MutableConv2d,
    MutableLinear,
    MutableMultiheadAttention,
    ParametrizedModule,
    Repeat,
)
from nni.nas.space import BaseModelSpace, RawFormatModelSpace, SimplifiedModelSpace, current_model, model_context
from torch import nn
from torch.utils.data import Dataset

from nni_lease import LeaSE
from nni_lease.multitrial._strategy import LeaseMultiTrial

torch.set_num_threads(1)


@pytest.fixture
def nni_home(tmp_path, monkeypatch):
    """NNI's experiment list (``~/nni-experiments/.experiment``) in a temporary folder."""
    from nni.tools.nnictl import config_utils

    monkeypatch.setattr(config_utils.Experiments.__init__, "__defaults__", (str(tmp_path / "nni-experiments"),))
    return tmp_path


# ----------------------------------------------------------------------------- test_sanity.py
@nni.trace
class MyModelSpace(BaseModelSpace):
    def __init__(self, mutables: list[Mutable]):
        self.mutables = MutableList(mutables)
        if current_model() is not None:
            self.numbers = ensure_frozen(self.mutables)

    def call(self, x):
        return sum(n for n in self.numbers if n is not None) + x

    def leaf_mutables(self, is_leaf):
        yield from self.mutables.leaf_mutables(is_leaf)

    def check_contains(self, sample):
        for mutable in self.mutables:
            exc = mutable.check_contains(sample)
            if exc is not None:
                return exc
        return None

    def freeze(self, sample):
        with model_context(sample):
            return MyModelSpace(self.mutables)


def foo(model, a, optimal, minimal):
    nni.report_intermediate_result(a)
    nni.report_final_result((model.call(a) - minimal) / (optimal - minimal))


@pytest.fixture(params=["base", "constraint", "numerical"])
def named_model_space(request):
    if request.param == "base":
        model = MyModelSpace([nni.choice("a", [1, 2, 3]), nni.choice("b", [4, 5, 6, 7])])
        evaluator = FunctionalEvaluator(foo, a=nni.choice("c", [0, 1]), optimal=11.0, minimal=5.0)
    if request.param == "constraint":
        a, b = nni.choice("a", [1, 2, 3]), nni.choice("b", [4, 5, 6, 7])
        model = MyModelSpace([a, b, ExpressionConstraint((a + b) % 2 == 1, label="odd")])
        evaluator = FunctionalEvaluator(foo, a=nni.choice("c", [0, 1]), optimal=10.0, minimal=5.0)
    if request.param == "numerical":
        model = MyModelSpace([nni.quniform("a", 1, 3, 0.75), nni.quniform("b", 4, 7, 1)])
        evaluator = FunctionalEvaluator(foo, a=1, optimal=11.0, minimal=6.0)
    return request.param, SimplifiedModelSpace.from_model(model, evaluator)


@pytest.fixture
def engine():
    return SequentialExecutionEngine(max_model_count=30)


def test_lease_multitrial(named_model_space, engine):
    name, model_space = named_model_space
    strategy = LeaseMultiTrial(seed=0)
    assert repr(strategy) == "LeaseMultiTrial(learning_rate=0.5, baseline_decay=0.7, seed=0)"
    if name == "numerical":
        with pytest.raises(ValueError, match="categorical"):
            strategy(model_space, engine)
        return

    strategy(model_space, engine)
    models = list(engine.list_models())
    assert len(models) == 30
    if name == "constraint":  # invalid samples are skipped, as NNI's Random does
        assert all((m.sample["a"] + m.sample["b"]) % 2 == 1 for m in models)
        assert strategy.state_dict()["n_invalid"] > 0
    # larger is better, as for every NNI strategy: the optimum (normalised to 1.0) comes first
    assert next(strategy.list_models()).metric == 1.0

    with pytest.raises(RuntimeError, match="already been initialized"):
        strategy(model_space, engine)

    # Strategy resume, in the upstream order: load_state_dict before initialize.
    state_dict = strategy.state_dict()
    strategy2 = LeaseMultiTrial(seed=0)
    strategy2.load_state_dict(state_dict)
    engine.max_model_count += 10
    strategy2(model_space, engine)
    assert len(list(engine.list_models())) == engine.max_model_count
    assert strategy2.history[:30] == strategy.history and len(strategy2.history) == 40


# ----------------------------------------------------------------------------- ut/nas/nn/models.py
class DepthwiseSeparableConv(nn.Module):
    def __init__(self, in_ch, out_ch):
        super().__init__()
        self.depthwise = nn.Conv2d(in_ch, in_ch, kernel_size=3, groups=in_ch)
        self.pointwise = nn.Conv2d(in_ch, out_ch, kernel_size=1)

    def forward(self, x):
        return self.pointwise(self.depthwise(x))


class SimpleNet(ModelSpace):
    def __init__(self, value_choice=True):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, 1)
        self.conv2 = LayerChoice([nn.Conv2d(32, 64, 3, 1), DepthwiseSeparableConv(32, 64)], label="conv")
        self.maxpool = nn.MaxPool2d(2)
        self.dropout1 = LayerChoice([nn.Dropout(0.25), nn.Dropout(0.5), nn.Dropout(0.75)], label="dropout")
        self.dropout2 = nn.Dropout(0.5)
        hidden = nni.choice("hidden", [32, 64, 128]) if value_choice else 64
        self.fc1 = MutableLinear(9216, hidden)
        self.fc2 = MutableLinear(hidden, 10)
        self.rpfc = nn.Linear(10, 10)
        self.input_ch = InputChoice(2, 1, label="input")

    def forward(self, x):
        x = F.relu(self.conv1(x))
        x = self.maxpool(self.conv2(x))
        x = torch.flatten(self.dropout1(x), 1)
        x = F.relu(self.fc1(x))
        x = self.fc2(self.dropout2(x))
        x1 = self.rpfc(x)
        x = self.input_ch([x, x1])
        return F.log_softmax(x, dim=1)


class MultiHeadAttentionNet(ModelSpace):
    def __init__(self, head_count=1):
        super().__init__()
        embed_dim = nni.choice("embed_dim", [32, 64])
        self.linear1 = MutableLinear(128, embed_dim)
        self.mhatt = MutableMultiheadAttention(embed_dim, head_count)
        self.linear2 = MutableLinear(embed_dim, 1)

    def forward(self, batch):
        query, key, value = batch
        q, k, v = self.linear1(query), self.linear1(key), self.linear1(value)
        output, _ = self.mhatt(q, k, v, need_weights=False)
        return F.relu(self.linear2(output))


class ValueChoiceConvNet(ModelSpace):
    def __init__(self):
        super().__init__()
        ch1 = nni.choice("ch1", [16, 32])
        kernel = nni.choice("kernel", [3, 5])
        self.conv1 = MutableConv2d(1, ch1, kernel, padding=kernel // 2)
        self.batch_norm = MutableBatchNorm2d(ch1)
        self.maxpool = nn.MaxPool2d(2)
        self.conv2 = MutableConv2d(ch1, 64, 3)
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        x = F.relu(self.batch_norm(self.conv1(x)))
        x = self.maxpool(self.conv2(x))
        return F.log_softmax(self.fc(torch.mean(x, (2, 3))), dim=1)


class RepeatNet(ModelSpace):
    def __init__(self):
        super().__init__()
        ch1 = nni.choice("ch1", [16, 32])
        kernel = nni.choice("kernel", [3, 5])
        self.conv1 = MutableConv2d(1, ch1, kernel, padding=kernel // 2)
        self.batch_norm = MutableBatchNorm2d(ch1)
        self.maxpool = nn.MaxPool2d(2)
        self.conv2 = MutableConv2d(ch1, 64, 3, padding=1)
        self.fc = nn.Linear(64, 10)
        self.rpfc = Repeat(nn.Linear(10, 10), (1, 4), label="rep")

    def forward(self, x):
        x = F.relu(self.batch_norm(self.conv1(x)))
        x = self.maxpool(self.conv2(x))
        x = self.rpfc(self.fc(torch.mean(x, (2, 3))))
        return F.log_softmax(x, dim=1)


class CellNet(ModelSpace):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 5, 7, stride=4)
        self.cells = Repeat(
            lambda index: Cell(
                {
                    "conv1": lambda _, __, inp: nn.Conv2d(
                        (5 if index == 0 else 3 * 4) if inp is not None and inp < 1 else 4, 4, 1
                    ),
                    "conv2": lambda _, __, inp: nn.Conv2d(
                        (5 if index == 0 else 3 * 4) if inp is not None and inp < 1 else 4, 4, 3, padding=1
                    ),
                },
                3,
                merge_op="loose_end",
                label=f"cell{index}",
            ),
            (1, 3),
            label="rep",
        )
        self.fc = nn.Linear(3 * 4, 10)

    def forward(self, x):
        x = self.cells(self.stem(x))
        return F.log_softmax(self.fc(torch.mean(x, (2, 3))), dim=1)


class MyOp(ParametrizedModule):
    def __init__(self, some_ch):
        super().__init__()
        self.some_ch = some_ch
        self.batch_norm = nn.BatchNorm2d(some_ch)

    def forward(self, x):
        return self.batch_norm(x)


class CustomOpValueChoiceNet(ModelSpace):
    def __init__(self):
        super().__init__()
        ch1 = nni.choice("ch1", [16, 32])
        kernel = nni.choice("kernel", [3, 5])
        self.conv1 = MutableConv2d(1, ch1, kernel, padding=kernel // 2)
        self.batch_norm = MyOp(ch1)
        self.conv2 = MutableConv2d(ch1, 64, 3, padding=1)
        self.maxpool = nn.MaxPool2d(2)
        self.dropout1 = LayerChoice([nn.Dropout(0.25), nn.Dropout(0.5), nn.Dropout(0.75)], label="dropout")
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        x = F.relu(self.batch_norm(self.conv1(x)))
        x = self.maxpool(self.conv2(x))
        return F.log_softmax(self.fc(torch.mean(x, (2, 3))), dim=1)


MODELS = {
    "simple": lambda: SimpleNet(False),
    "simple_value_choice": SimpleNet,
    "value_choice": ValueChoiceConvNet,
    "repeat": RepeatNet,
    "cell": CellNet,
    "multihead_attention": MultiHeadAttentionNet,
    "custom_op": CustomOpValueChoiceNet,
}


# ----------------------------------------------------------------------------- test_strategy.py (one-shot)
class RandomMnistDataset(Dataset):
    def __init__(self, length, seed=0):
        gen = torch.Generator().manual_seed(seed)
        self.inputs = torch.randn(length, 1, 28, 28, generator=gen)
        self.targets = torch.randint(10, (length,), generator=gen)

    def __getitem__(self, index):
        return self.inputs[index], self.targets[index]

    def __len__(self):
        return len(self.targets)


class _AttentionRandDataset(Dataset):
    def __getitem__(self, index):
        return (torch.rand(1, 128), torch.rand(1, 128), torch.rand(1, 128)), torch.rand(1, 1)

    def __len__(self):
        return 16


class MNISTDataModule(pl.LightningDataModule):
    """Upstream's DataModule, on random tensors: the data sets exist only after ``setup``."""

    def setup(self, stage):
        self.mnist_train, self.mnist_val = RandomMnistDataset(32, 0), RandomMnistDataset(32, 1)

    def train_dataloader(self):
        return DataLoader(self.mnist_train, batch_size=16)

    def val_dataloader(self):
        return DataLoader(self.mnist_val, batch_size=16)


def _model_and_evaluator(name, root, max_epochs=1, datamodule=False):
    kwargs = dict(
        max_epochs=max_epochs,
        limit_train_batches=2,
        default_root_dir=str(root),
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    if name == "multihead_attention":
        evaluator = Regression(
            train_dataloaders=DataLoader(_AttentionRandDataset(), batch_size=8),
            val_dataloaders=DataLoader(_AttentionRandDataset(), batch_size=8),
            **kwargs,
        )
    elif datamodule:
        evaluator = Classification(datamodule=MNISTDataModule(), num_classes=10, **kwargs)
    else:
        evaluator = Classification(
            train_dataloaders=DataLoader(RandomMnistDataset(32, 0), batch_size=16),
            val_dataloaders=DataLoader(RandomMnistDataset(32, 1), batch_size=16),
            num_classes=10,
            **kwargs,
        )
    torch.manual_seed(0)
    return MODELS[name](), evaluator


def _test_strategy(strategy, model, evaluator, expect):
    engine = SequentialExecutionEngine()
    if expect == "success":
        strategy(RawFormatModelSpace(model, evaluator), engine)
        assert len(list(strategy.list_models())) == 1
        assert strategy.state_dict().get("ckpt_path")
    elif expect == "unsupported":  # DARTS's own refusal, inherited
        with pytest.raises(TypeError, match="not supported"):
            strategy(RawFormatModelSpace(model, evaluator), engine)
    else:  # LeaSE explains class predictions: a clear error before any training
        with pytest.raises(ValueError, match="classification evaluator"):
            strategy(RawFormatModelSpace(model, evaluator), engine)


@pytest.mark.parametrize(
    ("name", "datamodule", "expect"),
    [
        ("simple", False, "success"),
        ("simple", True, "success"),
        ("simple_value_choice", False, "success"),
        ("value_choice", True, "success"),
        ("repeat", False, "success"),
        ("cell", False, "success"),
        ("custom_op", False, "unsupported"),
        ("multihead_attention", False, "regression"),
    ],
)
def test_lease(name, datamodule, expect, tmp_path):
    model, evaluator = _model_and_evaluator(name, tmp_path, datamodule=datamodule)
    strategy = LeaSE()
    assert repr(strategy) == "LeaSE()"
    _test_strategy(strategy, model, evaluator, expect)


def test_resume(caplog, tmp_path):
    model, evaluator = _model_and_evaluator("simple", tmp_path)
    engine = SequentialExecutionEngine()
    strategy1 = LeaSE(gamma=0.5)
    strategy1(RawFormatModelSpace(model, evaluator), engine)
    state_dict = strategy1.state_dict()
    assert "ckpt_path" in state_dict

    model, evaluator = _model_and_evaluator("simple", tmp_path, max_epochs=2)
    strategy2 = LeaSE(gamma=0.5)
    strategy2.initialize(RawFormatModelSpace(model, evaluator), engine)
    with caplog.at_level(logging.DEBUG, logger="nni"):
        strategy2.load_state_dict(state_dict)
        strategy2.run()
    assert state_dict["ckpt_path"] in caplog.text


# ----------------------------------------------------------------------------- test_experiment.py
def test_oneshot_sanity(nni_home):
    evaluator = Classification(
        num_classes=10,
        train_dataloaders=DataLoader(RandomMnistDataset(32, 0), 16),
        val_dataloaders=DataLoader(RandomMnistDataset(32, 1), 16),
        max_epochs=1,
        default_root_dir=str(nni_home),
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    exp = NasExperiment(SimpleNet(), evaluator, LeaSE())
    exp.config.experiment_working_directory = str(nni_home / "records")
    exp.run()
    assert isinstance(exp.export_top_models(formatter="dict")[0], dict)
    exp.stop()


def simple_evaluation(model, num_batches=2):
    train_loader = DataLoader(RandomMnistDataset(64, 0), 32, shuffle=True)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    for _, (x, y) in zip(range(num_batches), train_loader, strict=False):
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    accurate, total = 0, 0
    with torch.no_grad():
        for x, y in DataLoader(RandomMnistDataset(32, 1), 32):
            accurate += (model(x).argmax(1) == y).sum().item()
            total += y.shape[0]
    nni.report_final_result(accurate / total)


def test_experiment_resume(nni_home):
    evaluator = FunctionalEvaluator(simple_evaluation)
    config = NasExperimentConfig("sequential", "raw")
    config.max_trial_number = 3
    config.experiment_working_directory = str(nni_home / "records")
    strategy = LeaseMultiTrial(seed=0)
    exp = NasExperiment(SimpleNet(), evaluator, strategy, config)
    exp.run_or_resume(debug=True)
    exp.stop()
    assert len(strategy.history) == 3

    strategy2 = LeaseMultiTrial(seed=0)
    config = NasExperimentConfig("sequential", "raw")
    config.max_trial_number = 5
    config.experiment_working_directory = str(nni_home / "records")
    exp = NasExperiment(SimpleNet(), evaluator, strategy2, config, id=exp.id)
    exp.run_or_resume(debug=True)
    exp.stop()
    assert strategy2.history[:3] == strategy.history  # the checkpointed policy state continued
    assert len(strategy2.history) > 3
