"""The metrics on the common model families: in-repo equivalents in float64, the real ones when installed.

The in-repo equivalents (:mod:`tests.art_fisher.model_families`: ResNet basic blocks, MobileNetV2 inverted
residuals with depthwise convolutions and ReLU6, a ViT block with LayerNorm, attention and GELU) run in
CI; torchvision's ResNet-18 / MobileNetV2 and timm's ViT run where ``pip install -e ".[models]"`` put them.
The reference is a per-class autograd loop (one backward pass per class and sample).
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from art_fisher import metrics
from art_fisher.metrics._engine._grams import func_grams
from art_fisher.metrics._engine._layers import RULES, Conv2dRule, LayerNormRule
from art_fisher.metrics._engine._network import FunctionalNet
from art_fisher.metrics._engine._recorder import find_coverage
from tests.art_fisher import model_families
from tests.art_fisher.metrics_cases import Dense, per_class_reference
from tests.art_fisher.model_families import (
    TinyMobileNetV2,
    TinyResNet,
    TinyViT,
    randomise_norms,
)

TINY = {"resnet": TinyResNet, "mobilenet_v2": TinyMobileNetV2, "vit": TinyViT}
#: Parameters that the hook engine leaves to torch.func (none: ViT's class token and position embedding are
#: covered through their addition / expansion over the samples).
DIRECT: dict[str, list[str]] = {"resnet": [], "mobilenet_v2": [], "vit": []}


def _tiny(name: str, n_classes: int = 10) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = randomise_norms(TINY[name](n_classes=n_classes).double())
    return model, torch.randn(3, 3, 8, 8, dtype=torch.float64)


@pytest.mark.parametrize("name", list(TINY))
def test_tiny_models_exact_in_float64(name):
    model, x = _tiny(name)
    ref = per_class_reference(model, x)
    torch.testing.assert_close(metrics.fisher_trace(model, x), ref["trace"], rtol=1e-8, atol=0)
    torch.testing.assert_close(metrics.fisher_block_traces(model, x).values.sum(1), ref["trace"], rtol=1e-8, atol=0)
    torch.testing.assert_close(metrics.fisher_max_eigenvalue(model, x), ref["lam"], rtol=1e-8, atol=0)
    torch.testing.assert_close(metrics.fisher_quadratic_form(model, x), ref["quad"], rtol=1e-8, atol=0)
    torch.testing.assert_close(
        metrics.fisher_quadratic_form(model, x, blockwise=True), ref["quad_blockwise"], rtol=1e-8, atol=0
    )
    # which parameters the hooks cover: all but those used directly in the forward
    net = FunctionalNet(model, [n for n, _ in model.named_parameters()], "logits")
    assert find_coverage(net, x).rest == DIRECT[name]
    assert not model.training


@pytest.mark.parametrize("name", ["resnet", "mobilenet_v2", "vit", "vit_written_out"])
def test_tiny_models_sensitivity_in_float64(name):
    """ResNet / MobileNetV2: the first-order path (piecewise linear); ViT: second order, the class token and
    position embedding included, with the fused attention kernel (which has no double backward on the CPU)
    and written out."""
    model, x = _tiny(name.removesuffix("_written_out"))
    if name == "vit_written_out":
        for block in model.blocks:
            block.attn.fused = False
    x = x[:2]
    got = metrics.fisher_sensitivity(model, x)
    dense = Dense(model)
    with sdpa_kernel([SDPBackend.MATH]):  # the reference's own double backward through the attention
        for i in range(x.shape[0]):
            v = dense.predicted_gradient(x[i])
            want = dense.sensitivity(x[i], v / v.norm(), blockwise=True)
            torch.testing.assert_close(got[i], want, rtol=1e-8, atol=1e-12 * want.abs().max().item())


@pytest.mark.parametrize(("groups", "c_in", "c_out"), [(1, 3, 5), (2, 4, 6), (4, 4, 4), (3, 3, 6)])
@pytest.mark.parametrize("route", ["materialised", "ghost"])
@pytest.mark.parametrize(("size", "stride", "dilation"), [(7, 2, 1), (8, 1, 2), (2, 2, 1)])
def test_grouped_and_depthwise_conv_rule(groups, c_in, c_out, route, size, stride, dilation):
    """Depthwise convolutions on maps of 16 or more positions use grouped convolutions, on smaller ones patches;
    a single output position (the 2 × 2 map at stride 2) takes the rank-one shortcut of the squared norm."""
    torch.manual_seed(groups)
    conv = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, dilation=dilation, groups=groups).double()
    x = torch.randn(3, c_in, size, size, dtype=torch.float64)
    out_numel = conv(x).shape[1:].numel()
    model = nn.Sequential(conv, nn.Flatten(), nn.Linear(out_numel, 4)).double().eval()
    net = FunctionalNet(model, ["0.weight", "0.bias"], "logits")
    _z, ref = func_grams(net, x, net.names)
    records = {}
    handle = conv.register_forward_hook(lambda _m, i, o: records.update(a=i[0], o=o))
    z = model(x.clone().requires_grad_(True))
    handle.remove()
    b = torch.stack([torch.autograd.grad(z[:, c].sum(), records["o"], retain_graph=True)[0] for c in range(4)], 1)
    rule = Conv2dRule(conv, records["a"].detach())
    for j, role in enumerate(("weight", "bias")):
        for diagonal in (False, True):
            got = getattr(rule, f"{route}_gram")(b, role, diagonal)
            want = ref[:, j].diagonal(dim1=-2, dim2=-1) if diagonal else ref[:, j]
            torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14)
        got_sq = torch.stack([rule.sq_norm(b[:, c], role, 4) for c in range(4)], 1)
        torch.testing.assert_close(got_sq, ref[:, j].diagonal(dim1=-2, dim2=-1), rtol=1e-12, atol=1e-14)
        p = getattr(conv, role)
        d = torch.randn_like(p)
        _o, want = torch.func.jvp(
            lambda w, role=role: torch.func.functional_call(conv, {role: w}, (records["a"],)), (p.detach(),), (d,)
        )
        torch.testing.assert_close(rule.change(role, d, shared=True).expand_as(want), want, rtol=1e-12, atol=1e-13)
        per_sample = d.expand(x.shape[0], *d.shape)
        torch.testing.assert_close(
            rule.change(role, per_sample, shared=False).expand_as(want), want, rtol=1e-12, atol=1e-13
        )


@pytest.mark.parametrize("shape", [(5, 6), (5, 3, 6), (5, 2, 3, 6)])
def test_layernorm_rule_gradients_and_changes(shape):
    torch.manual_seed(0)
    ln = randomise_norms(nn.LayerNorm(6).double())
    a = torch.randn(*shape, dtype=torch.float64)
    rule_cls = next(r for r in RULES if r.supports(ln, a, ln(a)))
    assert rule_cls is LayerNormRule
    rule = rule_cls(ln, a)
    for role in rule.roles:
        p = getattr(ln, role)
        d = torch.randn_like(p)
        _o, want = torch.func.jvp(
            lambda w, role=role: torch.func.functional_call(ln, {role: w}, (a,)), (p.detach(),), (d,)
        )
        torch.testing.assert_close(rule.change(role, d, shared=True).expand_as(want), want, rtol=1e-12, atol=1e-13)
        per_sample = d.expand(a.shape[0], *d.shape)
        torch.testing.assert_close(
            rule.change(role, per_sample, shared=False).expand_as(want), want, rtol=1e-12, atol=1e-13
        )
        b = torch.randn_like(want)
        ref = torch.func.vmap(
            torch.func.grad(
                lambda w, ai, bi, role=role: (torch.func.functional_call(ln, {role: w}, (ai[None],))[0] * bi).sum()
            ),
            in_dims=(None, 0, 0),
        )(p.detach(), a, b)
        torch.testing.assert_close(rule.grad(b, role), ref, rtol=1e-12, atol=1e-13)


# ------------------------------------------------------------------ the real models, where installed
def _real(name: str) -> nn.Module:
    tv = model_families.import_torchvision()
    if tv is None:
        pytest.skip('torchvision is not installed (pip install -e ".[models]")')
    torch.manual_seed(0)
    if name == "resnet18":
        return randomise_norms(tv.models.resnet18(num_classes=10))
    if name == "mobilenet_v2":
        return randomise_norms(tv.models.mobilenet_v2(num_classes=10, width_mult=0.25))
    timm = model_families.import_timm()
    if timm is None:
        pytest.skip('timm is not installed (pip install -e ".[models]")')
    model = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=4, depth=2, num_classes=10
    )
    return randomise_norms(model)


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2", "vit_tiny"])
def test_real_models_float32_against_per_class_autograd(name):
    """float32 results against a float64 per-class reference (float32 rounding only)."""
    model = _real(name)
    x = torch.randn(2, 3, 32, 32)
    ref = {k: v.float() for k, v in per_class_reference(copy.deepcopy(model).double(), x.double()).items()}
    torch.testing.assert_close(metrics.fisher_trace(model, x), ref["trace"], rtol=1e-4, atol=0)
    torch.testing.assert_close(metrics.fisher_max_eigenvalue(model, x), ref["lam"], rtol=1e-4, atol=0)
    torch.testing.assert_close(metrics.fisher_quadratic_form(model, x), ref["quad"], rtol=1e-4, atol=0)
    net = FunctionalNet(model, [n for n, _ in model.named_parameters()], "logits")
    rest = find_coverage(net, x).rest
    assert rest == []


def test_real_mobilenet_v2_float64_small_width():
    model = _real("mobilenet_v2").double()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    ref = per_class_reference(model, x)
    torch.testing.assert_close(metrics.fisher_trace(model, x), ref["trace"], rtol=1e-8, atol=0)
    torch.testing.assert_close(
        metrics.fisher_trace(model, x, tau=0.5) <= ref["trace"] * (1 + 1e-9), torch.ones(2, dtype=torch.bool)
    )


def test_train_model_stops_on_a_non_finite_loss():
    import numpy as np

    from art_fisher.models import train_model

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    x, y = np.full((64, 1, 4, 4), 3e38, dtype=np.float32), np.arange(64) % 3  # logits overflow to inf
    with pytest.raises(ValueError, match=r"training diverged: the loss is (nan|inf) at epoch 1; lower the learning"):
        train_model(model, x, y, epochs=2, batch_size=8)
