"""Small in-repo equivalents of common model families; the import of torchvision / timm for tests and benchmarks.

The equivalents use the layer types of the real models at a width that keeps float64 references
cheap, and need nothing beyond torch (CI runs without torchvision):

- :class:`TinyResNet`: ResNet basic blocks (3×3 convolutions without bias, BatchNorm, ReLU in place, a
  1×1 strided shortcut), adaptive average pooling, a Linear head (torchvision's ResNet-18);
- :class:`TinyMobileNetV2`: inverted residuals (1×1 expansion, depthwise 3×3 ``groups=channels``, ReLU6,
  linear 1×1 projection, residual when the shape allows), adaptive average pooling, Dropout, Linear
  (torchvision's MobileNetV2);
- :class:`TinyViT`: patch embedding by a strided convolution, a class token and position embedding
  (parameters used directly), pre-norm blocks of LayerNorm, multi-head attention (one ``qkv`` Linear,
  ``scaled_dot_product_attention``, a projection) and a GELU MLP, a final LayerNorm and a Linear head
  on the class token (timm's ``VisionTransformer``).

:func:`import_torchvision` / :func:`import_timm` import the real packages when they are installed
(``pip install -e ".[models]"``), applying :func:`skip_torchvision_op_registrations` first.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


def _bn(ch: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(ch)


class BasicBlock(nn.Module):
    """torchvision's ResNet ``BasicBlock``: conv-BN-ReLU-conv-BN plus the (projected) input, then ReLU."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = _bn(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = _bn(c_out)
        self.downsample = None
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), _bn(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class TinyResNet(nn.Module):
    """Stem, two basic blocks (the second strided, with a projected shortcut), average pooling, Linear."""

    def __init__(self, width: int = 4, n_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)
        self.bn1 = _bn(width)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = BasicBlock(width, width)
        self.layer2 = BasicBlock(width, 2 * width, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(2 * width, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer2(self.layer1(x))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class InvertedResidual(nn.Module):
    """torchvision's MobileNetV2 block: [1×1 expand, BN, ReLU6], depthwise 3×3, BN, ReLU6, 1×1 project, BN."""

    def __init__(self, c_in: int, c_out: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = c_in * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers += [nn.Conv2d(c_in, hidden, 1, bias=False), _bn(hidden), nn.ReLU6(inplace=True)]
        layers += [
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            _bn(hidden),
            nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, c_out, 1, bias=False),
            _bn(c_out),
        ]
        self.conv = nn.Sequential(*layers)
        self.use_res_connect = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class TinyMobileNetV2(nn.Module):
    """Stem, three inverted residuals (one grouped but not depthwise), 1×1 conv, pooling, Dropout, Linear."""

    def __init__(self, width: int = 4, n_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Sequential(nn.Conv2d(in_channels, width, 3, 2, 1, bias=False), _bn(width), nn.ReLU6(inplace=True)),
            InvertedResidual(width, width, 1, expand=1),
            InvertedResidual(width, 2 * width, 2, expand=2),
            InvertedResidual(2 * width, 2 * width, 1, expand=2),
            nn.Sequential(
                nn.Conv2d(2 * width, 2 * width, 3, 1, 1, groups=2, bias=False), _bn(2 * width), nn.ReLU6(inplace=True)
            ),
        )
        self.pool = nn.AdaptiveAvgPool2d((1, 1))
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(2 * width, n_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


class Attention(nn.Module):
    """timm's ``Attention``: one ``qkv`` Linear, scaled dot-product attention per head, a projection.

    ``fused`` uses ``F.scaled_dot_product_attention`` (timm's default), whose CPU kernel has no second
    derivative; otherwise the softmax attention is written out (timm's ``set_fused_attn(False)``).
    """

    def __init__(self, dim: int, heads: int, fused: bool = True) -> None:
        super().__init__()
        self.heads = heads
        self.fused = fused
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, d = x.shape
        qkv = self.qkv(x).reshape(n, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        if self.fused:
            out = F.scaled_dot_product_attention(q, k, v)
        else:
            out = torch.softmax(q @ k.transpose(-2, -1) / (d // self.heads) ** 0.5, -1) @ v
        return self.proj(out.transpose(1, 2).reshape(n, t, d))


class Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(norm1(x))``, then ``x + mlp(norm2(x))`` with a GELU MLP."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int = 2, fused: bool = True) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, fused)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_ratio * dim), nn.GELU(), nn.Linear(mlp_ratio * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TinyViT(nn.Module):
    """Patch embedding, class token, position embedding, ``depth`` blocks, final LayerNorm, Linear head."""

    def __init__(
        self,
        dim: int = 8,
        depth: int = 1,
        heads: int = 2,
        patch: int = 4,
        image: int = 8,
        n_classes: int = 10,
        in_channels: int = 3,
        fused: bool = True,
    ) -> None:
        super().__init__()
        self.patch_embed = nn.Conv2d(in_channels, dim, patch, patch)
        tokens = (image // patch) ** 2
        self.cls_token = nn.Parameter(0.02 * torch.randn(1, 1, dim))
        self.pos_embed = nn.Parameter(0.02 * torch.randn(1, tokens + 1, dim))
        self.blocks = nn.Sequential(*[Block(dim, heads, fused=fused) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        return self.head(self.norm(self.blocks(x))[:, 0])


def randomise_norms(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random running statistics and affine parameters for every batch / layer / group norm, then eval mode.

    Freshly built norms are identities (γ = 1, β = 0, mean 0, variance 1), which would hide a
    rule that forgets them. Subclasses (timm's ``LayerNorm2d``, ``BatchNormAct2d``) included.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (_BatchNorm, nn.LayerNorm, nn.GroupNorm)) and m.weight is not None:
                m.weight.copy_(1 + 0.3 * torch.randn(m.weight.shape, generator=gen))
                if m.bias is not None:
                    m.bias.copy_(0.2 * torch.randn(m.bias.shape, generator=gen))
            if isinstance(m, _BatchNorm) and m.running_mean is not None and m.running_var is not None:
                m.running_mean.copy_(0.2 * torch.randn(m.running_mean.shape, generator=gen))
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=gen))
    return model.eval()


#: Why the shim exists (shown where it is applied).
SHIM_REASON = (
    "torchvision 0.28 (the release paired with torch 2.13) is a CUDA wheel whose compiled operators cannot "
    "load next to the CPU build of torch ('operator torchvision::nms does not exist' in "
    "torchvision._meta_registrations); its pure-Python models need none of them"
)


def skip_torchvision_op_registrations() -> None:
    """Register an empty ``torchvision._meta_registrations`` so that torchvision imports beside the CPU torch.

    Only the meta-kernel registrations of torchvision's compiled operators (nms, roi_align, ...) are
    skipped; those operators stay unavailable, the models (``torchvision.models.*``) work. For tests
    and benchmarks only: the library never imports torchvision. See :data:`SHIM_REASON`.
    """
    if "torchvision" not in sys.modules:
        sys.modules.setdefault("torchvision._meta_registrations", types.ModuleType("torchvision._meta_registrations"))


def import_torchvision() -> types.ModuleType | None:
    """``torchvision`` (with :func:`skip_torchvision_op_registrations` applied), or None when it is not installed."""
    if importlib.util.find_spec("torchvision") is None:
        return None
    skip_torchvision_op_registrations()
    return importlib.import_module("torchvision")


def import_timm() -> types.ModuleType | None:
    """``timm`` (which imports torchvision, so after the same shim), or None when timm or torchvision is missing."""
    if importlib.util.find_spec("timm") is None or import_torchvision() is None:
        return None
    return importlib.import_module("timm")


def build_library_model(library: str, name: str, n_classes: int = 10) -> nn.Module | None:
    """A classification model of ``library`` (``"torchvision"`` or ``"timm"``) for 32×32 inputs, or None.

    Random weights, random norm statistics (:func:`randomise_norms`), eval mode; ViT / DeiT at patch
    size 4 on 32×32 images. None when the library is not installed.
    """
    torch.manual_seed(0)
    if library == "torchvision":
        tv = import_torchvision()
        if tv is None:
            return None
        kwargs: dict = {"num_classes": n_classes}
        if name == "googlenet":
            kwargs.update(aux_logits=False, init_weights=True)
        return randomise_norms(getattr(tv.models, name)(**kwargs))
    if library != "timm":
        raise ValueError(f"library must be 'torchvision' or 'timm'; got {library!r}.")
    timm = import_timm()
    if timm is None:
        return None
    kwargs = {"img_size": 32, "patch_size": 4} if name.startswith(("vit_", "deit_")) else {}
    return randomise_norms(timm.create_model(name, pretrained=False, num_classes=n_classes, **kwargs))
