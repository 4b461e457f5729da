"""Retraining an exported architecture from scratch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nni_lease._data import DigitsDataset
from nni_lease._spaces import LeaseCellSpace
from nni_lease.oneshot._retrain import build_architecture, evaluate, retrain

ARCH = {"op0": "conv_3x3", "op1": "sep_conv_3x3", "input1": [1]}


def _space():
    torch.manual_seed(0)
    return LeaseCellSpace(width=8, cells=2, nodes=2)


def test_build_is_seeded_fresh_and_leaves_space_and_rng_alone():
    space = _space()
    before = {k: v.clone() for k, v in space.state_dict().items()}
    state = torch.random.get_rng_state()
    a = build_architecture(space, ARCH, seed=1)
    b = build_architecture(space, ARCH, seed=1)
    c = build_architecture(space, ARCH, seed=2)
    assert torch.equal(state, torch.random.get_rng_state())
    assert all(torch.equal(v, before[k]) for k, v in space.state_dict().items())
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(not torch.equal(sa[k], sc[k]) for k in sa if sa[k].is_floating_point())
    assert a(torch.rand(2, 1, 8, 8)).shape == (2, 10)


@pytest.mark.parametrize(
    ("architecture", "match"),
    [
        ({"op0": "conv_3x3", "op1": "skip_connect"}, r"missing \['input1'\]"),
        ({**ARCH, "op9": "conv_3x3"}, r"unknown \['op9'\]"),
        ({**ARCH, "op0": "conv_9x9"}, "not a valid sample"),
        (["conv_3x3"], "architecture must be a dict"),
    ],
)
def test_bad_architecture(architecture, match):
    with pytest.raises(ValueError, match=match):
        build_architecture(_space(), architecture)


def test_evaluate_matches_a_direct_count():
    model = build_architecture(_space(), ARCH).eval()
    data = DigitsDataset("test", limit=50)
    acc, loss = evaluate(model, data.x.numpy(), data.y.numpy(), batch_size=7)
    with torch.no_grad():
        logits = model(data.x)
    assert acc == pytest.approx(float((logits.argmax(1) == data.y).float().mean()))
    assert loss == pytest.approx(float(torch.nn.functional.cross_entropy(logits, data.y)), rel=1e-5)


def test_retrain_learns_digits():
    result = retrain(
        _space(),
        ARCH,
        DigitsDataset("train"),
        DigitsDataset("test"),
        val=DigitsDataset("val", limit=100),
        epochs=6,
        learning_rate=3e-3,
        seed=0,
    )
    assert result.test_accuracy > 0.5  # chance is 0.1
    assert result.val_accuracy is not None and 0.0 <= result.val_accuracy <= 1.0
    assert result.n_parameters == sum(p.numel() for p in result.model.parameters())
    assert not result.model.training
    assert set(result.as_dict()) == {"test_accuracy", "test_loss", "val_accuracy", "n_parameters", "seconds"}
    assert np.isfinite(result.test_loss)


@pytest.mark.parametrize(("kwargs", "match"), [(dict(epochs=0), "epochs"), (dict(learning_rate=-1.0), "learning_rate")])
def test_bad_training_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        retrain(_space(), ARCH, DigitsDataset("train", limit=10), DigitsDataset("test", limit=10), **kwargs)
