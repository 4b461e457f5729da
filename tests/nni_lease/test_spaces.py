"""The small LeaSE cell space: its choices, shapes, frozen models and one-shot supernet."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from nni.nas.strategy import DARTS

from nni_lease._spaces import OPERATIONS, LeaseCellSpace, build_operation


def test_choices_and_labels():
    space = LeaseCellSpace(width=4, cells=2, nodes=3)
    choices = space.simplify()
    assert sorted(choices) == ["input1", "input2", "op0", "op1", "op2"]
    assert list(choices["op0"].values) == list(OPERATIONS)
    assert list(choices["input2"].values) == [0, 1, 2]
    unshared = LeaseCellSpace(width=4, cells=2, nodes=2, shared_cells=False)
    assert sorted(unshared.simplify()) == [
        "cell0_input1",
        "cell0_op0",
        "cell0_op1",
        "cell1_input1",
        "cell1_op0",
        "cell1_op1",
    ]


@pytest.mark.parametrize(("channels", "side"), [(1, 8), (3, 32)])
def test_space_and_frozen_models_return_logits(channels, side):
    torch.manual_seed(0)
    space = LeaseCellSpace(in_channels=channels, n_classes=7, width=4, cells=3, nodes=2, image_size=side)
    x = torch.rand(2, channels, side, side)
    assert space(x).shape == (2, 7)
    for op in OPERATIONS:
        model = space.freeze({"op0": op, "op1": "skip_connect", "input1": [1]})
        assert model(x).shape == (2, 7)


@pytest.mark.parametrize("name", OPERATIONS)
def test_operations_keep_the_shape(name):
    assert build_operation(name, 3)(torch.rand(2, 3, 5, 5)).shape == (2, 3, 5, 5)


def test_darts_supernet_of_the_space_runs_and_has_architecture_weights():
    torch.manual_seed(0)
    space = LeaseCellSpace(width=4, cells=2, nodes=2)
    supernet = DARTS().mutate_model(space)
    out = supernet(torch.rand(3, 1, 8, 8))
    assert out.shape == (3, 10)
    out.sum().backward()
    alphas = [p for name, p in supernet.named_parameters() if "arch" in name or name.endswith("_alpha")]
    assert alphas and any(p.grad is not None and p.grad.abs().sum() > 0 for p in alphas)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(width=0), r"width must be an int in \[1, 4096\]"),
        (dict(cells=-1), r"cells must be an int in \[1, 64\]"),
        (dict(operations=[]), "operations must not be empty"),
        (dict(operations=["conv_9x9"]), "unknown"),
        (dict(operations=["conv_3x3", "conv_3x3"]), "must not repeat"),
        (dict(operations=["conv_3x3"], nodes=1), "nothing to search"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LeaseCellSpace(**kwargs)


def test_unknown_operation_name():
    with pytest.raises(ValueError, match="operation name must be one of"):
        build_operation("conv_9x9", 2)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"in_channels": 1, "n_classes": 10, "width": 8, "cells": 2, "nodes": 2, "image_size": 8},
        {"in_channels": 3, "n_classes": 7, "width": 5, "cells": 3, "nodes": 3, "image_size": 32},
        {
            "in_channels": 1,
            "n_classes": 10,
            "width": 4,
            "cells": 2,
            "nodes": 2,
            "shared_cells": False,
            "operations": ["conv_3x3", "skip_connect", "dil_conv_3x3"],
        },
    ],
)
def test_lease_cell_parameters_counts_the_space_and_its_networks(kwargs):
    from nni_lease._spaces import LeaseCellSpace, build_space_on_meta, lease_cell_parameters
    from nni_lease.oneshot._retrain import build_architecture

    space = LeaseCellSpace(**kwargs)
    assert lease_cell_parameters(**kwargs) == sum(p.numel() for p in space.parameters())
    rng = np.random.default_rng(0)
    for _ in range(3):
        sample = {k: v.random(random_state=rng) if hasattr(v, "random") else v.default()
                  for k, v in space.simplify().items()}  # fmt: skip
        net = build_architecture(space, sample, seed=1)
        assert lease_cell_parameters(**kwargs, architecture=sample) == sum(p.numel() for p in net.parameters())
        on_meta = build_architecture(build_space_on_meta("LeaseCellSpace", **kwargs), sample, seed=1)
        real, meta = net.state_dict(), on_meta.state_dict()
        assert real.keys() == meta.keys() and all(torch.equal(real[k], meta[k]) for k in real)


def test_darts_architectures_built_from_the_meta_space_are_the_real_ones():
    from nni_lease._spaces import build_space, build_space_on_meta
    from nni_lease.oneshot._retrain import build_architecture

    kwargs = {"in_channels": 1, "n_classes": 10, "width": 2, "cells": 3}
    real_space = build_space("darts", **kwargs)
    sample = {k: v.default() for k, v in real_space.simplify().items()}
    real = build_architecture(real_space, sample, seed=2).state_dict()
    meta = build_architecture(build_space_on_meta("darts", **kwargs), sample, seed=2).state_dict()
    assert real.keys() == meta.keys() and all(torch.equal(real[k], meta[k]) for k in real)
