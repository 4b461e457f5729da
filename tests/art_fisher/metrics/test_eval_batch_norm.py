"""The engine's eval-mode batch norm: PyTorch's output, the affine map's backward, and only where it applies."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from art_fisher import metrics
from art_fisher.metrics._engine._eval_batch_norm import (
    CheapBackward,
    cheaper_batch_norms,
    eval_batch_norm,
    is_eval_batch_norm,
)
from tests.art_fisher.metrics_cases import per_class_reference
from tests.art_fisher.model_families import randomise_norms


@pytest.mark.parametrize("shape", [(3, 4), (3, 4, 5), (3, 4, 5, 2), (2, 4, 3, 2, 2)])
@pytest.mark.parametrize("affine", [True, False])
def test_output_and_first_and_second_derivatives_match_pytorch(shape, affine):
    torch.manual_seed(0)
    c = shape[1]
    mean, var = torch.randn(c, dtype=torch.float64), torch.rand(c, dtype=torch.float64) + 0.5
    weight = torch.randn(c, dtype=torch.float64) if affine else None
    bias = torch.randn(c, dtype=torch.float64) if affine else None
    a = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    want = F.batch_norm(a, mean, var, weight, bias, False, 0.1, 1e-3)
    got = eval_batch_norm(a, mean, var, weight, bias, 1e-3)
    torch.testing.assert_close(got, want, rtol=1e-15, atol=1e-15)
    g = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    (gw,) = torch.autograd.grad(want, a, g, create_graph=True)
    (gg,) = torch.autograd.grad(got, a, g, create_graph=True)
    torch.testing.assert_close(gg, gw, rtol=1e-14, atol=1e-15)
    h = torch.randn(shape, dtype=torch.float64)
    # the input-gradient is linear in the cotangent (and does not depend on the input)
    torch.testing.assert_close(torch.autograd.grad(gg, g, h)[0], torch.autograd.grad(gw, g, h)[0], rtol=1e-14, atol=0)
    assert torch.autograd.gradgradcheck(lambda t: eval_batch_norm(t, mean, var, weight, bias, 1e-3), (a,))


def test_the_mode_takes_only_eval_calls_without_parameter_gradients():
    torch.manual_seed(0)
    bn = randomise_norms(nn.BatchNorm2d(3)).eval()
    a = torch.randn(2, 3, 4, 4, requires_grad=True)
    with CheapBackward():
        assert not is_eval_batch_norm(bn(a).grad_fn)  # parameters that need a gradient: PyTorch's own
    bn.requires_grad_(False)
    with CheapBackward():
        out = bn(a)
        assert is_eval_batch_norm(out.grad_fn)
        torch.testing.assert_close(
            out, F.batch_norm(a, bn.running_mean, bn.running_var, bn.weight, bn.bias), rtol=0, atol=0
        )
        bn.train()
        assert not is_eval_batch_norm(bn(a).grad_fn)  # batch statistics
        bn.eval()
        assert not is_eval_batch_norm(nn.BatchNorm2d(3, track_running_stats=False).eval()(a).grad_fn)
        assert not is_eval_batch_norm(
            F.batch_norm(a, bn.running_mean, bn.running_var, bn.weight.requires_grad_(True)).grad_fn
        )


def test_metrics_of_batch_norm_models_keep_float64_exactness_and_the_model():
    """The engine's passes run the cheaper batch norm; the values are the per-class reference's."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(inplace=True), nn.Flatten(), nn.Linear(64, 3)
    )
    model = randomise_norms(model).double().eval()
    x = torch.randn(5, 2, 4, 4, dtype=torch.float64)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    want = per_class_reference(model, x)
    torch.testing.assert_close(metrics.fisher_trace(model, x), want["trace"], rtol=1e-10, atol=0)
    torch.testing.assert_close(metrics.fisher_quadratic_form(model, x), want["quad"], rtol=1e-10, atol=0)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.requires_grad and p.grad is None for p in model.parameters())


class _BatchNormAct(nn.BatchNorm2d):
    """A batch norm with its activation in its own forward (timm's ``BatchNormAct2d``)."""

    def forward(self, x):
        return torch.relu(
            F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)
        )


class _RaisesInside(_BatchNormAct):
    def forward(self, x):
        super().forward(x)
        raise RuntimeError("boom")


def test_cheaper_batch_norms_on_plain_modules_and_subclasses_and_cleans_up():
    torch.manual_seed(0)
    plain = randomise_norms(nn.BatchNorm2d(3)).eval().requires_grad_(False)
    act = randomise_norms(_BatchNormAct(3)).eval().requires_grad_(False)
    a = torch.randn(2, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    plain.double(), act.double()
    want_plain, want_act = plain(a), act(a)
    with torch.enable_grad(), cheaper_batch_norms([plain, act]):
        got_plain, got_act = plain(a), act(a)
        assert torch.is_grad_enabled()
    assert is_eval_batch_norm(got_plain.grad_fn)
    assert is_eval_batch_norm(got_act.grad_fn.next_functions[0][0])  # beneath the activation
    for got, want in ((got_plain, want_plain), (got_act, want_act)):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
        g = torch.randn_like(want)
        torch.testing.assert_close(
            torch.autograd.grad(got, a, g)[0], torch.autograd.grad(want, a, g, retain_graph=True)[0], rtol=1e-14, atol=0
        )
    assert not plain._forward_pre_hooks and not plain._forward_hooks and not act._forward_pre_hooks
    # a forward that raises inside the mode (subclass) or with the gradient switched off (plain module)
    failing = randomise_norms(_RaisesInside(3)).eval().requires_grad_(False).double()
    modes_before = torch._C._len_torch_function_stack()
    with pytest.raises(RuntimeError, match="boom"), torch.enable_grad(), cheaper_batch_norms([failing]):
        failing(a)
    assert torch._C._len_torch_function_stack() == modes_before
    with torch.enable_grad():
        with pytest.raises(ValueError, match="expected 4D input"), cheaper_batch_norms([plain]):
            plain(a[0])  # raises with the gradient switched off for the call
        assert torch.is_grad_enabled()
    with torch.no_grad(), cheaper_batch_norms([plain]):
        assert plain(a).grad_fn is None and not torch.is_grad_enabled()


class _SharedBatchNorm(nn.Module):
    """One batch norm called twice in a forward pass (its parameters go to ``torch.func``)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn, self.fc = nn.Conv2d(3, 3, 3, padding=1), nn.BatchNorm2d(3), nn.Linear(48, 3)

    def forward(self, x):
        return self.fc(self.bn(self.conv(self.bn(x))).flatten(1))


_VARIANTS = {
    "BatchNorm1d on (N, C)": (
        lambda: nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3)),
        (6,),
    ),
    "BatchNorm1d on (N, C, L)": (
        lambda: nn.Sequential(nn.Conv1d(2, 4, 3), nn.BatchNorm1d(4), nn.Flatten(), nn.Linear(16, 3)),
        (2, 6),
    ),
    "BatchNorm3d": (
        lambda: nn.Sequential(nn.Conv3d(1, 2, 2), nn.BatchNorm3d(2), nn.Flatten(), nn.Linear(54, 3)),
        (1, 4, 4, 4),
    ),
    "not affine": (
        lambda: nn.Sequential(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3, affine=False), nn.Flatten(), nn.Linear(12, 3)),
        (2, 4, 4),
    ),
    "momentum None": (
        lambda: nn.Sequential(
            nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3, momentum=None), nn.Tanh(), nn.Flatten(), nn.Linear(12, 3)
        ),
        (2, 4, 4),
    ),
    "SyncBatchNorm (own forward)": (
        lambda: nn.Sequential(nn.Conv2d(2, 3, 3), nn.SyncBatchNorm(3), nn.Flatten(), nn.Linear(12, 3)),
        (2, 4, 4),
    ),
    "called twice": (_SharedBatchNorm, (3, 4, 4)),
}


@pytest.mark.parametrize("name", list(_VARIANTS))
def test_batch_norm_variants_stay_exact(name):
    make, shape = _VARIANTS[name]
    torch.manual_seed(0)
    model = randomise_norms(make()).double().eval()
    x = torch.randn(5, *shape, dtype=torch.float64)
    want = per_class_reference(model, x)
    torch.testing.assert_close(metrics.fisher_trace(model, x), want["trace"], rtol=1e-10, atol=0)
    torch.testing.assert_close(metrics.fisher_max_eigenvalue(model, x), want["lam"], rtol=1e-10, atol=0)
    torch.testing.assert_close(metrics.fisher_quadratic_form(model, x), want["quad"], rtol=1e-10, atol=0)
