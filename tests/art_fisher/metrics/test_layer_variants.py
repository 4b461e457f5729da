"""Layer variants of real model libraries: every metric exact against per-class float64 autograd.

The layer rules decide from a module's type, configuration and shapes (and the autograd node of its
output for subclasses) whether they apply, never by running it; what they decline goes to
``torch.func``. Each model of :data:`tests.art_fisher.zoo_models.ZOO` is checked for the trace,
λ_max, both quadratic forms and the sensitivity, and for which parameters the hooks leave to
``torch.func``.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from art_fisher import metrics
from art_fisher.metrics._engine._layers import RULES
from art_fisher.metrics._engine._network import FunctionalNet
from art_fisher.metrics._engine._recorder import find_coverage
from tests.art_fisher.metrics_cases import Dense, per_class_reference
from tests.art_fisher.model_families import randomise_norms
from tests.art_fisher.zoo_models import ZOO, LayerNorm2d

#: Models with LayerNorm / GroupNorm modules whose parameters go to torch.func: the exact sensitivity refuses them.
SENSITIVITY_REFUSED = {"other_eps_layernorm2d", "other_eps_layernorm"}


def _model(name: str) -> tuple[nn.Module, torch.Tensor]:
    build, shape, _rest = ZOO[name]
    torch.manual_seed(0)
    model = randomise_norms(build()).double()
    x = torch.randn(3, *shape, dtype=torch.float64)
    if name == "channels_last":
        x = x.to(memory_format=torch.channels_last)
    return model, x


@pytest.mark.parametrize("name", list(ZOO))
def test_zoo_exact_in_float64(name):
    model, x = _model(name)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ref = per_class_reference(model, x)
    torch.testing.assert_close(metrics.fisher_trace(model, x), ref["trace"], rtol=1e-8, atol=0)
    torch.testing.assert_close(metrics.fisher_max_eigenvalue(model, x), ref["lam"], rtol=1e-8, atol=0)
    torch.testing.assert_close(metrics.fisher_quadratic_form(model, x), ref["quad"], rtol=1e-8, atol=0)
    torch.testing.assert_close(
        metrics.fisher_quadratic_form(model, x, blockwise=True), ref["quad_blockwise"], rtol=1e-8, atol=0
    )
    want_rest = ZOO[name][2]
    if want_rest is not None:
        net = FunctionalNet(model, [n for n, _ in model.named_parameters()], "logits")
        assert find_coverage(net, x).rest == want_rest
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert not model.training


@pytest.mark.parametrize("name", [n for n in ZOO if n not in SENSITIVITY_REFUSED])
def test_zoo_sensitivity_in_float64(name):
    model, x = _model(name)
    x = x[:2]
    got = metrics.fisher_sensitivity(model, x)
    dense = Dense(model)
    with sdpa_kernel([SDPBackend.MATH]):  # the reference's own double backward through attention
        for i in range(x.shape[0]):
            v = dense.predicted_gradient(x[i])
            want = dense.sensitivity(x[i], v / v.norm(), blockwise=True)
            torch.testing.assert_close(got[i], want, rtol=1e-8, atol=1e-12 * want.abs().max().item())


@pytest.mark.parametrize("name", sorted(SENSITIVITY_REFUSED))
def test_zoo_sensitivity_refusals_are_clear(name):
    model, x = _model(name)
    with pytest.raises(NotImplementedError, match="model: module"):
        metrics.fisher_sensitivity(model, x[:1])


def test_uninitialised_lazy_module_is_refused_and_left_alone():
    model = nn.Sequential(nn.Flatten(), nn.LazyLinear(3))
    with pytest.raises(ValueError, match="lazy"):
        metrics.fisher_trace(model, torch.randn(2, 4))
    assert isinstance(model[1], nn.LazyLinear)


def _calls() -> list[tuple[nn.Module, torch.Tensor, torch.Tensor]]:
    """(module, input, output) triples that no rule covers, shapes and configurations mixed up on purpose."""
    ln, ln2d = nn.LayerNorm(4), LayerNorm2d(4)
    bn = nn.BatchNorm2d(4).eval()
    conv = nn.Conv2d(4, 4, 3, padding=1)
    lin = nn.Linear(4, 3)
    nchw = torch.randn(1, 4, 5, 6)
    return [
        (ln, nchw, nchw),  # normalized_shape does not match the last dimension
        (ln2d, nchw, ln2d(nchw)),
        (ln, torch.randn(4), torch.randn(4)),  # no sample dimension
        (bn.train(), nchw, nchw),
        (nn.BatchNorm2d(4, affine=False).eval(), nchw, nchw),
        (nn.BatchNorm2d(4, track_running_stats=False).eval(), nchw, nchw),
        (nn.BatchNorm2d(3).eval(), nchw, nchw),  # channels do not match
        (nn.BatchNorm1d(4).eval(), nchw, nchw),  # a 4-d input to BatchNorm1d
        (conv, torch.randn(1, 3, 5, 5), torch.randn(1, 4, 5, 5)),  # channels do not match
        (conv, torch.randn(1, 4, 5), torch.randn(1, 4, 5)),
        (nn.Conv2d(4, 4, 3, padding="same"), nchw, nchw),
        (nn.Conv2d(4, 4, 3, padding=1, padding_mode="circular"), nchw, nchw),
        (lin, torch.randn(1, 3), torch.randn(1, 3)),  # features do not match
        (lin, torch.randn(1, 4), torch.randn(1, 5)),
        (nn.GroupNorm(2, 4), nchw, nchw),
    ]


def test_no_rule_raises_on_what_it_does_not_cover():
    for module, a, out in _calls():
        assert not any(rule.supports(module, a, out) for rule in RULES), module


def test_batch_norm_with_activation_takes_the_batch_norm_edge():
    """timm's BatchNormAct2d: the rule's edge is the batch norm's own node beneath the activation, or none."""
    from torch.autograd.graph import get_gradient_edge

    from art_fisher.metrics._engine._layers import BatchNormRule
    from tests.art_fisher.zoo_models import BatchNormAct2d

    module = BatchNormAct2d(4, act=nn.ReLU(inplace=True)).eval()
    a = torch.randn(2, 4, 3, 3, requires_grad=True)
    out = module(a)
    edge = get_gradient_edge(out)
    assert type(edge.node).__name__ != "NativeBatchNormBackward0"  # the in-place ReLU's node
    assert BatchNormRule.supports(module, a, out)
    found = BatchNormRule.output_edge(module, a, edge)
    assert found is not None and type(found.node).__name__ == "NativeBatchNormBackward0"
    other = torch.randn(2, 4, 3, 3, requires_grad=True)  # not the batch norm's input
    assert BatchNormRule.output_edge(module, other, edge) is None
