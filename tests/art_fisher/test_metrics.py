"""Exact metrics against a brute-force dense Fisher matrix (float64), and the original algorithm."""

from __future__ import annotations

import copy
import functools

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
from tests.art_fisher.metrics_cases import EXACT_CASES, Dense, make_case
from tests.art_fisher.reference_fisher import OriginalFisher

TOL = 1e-8


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-300))


@functools.cache
def cached_refs(name: str, names: tuple[str, ...] | None = None, label: tuple[int, ...] | None = None):
    model, x = make_case(name)
    return dense_refs(model, x, None if names is None else list(names), label=label)


def dense_refs(model, x, names=None, output="logits", label=None):
    d = Dense(model, names, output)
    out = {k: [] for k in ("trace", "lam", "full", "block", "full_raw", "fis", "fis_full")}
    for i, xi in enumerate(x):
        f = d.fisher(xi)
        out["trace"].append(f.trace())
        out["lam"].append(torch.linalg.eigvalsh(f)[-1])
        g = d.predicted_gradient(xi, None if label is None else int(label[i]))
        v = g / g.norm()
        out["full"].append(d.quad(xi, v, False))
        out["block"].append(d.quad(xi, v, True))
        out["full_raw"].append(d.quad(xi, g, False))
        out["fis"].append(d.sensitivity(xi, v, True))
        out["fis_full"].append(d.sensitivity(xi, v, False))
    return {k: torch.stack(v) for k, v in out.items()}


@pytest.fixture(scope="module", params=EXACT_CASES)
def case(request):
    model, x = make_case(request.param)
    return request.param, model, x, cached_refs(request.param)


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


@pytest.mark.parametrize("blockwise", [False, True])
def test_quadratic_form_matches_dense(case, blockwise):
    _name, model, x, ref = case
    got = fisher_quadratic_form(model, x, blockwise=blockwise)
    assert rel_err(got, ref["block" if blockwise else "full"]) < TOL


@pytest.mark.parametrize("blockwise", [False, True])
def test_sensitivity_matches_dense(case, blockwise):
    name, model, x, ref = case
    if name == "residual":  # LayerNorm has a layer rule: plain autograd's second derivatives, no torch.func
        got = fisher_sensitivity(model, x, blockwise=blockwise, method="finite_difference", fd_step=1e-5)
        assert rel_err(got, ref["fis" if blockwise else "fis_full"]) < 1e-6  # the plain-autograd oracle
        return
    got = fisher_sensitivity(model, x, blockwise=blockwise)
    assert got.shape == x.shape
    assert rel_err(got, ref["fis" if blockwise else "fis_full"]) < TOL


def test_normalize_false_is_squared_norm_times_normalised():
    model, x = make_case("cnn")
    ref = cached_refs("cnn")
    raw = fisher_quadratic_form(model, x, normalize=False)
    assert rel_err(raw, ref["full_raw"]) < TOL
    d = Dense(model)
    sq = torch.stack([d.predicted_gradient(xi).pow(2).sum() for xi in x])
    assert rel_err(raw, sq * fisher_quadratic_form(model, x)) < TOL
    fis_raw = fisher_sensitivity(model, x, normalize=False)
    assert rel_err(fis_raw, sq.view(-1, 1, 1, 1) * fisher_sensitivity(model, x)) < TOL


def test_label_direction_matches_dense():
    model, x = make_case("mlp")
    y = torch.tensor([3, 0, 1, 2])
    ref = cached_refs("mlp", label=(3, 0, 1, 2))
    assert rel_err(fisher_quadratic_form(model, x, direction="label", y=y), ref["full"]) < TOL
    assert rel_err(fisher_sensitivity(model, x, direction="label", y=y), ref["fis"]) < TOL


@pytest.mark.parametrize("blockwise", [False, True])
def test_user_direction_matches_dense(blockwise):
    model, x = make_case("cnn")
    gen = torch.Generator().manual_seed(3)
    direction = [torch.randn(p.shape, generator=gen, dtype=torch.float64) for p in model.parameters()]
    d = Dense(model)
    v = torch.cat([t.flatten() for t in direction])
    v = v / v.norm()
    ref_q = torch.stack([d.quad(xi, v, blockwise) for xi in x])
    ref_s = torch.stack([d.sensitivity(xi, v, blockwise) for xi in x])
    assert rel_err(fisher_quadratic_form(model, x, direction=direction, blockwise=blockwise), ref_q) < TOL
    assert rel_err(fisher_sensitivity(model, x, direction=direction, blockwise=blockwise), ref_s) < TOL


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


# --- method="finite_difference" against the original algorithm -------------------------------------


@pytest.mark.parametrize("name", ["tanh", "cnn"])
def test_finite_difference_reproduces_the_original(name):
    model, x = make_case(name)
    x = x[:2]
    ref = OriginalFisher(model)
    q_ref, s_ref, t_ref = [], [], []
    for xi in x:
        v = ref.predicted_direction(xi[None])
        q_ref.append(ref.quadratic_form(xi[None], v, 1e-3))
        s_ref.append(ref.sensitivity(xi[None], v, 1e-3)[0])
        t_ref.append(ref.trace(xi[None]))
    q = fisher_quadratic_form(model, x, blockwise=True, method="finite_difference", fd_step=1e-3)
    s = fisher_sensitivity(model, x, method="finite_difference", fd_step=1e-3)
    t = fisher_trace(model, x, method="finite_difference")
    assert rel_err(q, torch.tensor(q_ref, dtype=q.dtype)) < 1e-9
    assert rel_err(s, torch.stack(s_ref)) < 1e-7
    assert rel_err(t, torch.tensor(t_ref, dtype=t.dtype)) < 1e-12
    assert rel_err(t, fisher_trace(model, x)) < 1e-12  # the original trace is exact


def test_finite_difference_converges_to_exact_on_smooth_net():
    model, x = make_case("tanh")
    exact_q = fisher_quadratic_form(model, x, blockwise=True)
    exact_s = fisher_sensitivity(model, x)
    errs_q, errs_s = [], []
    for eps in (1e-2, 1e-3, 1e-4):
        errs_q.append(
            rel_err(fisher_quadratic_form(model, x, blockwise=True, method="finite_difference", fd_step=eps), exact_q)
        )
        errs_s.append(rel_err(fisher_sensitivity(model, x, method="finite_difference", fd_step=eps), exact_s))
    # central differences: the error falls like ε² (a factor ~100 per decade)
    for errs in (errs_q, errs_s):
        assert errs[0] / errs[1] > 50 and errs[1] / errs[2] > 50 and errs[2] < 1e-7
    full_fd = fisher_quadratic_form(model, x, method="finite_difference", fd_step=1e-4)
    assert rel_err(full_fd, fisher_quadratic_form(model, x)) < 1e-7
