"""``art-fisher evaluate --dataset mnist`` on a small synthetic ``mnist.npz``: MNIST defaults and progress logging."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from art_fisher.cli import main
from art_fisher.metrics import fisher_trace
from art_fisher.models._architectures import ARCHITECTURES, MnistCNN, SmallCNN, train_model
from tests.fake_mnist import write_fake_mnist


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


def test_fisher_trace_of_mnist_cnn_matches_a_per_class_autograd_reference():
    torch.manual_seed(0)
    net = MnistCNN(width=2).double().eval()
    x = torch.rand(3, 1, 28, 28, dtype=torch.float64)
    got = fisher_trace(net, x)
    params = list(net.parameters())
    want = []
    for i in range(len(x)):
        log_p = F.log_softmax(net(x[i : i + 1]), dim=1)[0]
        total = torch.zeros((), dtype=torch.float64)
        for c in range(10):
            grads = torch.autograd.grad(log_p[c], params, retain_graph=True)
            total += log_p[c].exp().detach() * sum(g.pow(2).sum() for g in grads)
        want.append(total)
    torch.testing.assert_close(got, torch.stack(want), rtol=1e-8, atol=0)


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


def test_evaluate_mnist_uses_mnist_defaults_and_logs_progress_off_a_terminal(tmp_path, capsys, caplog):
    data = write_fake_mnist(tmp_path / "data")
    out = tmp_path / "out"
    with caplog.at_level(logging.INFO):
        rc = main(["evaluate", "--dataset", "mnist", "--data-dir", str(data), "--attacks", "fgsm,pgd",
                   "--detectors", "fisher_trace,max_softmax_clean", "--n-samples", "24", "--epochs", "2",
                   "--output", str(out)])  # fmt: skip
    assert rc == 0
    settings = json.loads((out / "results.json").read_text())["settings"]
    assert settings["arch"] == "mnist_cnn" and settings["eps"] == 0.3 and settings["torch_threads"] == 1
    assert settings["clean_test_accuracy"] > 0.5
    messages = [r.getMessage() for r in caplog.records]
    assert "training epoch 1/2" in " ".join(messages) and "training epoch 2/2" in " ".join(messages)
    steps = [m for m in messages if m.startswith("step ")]
    # 2 attacks, fisher_trace fitted on each, max_softmax_clean once: 5 steps, each logged once, in order.
    assert [s.split(":")[0] for s in steps] == [f"step {k}/5" for k in range(1, 6)]
    assert steps[0] == "step 1/5: attack FGSM" and steps[-1] == "step 5/5: max_softmax_clean fitted on clean"
    assert any(m.startswith("attack PGD: 24/24 images") for m in messages)
    assert "mnist / mnist_cnn" in capsys.readouterr().out


def test_evaluate_threads_option(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["evaluate", "--threads", "0"])
    assert "--threads: expected an integer from 1 to 1024; got '0'" in capsys.readouterr().err
    rc = main(["evaluate", "--attacks", "fgsm", "--detectors", "max_softmax", "--n-samples", "8", "--epochs", "1",
               "--threads", "2", "--output", str(tmp_path), "--quiet"])  # fmt: skip
    assert rc == 0 and torch.get_num_threads() == 2
    assert json.loads((tmp_path / "results.json").read_text())["settings"]["torch_threads"] == 2
