"""The evaluation's CNNs: shapes, where they save, and training's progress logging."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from art_fisher.models._architectures import ARCHITECTURES, MnistCNN, SmallCNN, train_model


@pytest.fixture(autouse=True)
def _restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_mnist_cnn_shapes_and_where_it_saves_against_small_cnn():
    x = torch.rand(3, 1, 28, 28)
    torch.manual_seed(0)
    assert MnistCNN()(x).shape == (3, 10)
    assert ARCHITECTURES["mnist_cnn"] is MnistCNN
    # The second convolution sees 14×14 instead of 28×28: a quarter of SmallCNN's multiply-adds there.
    sides = {}
    for name, net in (("small_cnn", SmallCNN()), ("mnist_cnn", MnistCNN())):
        second_conv = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)][1]
        second_conv.register_forward_hook(lambda m, i, o, name=name: sides.__setitem__(name, tuple(o.shape[-2:])))
        net(x)
    assert sides == {"small_cnn": (28, 28), "mnist_cnn": (14, 14)}


def test_train_model_logs_one_line_per_epoch_without_a_bar(caplog):
    torch.manual_seed(0)
    x, y = np.random.default_rng(0).random((20, 1, 8, 8), dtype=np.float32), np.arange(20) % 10
    with caplog.at_level(logging.INFO, logger="art_fisher.models._architectures"):
        train_model(SmallCNN(), x, y, epochs=2, batch_size=8)
    lines = [r.getMessage() for r in caplog.records if r.name == "art_fisher.models._architectures"]
    assert [line.split(":")[0] for line in lines] == ["training epoch 1/2", "training epoch 2/2"]
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="art_fisher.models._architectures"):
        train_model(SmallCNN(), x, y, epochs=2, batch_size=8, progress=True)
    assert not [r for r in caplog.records if r.name == "art_fisher.models._architectures"]
