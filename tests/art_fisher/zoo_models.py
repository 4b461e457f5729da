"""Layer variants that real model libraries use, each in a small model (torch only, so CI runs them).

Each variant is a module the hook engine's layer rules must either compute exactly or decline (so
that ``torch.func`` takes its parameters), never crash on: subclasses that normalise other dimensions
(timm's ``LayerNorm2d``), subclasses that only add attributes (timm's ``LayerNorm``), batch norms fused
with an activation after it (timm's ``BatchNormAct2d``) or before it, other padding modes, lazy modules, channels-last
memory, a ``Linear`` over tokens or with the samples not first, an overridden ``forward``, GroupNorm,
``nn.Identity`` stand-ins and tied weights.

:data:`ZOO` maps a name to ``(builder, input shape, parameters the hooks must leave to torch.func)``,
the last being None where it is not pinned down.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from tests.art_fisher.model_families import TinyViT


class LayerNorm2d(nn.LayerNorm):
    """timm's ``LayerNorm2d``: normalises the channels of an NCHW map (permute, layer norm, permute back)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class OtherEpsLayerNorm2d(LayerNorm2d):
    """A channel layer norm whose forward uses another ``eps`` than the module's: no rule may claim it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias, 0.5)
        return x.permute(0, 3, 1, 2)


class TimmLayerNorm(nn.LayerNorm):
    """timm's ``LayerNorm``: its own ``forward`` that calls ``F.layer_norm`` as ``nn.LayerNorm`` does."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__(dim, eps=eps)
        self.fast_norm = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)


class OtherEpsLayerNorm(nn.LayerNorm):
    """A subclass that normalises with an ``eps`` other than its attribute's (must be declined)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, 0.5)


class BatchNormAct2d(nn.BatchNorm2d):
    """timm's ``BatchNormAct2d``: batch norm, dropout and an activation (``nn.Identity`` when ``apply_act=False``)."""

    def __init__(self, ch: int, apply_act: bool = True, act: nn.Module | None = None) -> None:
        super().__init__(ch)
        self.drop = nn.Dropout(0.5)
        self.act = (act or nn.ReLU()) if apply_act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)
        return self.act(self.drop(x))


class ActBatchNorm2d(BatchNormAct2d):
    """The activation before the batch norm: the batch norm's input is not the module's (a rule must decline)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(x)
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)


class ScaledLinear(nn.Linear):
    """A ``Linear`` whose ``forward`` uses twice its weight (a rule must not treat it as ``nn.Linear``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, 2 * self.weight, self.bias)


class ConvNet(nn.Module):
    """conv → norm → activation → conv → pooling → Linear, the norm and convolutions swappable."""

    def __init__(self, norm: nn.Module, conv: nn.Module | None = None, act: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = conv if conv is not None else nn.Conv2d(3, 4, 3, padding=1)
        self.norm = norm
        self.act = act if act is not None else nn.Tanh()
        self.conv2 = nn.Conv2d(4, 4, 3, stride=2, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.head = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.norm(self.conv1(x)))
        return self.head(self.pool(torch.tanh(self.conv2(h))).flatten(1))


class TokenMixer(nn.Module):
    """A ``Linear`` over the token dimension (MLP-Mixer), then one over the features, mean over tokens."""

    def __init__(
        self, tokens: int = 6, dim: int = 4, n_classes: int = 5, norm: Callable[[int], nn.Module] = nn.LayerNorm
    ) -> None:
        super().__init__()
        self.mix = nn.Linear(tokens, tokens)
        self.norm = norm(dim)
        self.fc = nn.Linear(dim, dim)
        self.head = nn.Linear(dim, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x (n, tokens, dim)
        h = self.mix(x.transpose(1, 2)).transpose(1, 2)
        h = torch.tanh(self.fc(self.norm(h)))
        return self.head(h.mean(1))


class SamplesNotFirst(nn.Module):
    """Linears called with the tokens first (``nn.MultiheadAttention``'s layout) and on samples folded into rows."""

    def __init__(self, dim: int = 4, n_classes: int = 5) -> None:
        super().__init__()
        self.tokens_first = nn.Linear(dim, dim)
        self.folded = nn.Linear(dim, dim)
        self.head = nn.Linear(dim, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x (n, tokens, dim)
        h = torch.tanh(self.tokens_first(x.transpose(0, 1))).transpose(0, 1)
        n, t, d = h.shape
        h = torch.tanh(self.folded(h.reshape(n * t, d))).reshape(n, t, d)
        return self.head(h.mean(1))


class Overridden(nn.Module):
    """A subclass with its own ``forward`` and an instance whose ``forward`` was replaced."""

    def __init__(self, dim: int = 6, n_classes: int = 5) -> None:
        super().__init__()
        self.scaled = ScaledLinear(dim, dim)
        self.patched = nn.Linear(dim, dim)
        patched = self.patched
        patched.forward = lambda x: F.linear(x, patched.weight.tanh(), patched.bias)  # type: ignore[method-assign]
        self.head = nn.Linear(dim, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.patched(torch.tanh(self.scaled(x)))))


class Tied(nn.Module):
    """A weight used by its module and again directly, transposed (tied embeddings)."""

    def __init__(self, dim: int = 6, n_classes: int = 5) -> None:
        super().__init__()
        self.enc = nn.Linear(dim, n_classes)
        self.dec = nn.Linear(n_classes, dim)
        self.head = nn.Linear(dim, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.enc(x))
        h = torch.tanh(F.linear(h, self.enc.weight.t()) + self.dec(h))
        return self.head(h)


class DirectParameters(nn.Module):
    """Parameters used directly: added with broadcasting (covered), subtracted, scaled or used twice (declined)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.channel_shift = nn.Parameter(0.3 * torch.randn(4, 1, 1))  # broadcast over the positions
        self.map_shift = nn.Parameter(0.3 * torch.randn(1, 1, 6, 6))  # broadcast over the channels
        self.shift_sub = nn.Parameter(0.3 * torch.randn(4, 6, 6))
        self.shift_alpha = nn.Parameter(0.3 * torch.randn(4, 6, 6))
        self.shift_twice = nn.Parameter(0.3 * torch.randn(4, 6, 6))
        self.head = nn.Linear(4 * 36, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.conv(x) + self.channel_shift)
        h = torch.tanh(h + self.map_shift) - self.shift_sub
        h = torch.tanh(torch.add(h, self.shift_alpha, alpha=2.0))
        h = torch.tanh(h + self.shift_twice) * self.shift_twice
        return self.head(h.flatten(1))


class LayerScaled(nn.Module):
    """A convolution, then a per-channel layer scale ``h ⊙ γ`` in one of the forms real models write it.

    ``"reshape"`` is ConvNeXt's ``x.mul(gamma.reshape(1, -1, 1, 1))``, ``"inplace"`` timm's ``LayerScale2d``
    with ``inplace=True``, ``"channels_last"`` timm's ``LayerScale`` on NHWC maps, and ``"indexed"``
    ``gamma[:, None, None] * x`` (two views: left to torch.func).
    """

    def __init__(self, form: str) -> None:
        super().__init__()
        self.form = form
        self.conv = nn.Conv2d(3, 4, 3)
        self.gamma = nn.Parameter(torch.rand(4) + 0.5)
        self.head = nn.Linear(4 * 4 * 4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.conv(x))
        if self.form == "reshape":
            h = h.mul(self.gamma.reshape(1, -1, 1, 1))
        elif self.form == "inplace":
            h = (h * 1.0).mul_(self.gamma.view(1, -1, 1, 1))
        elif self.form == "channels_last":
            h = (h.permute(0, 2, 3, 1) * self.gamma).permute(0, 3, 1, 2)
        else:
            h = self.gamma[:, None, None] * h
        return self.head(torch.tanh(h).flatten(1))


def _lazy() -> nn.Module:
    model = nn.Sequential(nn.Flatten(), nn.LazyLinear(6), nn.Tanh(), nn.Linear(6, 5))
    model(torch.zeros(1, 2, 3))  # materialise (the lazy module becomes an nn.Linear)
    return model


def _channels_last() -> nn.Module:
    return ConvNet(nn.BatchNorm2d(4)).to(memory_format=torch.channels_last)


#: name → (builder, input shape of one sample, parameters left to torch.func or None)
ZOO: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...], list[str] | None]] = {
    "layernorm2d": (lambda: ConvNet(LayerNorm2d(4)), (3, 6, 6), []),
    "other_eps_layernorm2d": (lambda: ConvNet(OtherEpsLayerNorm2d(4)), (3, 6, 6), ["norm.weight", "norm.bias"]),
    "layer_scale": (lambda: LayerScaled("reshape"), (3, 6, 6), []),
    "layer_scale_inplace": (lambda: LayerScaled("inplace"), (3, 6, 6), []),
    "layer_scale_channels_last": (lambda: LayerScaled("channels_last"), (3, 6, 6), []),
    "layer_scale_indexed": (lambda: LayerScaled("indexed"), (3, 6, 6), ["gamma"]),
    "timm_layernorm": (lambda: TokenMixer(norm=TimmLayerNorm), (6, 4), []),
    "other_eps_layernorm": (
        lambda: nn.Sequential(OtherEpsLayerNorm(4), nn.Tanh(), nn.Flatten(), nn.Linear(12, 5)),
        (3, 4),
        ["0.weight", "0.bias"],
    ),
    "conv_circular": (
        lambda: ConvNet(nn.BatchNorm2d(4), nn.Conv2d(3, 4, 3, padding=1, padding_mode="circular")),
        (3, 6, 6),
        ["conv1.weight", "conv1.bias"],
    ),
    "conv_reflect": (
        lambda: ConvNet(nn.BatchNorm2d(4), nn.Conv2d(3, 4, 3, padding=1, padding_mode="reflect")),
        (3, 6, 6),
        ["conv1.weight", "conv1.bias"],
    ),
    "conv_same": (lambda: ConvNet(nn.BatchNorm2d(4), nn.Conv2d(3, 4, 3, padding="same")), (3, 6, 6), None),
    "lazy_linear": (_lazy, (2, 3), []),
    "channels_last": (_channels_last, (3, 6, 6), []),
    "token_linear": (TokenMixer, (6, 4), []),
    "samples_not_first": (SamplesNotFirst, (3, 4), None),
    "overridden_forward": (
        Overridden,
        (6,),
        ["scaled.weight", "scaled.bias", "patched.weight", "patched.bias"],
    ),
    "batchnorm_act": (lambda: ConvNet(BatchNormAct2d(4)), (3, 6, 6), []),
    "batchnorm_act_inplace_relu": (lambda: ConvNet(BatchNormAct2d(4, act=nn.ReLU(inplace=True))), (3, 6, 6), []),
    "batchnorm_act_silu": (lambda: ConvNet(BatchNormAct2d(4, act=nn.SiLU())), (3, 6, 6), []),
    "act_before_batchnorm": (
        lambda: ConvNet(ActBatchNorm2d(4, act=nn.Tanh())),
        (3, 6, 6),
        ["norm.weight", "norm.bias"],
    ),
    "batchnorm_noact": (lambda: ConvNet(BatchNormAct2d(4, apply_act=False)), (3, 6, 6), []),
    "groupnorm": (lambda: ConvNet(nn.GroupNorm(2, 4)), (3, 6, 6), ["norm.weight", "norm.bias"]),
    "identity_standins": (lambda: ConvNet(nn.Identity(), act=nn.Identity()), (3, 6, 6), []),
    "tied": (Tied, (6,), ["enc.weight"]),
    "vit_timm_layernorm": (lambda: _vit_with(TimmLayerNorm), (3, 8, 8), []),
    "direct_parameters": (
        DirectParameters,
        (3, 6, 6),
        ["shift_sub", "shift_alpha", "shift_twice"],
    ),
}


def _vit_with(norm: Callable[[int], nn.Module]) -> nn.Module:
    model = TinyViT()
    for block in model.blocks:
        block.norm1, block.norm2 = norm(8), norm(8)
    model.norm = norm(8)
    return model
