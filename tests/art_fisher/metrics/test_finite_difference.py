"""The original finite-difference algorithm: it reproduces the reference code and converges to the exact metrics."""

from __future__ import annotations

import pytest
import torch

from art_fisher import (
    fisher_quadratic_form,
    fisher_sensitivity,
    fisher_trace,
)
from tests.art_fisher.metrics_cases import make_case, rel_err
from tests.art_fisher.reference_fisher import OriginalFisher


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
