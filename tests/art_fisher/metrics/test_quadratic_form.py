"""The quadratic form along directions against a brute-force dense Fisher matrix (float64)."""

from __future__ import annotations

import pytest
import torch

from art_fisher import (
    fisher_quadratic_form,
    fisher_sensitivity,
)
from tests.art_fisher.metrics_cases import TOL, Dense, cached_refs, make_case, rel_err


@pytest.mark.parametrize("blockwise", [False, True])
def test_quadratic_form_matches_dense(case, blockwise):
    _name, model, x, ref = case
    got = fisher_quadratic_form(model, x, blockwise=blockwise)
    assert rel_err(got, ref["block" if blockwise else "full"]) < TOL


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


def test_unnormalised_user_direction_scales_quadratically():
    model, x = make_case("shared")  # the torch.func JVP fallback for shared weights
    gen = torch.Generator().manual_seed(1)
    direction = [torch.randn(p.shape, generator=gen, dtype=torch.float64) for p in model.parameters()]
    sq = sum(float(d.pow(2).sum()) for d in direction)
    for blockwise in (False, True):
        unit = fisher_quadratic_form(model, x, direction=direction, blockwise=blockwise)
        raw = fisher_quadratic_form(model, x, direction=direction, blockwise=blockwise, normalize=False)
        assert rel_err(raw, sq * unit) < 1e-12
        d = Dense(model)
        v = torch.cat([t.flatten() for t in direction])
        ref = torch.stack([d.quad(xi, v, blockwise) for xi in x])
        assert rel_err(raw, ref) < TOL
