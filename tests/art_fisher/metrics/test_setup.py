"""What every metric shares: the parameters selected, the output kinds, chunking, the model left untouched."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from art_fisher import (
    fisher_block_traces,
    fisher_max_eigenvalue,
    fisher_quadratic_form,
    fisher_sensitivity,
    fisher_trace,
)
from tests.art_fisher.metrics_cases import TOL, cached_refs, dense_refs, make_case, rel_err


def test_params_subset_is_dense_restricted():
    model, x = make_case("cnn")
    names = ["7.weight", "7.bias"]  # the last layer only
    ref = cached_refs("cnn", names=tuple(names))
    assert rel_err(fisher_trace(model, x, params=names), ref["trace"]) < TOL
    assert rel_err(fisher_quadratic_form(model, x, params=names, blockwise=True), ref["block"]) < TOL
    assert rel_err(fisher_sensitivity(model, x, params=names), ref["fis"]) < TOL
    assert rel_err(fisher_max_eigenvalue(model, x, params=names), ref["lam"]) < TOL
    # restricting really changes the numbers
    assert rel_err(fisher_trace(model, x), ref["trace"]) > 1e-3


def test_frozen_model_is_all_parameters_and_names_are_accepted():
    model, x = make_case("cnn")
    model.requires_grad_(False)
    ref = cached_refs("cnn")
    assert rel_err(fisher_trace(model, x), ref["trace"]) < TOL
    assert rel_err(fisher_quadratic_form(model, x, blockwise=True), ref["block"]) < TOL
    names = ["7.weight", "7.bias"]
    sub = cached_refs("cnn", names=tuple(names))
    assert rel_err(fisher_block_traces(model, x, params=names).values.sum(1), sub["trace"]) < TOL
    assert not any(p.requires_grad for p in model.parameters())


def test_params_default_skips_frozen_parameters():
    model, x = make_case("tanh")
    model[0].weight.requires_grad_(False)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    ref = dense_refs(model, x, names=names)
    assert rel_err(fisher_trace(model, x), ref["trace"]) < TOL
    assert model[0].weight.requires_grad is False


@pytest.mark.parametrize("output", ["log_probs", "probs"])
def test_output_kinds_give_the_same_fisher(output):
    model, x = make_case("tanh")
    wrapped = nn.Sequential(model, nn.LogSoftmax(dim=1) if output == "log_probs" else nn.Softmax(dim=1))
    ref = cached_refs("tanh")
    assert rel_err(fisher_trace(wrapped, x, output=output), ref["trace"]) < TOL
    assert rel_err(fisher_quadratic_form(wrapped, x, output=output), ref["full"]) < TOL
    assert rel_err(fisher_sensitivity(wrapped, x, output=output), ref["fis"]) < TOL


def test_chunking_does_not_change_results():
    model, x = make_case("cnn")
    for fn in (fisher_trace, fisher_quadratic_form, fisher_sensitivity):
        assert rel_err(fn(model, x, chunk_size=3), fn(model, x)) < 1e-12


def _snapshot(model):
    return (
        copy.deepcopy(model.state_dict()),
        [p.requires_grad for p in model.parameters()],
        [None if p.grad is None else p.grad.clone() for p in model.parameters()],
        [m.training for m in model.modules()],
    )


def test_model_untouched():
    model, x = make_case("cnn")
    model[0].weight.grad = torch.ones_like(model[0].weight)
    model[7].bias.requires_grad_(False)
    before = _snapshot(model)
    direction = [torch.ones_like(p) for p in model.parameters() if p.requires_grad]
    fisher_trace(model, x)
    fisher_trace(model, x, method="finite_difference")
    fisher_max_eigenvalue(model, x)
    fisher_quadratic_form(model, x, blockwise=True, method="finite_difference")
    fisher_quadratic_form(model, x, direction=direction)
    fisher_sensitivity(model, x)
    fisher_sensitivity(model, x, method="finite_difference")
    after = _snapshot(model)
    for key in before[0]:
        assert torch.equal(before[0][key], after[0][key])
    assert before[1] == after[1] and before[3] == after[3]
    assert all((a is None and b is None) or torch.equal(a, b) for a, b in zip(before[2], after[2], strict=True))
    assert model[1].training is False


def test_float32_sanity():
    model, x = make_case("cnn")
    ref = cached_refs("cnn")
    m32, x32 = model.float(), x.float()
    assert rel_err(fisher_trace(m32, x32).double(), ref["trace"]) < 1e-4
    assert rel_err(fisher_quadratic_form(m32, x32, blockwise=True).double(), ref["block"]) < 1e-4
    fis = fisher_sensitivity(m32, x32)
    assert fis.dtype == torch.float32 and rel_err(fis.double(), ref["fis"]) < 1e-3
