"""Trace, per-tensor traces and the largest eigenvalue against a brute-force dense Fisher matrix (float64)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from art_fisher import (
    fisher_block_traces,
    fisher_max_eigenvalue,
    fisher_quadratic_form,
    fisher_sensitivity,
    fisher_trace,
)
from art_fisher.models._architectures import MnistCNN
from tests.art_fisher.metrics_cases import TOL, Dense, make_case, rel_err


def test_trace_and_eigenvalue_match_dense(case):
    _name, model, x, ref = case
    assert rel_err(fisher_trace(model, x), ref["trace"]) < TOL
    assert rel_err(fisher_max_eigenvalue(model, x), ref["lam"]) < TOL


def test_block_traces_match_dense(case):
    _name, model, x, ref = case
    values, names = fisher_block_traces(model, x)
    assert names == tuple(n for n, _ in model.named_parameters())
    d = Dense(model)
    want = torch.stack([torch.stack([d.fisher(xi).diagonal()[m].sum() for m in d.block_masks()]) for xi in x])
    assert values.shape == (x.shape[0], len(names))
    assert rel_err(values, want) < TOL
    assert rel_err(values.sum(1), ref["trace"]) < TOL


def test_blockwise_and_full_differ_unless_single_tensor():
    model, x = make_case("tanh")
    full = fisher_quadratic_form(model, x)
    block = fisher_quadratic_form(model, x, blockwise=True)
    assert rel_err(block, full) > 1e-3
    single, xs = make_case("single_tensor")
    assert rel_err(fisher_quadratic_form(single, xs, blockwise=True), fisher_quadratic_form(single, xs)) < 1e-12
    assert (
        rel_err(fisher_sensitivity(single, xs, blockwise=True), fisher_sensitivity(single, xs, blockwise=False)) < 1e-12
    )


def test_eigenvalue_bounds_and_top_eigenvector():
    model, x = make_case("cnn")
    trace = fisher_trace(model, x)
    lam = fisher_max_eigenvalue(model, x)
    quad = fisher_quadratic_form(model, x)
    assert bool((trace >= lam * (1 - 1e-12)).all()) and bool((lam >= quad * (1 - 1e-12)).all())
    assert rel_err(fisher_quadratic_form(model, x, direction="top_eigenvector"), lam) < TOL


@pytest.mark.parametrize("name", ["mlp", "cnn", "shared"])
def test_max_eigenvalue_bounds_every_unit_direction(name):
    model, x = make_case(name)
    lam = fisher_max_eigenvalue(model, x)
    trace = fisher_trace(model, x)
    assert bool((lam <= trace * (1 + 1e-12)).all())
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):
        direction = [torch.randn(p.shape, generator=gen, dtype=torch.float64) for p in model.parameters()]
        q = fisher_quadratic_form(model, x, direction=direction)
        assert bool((q <= lam * (1 + 1e-10)).all())
    assert bool(
        (fisher_quadratic_form(model, x, direction="label", y=torch.tensor([0, 1, 2, 3])) <= lam * (1 + 1e-10)).all()
    )
    top = fisher_quadratic_form(model, x, direction="top_eigenvector")
    assert rel_err(top, lam) < TOL
    # normalize does not apply: the top eigenvector is a unit vector by definition
    assert rel_err(fisher_quadratic_form(model, x, direction="top_eigenvector", normalize=False), lam) < TOL


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
