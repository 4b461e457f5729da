"""``nn.Conv2d`` (any number of groups, depthwise included; zero padding given as numbers): ``o = W ⋆ a + β``."""

from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from art_fisher.metrics._engine._layers._base import FlatGrad, LayerRule, plain, sq_norms

#: Output positions from which the depthwise rule uses grouped convolutions instead of patches (on smaller maps,
#: e.g. 2 × 2, the grouped convolution with a kernel as large as the map is several times slower than the ghost form).
CONV_TRICK_MIN_L = 16


class Conv2dRule(LayerRule):
    """Per-sample gradients from the unfolded input ``U`` (n, in·kh·kw, L): ``G = B Uᵀ`` (weight), ``Σ_l B_l`` (bias).

    With ``g`` groups the input channels, output channels and weight split into ``g`` independent
    convolutions: group ``j``'s weight gradient is ``G_j = B_j U_jᵀ`` with ``B_j`` its out/g output
    channels and ``U_j`` the patches of its in/g input channels (depthwise: ``g`` = in = out, one
    channel each). Gram matrices of weight gradients either materialise ``G`` per column, or use the
    ghost form ``K[c, d] = Σ_j ⟨B_dj, B_cj (U_jᵀU_j)⟩`` (L × L per group), whichever takes fewer
    multiply-adds; depthwise layers use grouped convolutions on maps of at least ``CONV_TRICK_MIN_L``
    positions and the ghost form on smaller ones.
    """

    module_types = (nn.Conv2d,)
    module: nn.Conv2d

    def __init__(self, module: nn.Module, a: torch.Tensor) -> None:
        super().__init__(module, a)
        self._u: torch.Tensor | None = None
        self._uu: torch.Tensor | None = None

    @staticmethod
    def supports(module: nn.Module, a: torch.Tensor, out: torch.Tensor) -> bool:
        """A plain ``nn.Conv2d`` with zero padding given as numbers; other padding modes are declined."""
        return (
            plain(module, (nn.Conv2d,))
            and module.padding_mode == "zeros"
            and not isinstance(module.padding, str)
            and a.dim() == 4
            and a.shape[1] == module.in_channels
            and out.dim() == 4
            and out.shape[:2] == (a.shape[0], module.out_channels)
        )

    @property
    def _padding(self) -> tuple[int, int]:
        """The zero padding (rows, columns); :meth:`supports` refuses padding given as a string."""
        return cast("tuple[int, int]", self.module.padding)

    @property
    def unfolded(self) -> torch.Tensor:
        """Patches ``U`` (n, in·kh·kw, L) of the input, as ``F.unfold`` gives them (from :attr:`group_unfolded`)."""
        u = self.group_unfolded
        return u.reshape(self.a.shape[0], -1, u.shape[2])

    @property
    def group_unfolded(self) -> torch.Tensor:
        """Patches of each group ``U_j`` (n·g, in/g·kh·kw, L), computed once per call.

        One strided copy of the (zero-padded) input, whose innermost loop runs over a row of output
        positions where that row is at least as wide as the kernel, and over a row of the kernel
        otherwise (small maps; the result is then a transposed view). Either is several times faster
        than the other layout, or than ``F.unfold``, where it is chosen.
        """
        if self._u is None:
            m = self.module
            a = self.a
            if any(self._padding):
                ph, pw = self._padding
                a = F.pad(a, (pw, pw, ph, ph))
            n, c, h, w = a.shape
            g = m.groups
            cg = c // g
            (kh, kw), (sh, sw), (dh, dw) = m.kernel_size, m.stride, m.dilation
            ho, wo = (h - dh * (kh - 1) - 1) // sh + 1, (w - dw * (kw - 1) - 1) // sw + 1
            s0, s1, s2, s3 = a.stride()
            if wo >= kw:
                view = a.as_strided((n, g, cg, kh, kw, ho, wo), (s0, s1 * cg, s1, s2 * dh, s3 * dw, s2 * sh, s3 * sw))
                self._u = view.reshape(n * g, cg * kh * kw, ho * wo)
            else:
                view = a.as_strided((n, g, ho, wo, cg, kh, kw), (s0, s1 * cg, s2 * sh, s3 * sw, s1, s2 * dh, s3 * dw))
                self._u = view.reshape(n * g, ho * wo, cg * kh * kw).transpose(1, 2)
        return self._u

    def _out_height(self) -> int:
        m = self.module
        h = self.a.shape[2]
        return (h + 2 * self._padding[0] - m.dilation[0] * (m.kernel_size[0] - 1) - 1) // m.stride[0] + 1

    def _out_width(self) -> int:
        m = self.module
        w = self.a.shape[3]
        return (w + 2 * self._padding[1] - m.dilation[1] * (m.kernel_size[1] - 1) - 1) // m.stride[1] + 1

    def grad(self, b: torch.Tensor, role: str) -> torch.Tensor:
        if role == "bias":
            return b.sum((2, 3))
        if self.by_convolution:
            return self._depthwise_grad(b)
        return self._group_bmm(b).reshape(b.shape[0], *self.module.weight.shape)

    @property
    def by_convolution(self) -> bool:
        """Whether weight gradients and changes go through grouped convolutions (depthwise, large maps)."""
        m = self.module
        # one input channel per group and several groups: each group's patches are too narrow for a matrix
        # product; a single-channel input (groups = in = 1, a grayscale image's first layer) is one wide product
        return 1 < m.groups == m.in_channels and self._out_height() * self._out_width() >= CONV_TRICK_MIN_L

    def _depthwise_grad(self, b: torch.Tensor) -> torch.Tensor:
        """Per-sample weight gradients (n, out, 1, kh, kw) of a depthwise convolution, as one grouped convolution.

        Sample ``s``'s input channel ``i`` correlated with the output-gradients of its ``out/in`` output
        channels, at the layer's stride taken as dilation (and its dilation as stride); the result
        covers at least the kernel and is cut to it.
        """
        m = self.module
        n, c_in = self.a.shape[0], m.in_channels
        kh, kw = m.kernel_size
        a = self.a.reshape(1, n * c_in, *self.a.shape[2:])
        kernel = b.reshape(n * m.out_channels, 1, *b.shape[2:])
        g = F.conv2d(a, kernel, None, m.dilation, self._padding, m.stride, n * c_in)
        return g[:, :, :kh, :kw].reshape(n, m.out_channels, 1, kh, kw)

    def _group_bmm_t(self, b: torch.Tensor) -> torch.Tensor:
        """``U_j B_jᵀ`` (n·g, in/g·kh·kw, out/g), the transposed per-group weight gradients of ``b`` (n, out, ...).

        This orientation (the patches as the left factor) is the faster product.
        """
        n, g = b.shape[0], self.module.groups
        bg = b.reshape(n * g, b.shape[1] // g, -1)  # (n·g, out/g, L)
        return torch.bmm(self.group_unfolded, bg.transpose(1, 2))

    def _group_bmm(self, b: torch.Tensor) -> torch.Tensor:
        """``B_j U_jᵀ`` (n, g, out/g, in/g·kh·kw) for output-gradients ``b`` (n, out, ...)."""
        n, g = b.shape[0], self.module.groups
        bg = b.reshape(n * g, b.shape[1] // g, -1)  # (n·g, out/g, L)
        # in the weight's own layout: transposing U_j B_jᵀ afterwards would copy a tensor the weight's size per sample
        return torch.bmm(bg, self.group_unfolded.transpose(1, 2)).reshape(n, g, b.shape[1] // g, -1)

    def materialise_cheaper(self, n_cols: int, diagonal: bool = False) -> bool:
        """Per-column weight gradients (C'·out × k) against the ghost route (L × L), by multiply-adds."""
        m = self.module
        g = m.groups
        o = m.out_channels // g
        k = m.in_channels // g * m.kernel_size[0] * m.kernel_size[1]
        length = self.group_unfolded.shape[2]
        if 1 < g == m.in_channels:
            # one input channel per group: each group's product is a matrix-vector product, slower in
            # practice than the ghost form on the small maps (below CONV_TRICK_MIN_L) where patches are used
            return False
        pairs = n_cols if diagonal else n_cols * n_cols
        cost_materialise = g * (n_cols * o * k * length + pairs * o * k)
        cost_ghost = g * (length * length * (k + n_cols * o) + pairs * o * length)
        return cost_materialise <= cost_ghost

    @property
    def patch_gram(self) -> torch.Tensor:
        """``U_jᵀU_j`` (n·g, L, L): inner products of each group's input patches (computed once per call)."""
        if self._uu is None:
            u = self.group_unfolded
            self._uu = torch.bmm(u.transpose(1, 2), u)
        return self._uu

    def sq_norm(self, b: torch.Tensor, role: str, n_cols: int) -> torch.Tensor:
        if role == "bias":
            return sq_norms(b.sum((2, 3)))
        n = b.shape[0]
        if self.by_convolution:
            return sq_norms(self._depthwise_grad(b))
        if self.materialise_cheaper(n_cols, diagonal=True):
            return sq_norms(self._group_bmm_t(b).reshape(n, -1))
        g = self.module.groups
        if b[0, 0].numel() == 1:  # one output position: G_j = b_j u_jᵀ, so ‖G_j‖² = ‖b_j‖² ‖u_j‖² (no product)
            return torch.linalg.vecdot(b.reshape(n, g, -1).square().sum(2), self.patch_gram.reshape(n, g))
        bt = b.reshape(n * g, b.shape[1] // g, -1).transpose(1, 2)  # (n·g, L, out/g)
        # Σ_j ⟨(U_jᵀU_j) B_jᵀ, B_jᵀ⟩: the square L × L factor on the left is the faster product
        return (torch.bmm(self.patch_gram, bt) * bt).reshape(n, -1).sum(1)

    def flat_grad_fn(self, role: str, n_cols: int) -> FlatGrad | None:
        if role == "weight":
            if self.by_convolution:
                return lambda b: self._depthwise_grad(b).flatten(1)
            if not self.materialise_cheaper(n_cols):
                return None
            return lambda b: self._group_bmm_t(b).reshape(b.shape[0], -1)  # any fixed order of the entries
        return lambda b: b.sum((2, 3))

    def ghost_gram(self, b: torch.Tensor, role: str, diagonal: bool) -> torch.Tensor:
        if role != "weight":
            return self.materialised_gram(b, role, diagonal)
        n, n_cols, g = b.shape[0], b.shape[1], self.module.groups
        # (n·g, C'·out/g, L): each group's output-gradients of all columns against its own patch Gram
        b3 = b.reshape(n, n_cols, g, b.shape[2] // g, -1).transpose(1, 2).reshape(n * g, -1, b[0, 0, 0].numel())
        bw = torch.bmm(self.patch_gram, b3.transpose(1, 2)).transpose(1, 2)  # B_j (U_jᵀU_j), the faster orientation
        bw = bw.reshape(n, g, n_cols, -1).transpose(1, 2).reshape(n, n_cols, -1)
        b3 = b3.reshape(n, g, n_cols, -1).transpose(1, 2).reshape(n, n_cols, -1)
        if diagonal:
            return (bw * b3).sum(2)
        return torch.bmm(bw, b3.transpose(1, 2))

    def change(self, role: str, d: torch.Tensor, shared: bool) -> torch.Tensor:
        m = self.module
        n = self.a.shape[0]
        if role == "bias":
            return d.reshape(1 if shared else n, -1, 1, 1)
        if shared:
            return F.conv2d(self.a, d, None, m.stride, m.padding, m.dilation, m.groups)
        g = m.groups
        if self.by_convolution:
            # per-sample kernels: all samples as groups of one convolution
            a = self.a.reshape(1, n * m.in_channels, *self.a.shape[2:])
            kernels = d.reshape(n * m.out_channels, 1, *m.kernel_size)
            out = F.conv2d(a, kernels, None, m.stride, self._padding, m.dilation, n * g)
            return out.reshape(n, m.out_channels, *out.shape[2:])
        dg = d.reshape(n * g, d.shape[1] // g, -1)  # (n·g, out/g, in/g·kh·kw)
        out = torch.bmm(dg, self.group_unfolded)  # (n·g, out/g, L)
        return out.reshape(n, d.shape[1], self._out_height(), -1)
