"""``nn.Conv2d`` (one group, zero padding given as numbers): ``o = W ⋆ a + β``."""

from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from art_fisher.metrics.engine.layers.base import LayerRule, Reducer


class Conv2dRule(LayerRule):
    """Per-sample gradients from the unfolded input ``U`` (n, in·kh·kw, L): ``G = B Uᵀ`` (weight), ``Σ_l B_l`` (bias).

    Gram matrices of weight gradients either materialise ``G`` per column, or use the ghost form
    ``K[c, d] = ⟨B_d, B_c (UᵀU)⟩`` (L × L), whichever takes fewer multiply-adds.
    """

    module_types = (nn.Conv2d,)
    module: nn.Conv2d

    def __init__(self, module: nn.Module, a: torch.Tensor) -> None:
        super().__init__(module, a)
        self._u: torch.Tensor | None = None
        self._uu: torch.Tensor | None = None

    @staticmethod
    def supports(module: nn.Module, a: torch.Tensor) -> bool:
        return (
            type(module) is nn.Conv2d
            and module.groups == 1
            and module.padding_mode == "zeros"
            and not isinstance(module.padding, str)
            and a.dim() == 4
        )

    @property
    def _padding(self) -> tuple[int, int]:
        """The zero padding (rows, columns); :meth:`supports` refuses padding given as a string."""
        return cast("tuple[int, int]", self.module.padding)

    @property
    def unfolded(self) -> torch.Tensor:
        """Patches ``U`` (n, in·kh·kw, L) of the input, as ``F.unfold`` gives them (a view of :attr:`patches`)."""
        return self.patches.transpose(1, 2)

    @property
    def patches(self) -> torch.Tensor:
        """Patches ``Uᵀ`` (n, L, in·kh·kw), contiguous, computed once per call.

        Built from a strided view of the (zero-padded) input and one copy, which is several times
        faster than ``F.unfold`` on CPU.
        """
        if self._u is None:
            m = self.module
            a = self.a
            if any(self._padding):
                ph, pw = self._padding
                a = F.pad(a, (pw, pw, ph, ph))
            n, c, h, w = a.shape
            (kh, kw), (sh, sw), (dh, dw) = m.kernel_size, m.stride, m.dilation
            ho, wo = (h - dh * (kh - 1) - 1) // sh + 1, (w - dw * (kw - 1) - 1) // sw + 1
            s0, s1, s2, s3 = a.stride()
            view = a.as_strided((n, ho, wo, c, kh, kw), (s0, s2 * sh, s3 * sw, s1, s2 * dh, s3 * dw))
            self._u = view.reshape(n, ho * wo, c * kh * kw)
        return self._u

    def _out_height(self) -> int:
        m = self.module
        h = self.a.shape[2]
        return (h + 2 * self._padding[0] - m.dilation[0] * (m.kernel_size[0] - 1) - 1) // m.stride[0] + 1

    def grad(self, b: torch.Tensor, kind: str) -> torch.Tensor:
        if kind == "bias":
            return b.sum((2, 3))
        n = b.shape[0]
        return torch.bmm(b.reshape(n, b.shape[1], -1), self.patches).reshape(n, *self.module.weight.shape)

    def materialise_cheaper(self, n_cols: int, diagonal: bool = False) -> bool:
        """Per-column weight gradients (C'·out × k) against the ghost route (L × L), by multiply-adds."""
        m = self.module
        o = m.out_channels
        k = m.in_channels * m.kernel_size[0] * m.kernel_size[1]
        length = self.patches.shape[1]
        pairs = n_cols if diagonal else n_cols * n_cols
        cost_materialise = n_cols * o * k * length + pairs * o * k
        cost_ghost = length * length * (k + n_cols * o) + pairs * o * length
        return cost_materialise <= cost_ghost

    @property
    def patch_gram(self) -> torch.Tensor:
        """``UᵀU`` (n, L, L): inner products of the input patches (computed once per call)."""
        if self._uu is None:
            ut = self.patches
            self._uu = torch.bmm(ut, ut.transpose(1, 2))
        return self._uu

    def sq_norm(self, b: torch.Tensor, kind: str, n_cols: int) -> torch.Tensor:
        if kind == "bias":
            return b.sum((2, 3)).pow(2).sum(1)
        n = b.shape[0]
        b3 = b.reshape(n, b.shape[1], -1)  # (n, out, L)
        if self.materialise_cheaper(n_cols, diagonal=True):
            return torch.bmm(b3, self.patches).pow(2).sum((1, 2))
        return (torch.bmm(b3, self.patch_gram) * b3).sum((1, 2))  # ⟨B (UᵀU), B⟩

    def reducer(self, kind: str, n_cols: int) -> Reducer | None:
        if kind == "weight":
            if not self.materialise_cheaper(n_cols):
                return None
            ut = self.patches  # (n, L, k)
            return lambda b: torch.bmm(b.reshape(b.shape[0], b.shape[1], -1), ut).flatten(1)
        return lambda b: b.sum((2, 3))

    def ghost_gram(self, b: torch.Tensor, kind: str, diagonal: bool) -> torch.Tensor:
        if kind != "weight":
            return self.materialised_gram(b, kind, diagonal)
        n, n_cols = b.shape[0], b.shape[1]
        b3 = b.reshape(n, n_cols * b.shape[2], -1)  # (n, C'·out, L)
        bw = torch.bmm(b3, self.patch_gram).reshape(n, n_cols, -1)
        b3 = b3.reshape(n, n_cols, -1)
        if diagonal:
            return (bw * b3).sum(2)
        return torch.bmm(bw, b3.transpose(1, 2))

    def change(self, kind: str, d: torch.Tensor, shared: bool) -> torch.Tensor:
        m = self.module
        n = self.a.shape[0]
        if kind == "bias":
            return d.reshape(1 if shared else n, -1, 1, 1)
        if shared:
            return F.conv2d(self.a, d, None, m.stride, m.padding, m.dilation)
        out = torch.bmm(d.reshape(n, d.shape[1], -1), self.unfolded)  # (n, out, L)
        return out.reshape(n, out.shape[1], self._out_height(), -1)
