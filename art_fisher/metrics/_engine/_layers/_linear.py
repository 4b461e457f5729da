"""``nn.Linear``: ``o = a Wᵀ + β`` on inputs (n, in) or (n, *, in)."""

from __future__ import annotations

import torch
from torch import nn

from art_fisher.metrics._engine._layers._base import FlatGrad, LayerRule, gram, plain, sq_norms


class LinearRule(LayerRule):
    """Per-sample gradients ``Σ_t b_t a_tᵀ`` (weight) and ``Σ_t b_t`` (bias) over the positions ``t``.

    On (n, in) inputs the Gram matrix of weight gradients is ``(a·a) · B Bᵀ`` and is never
    materialised; on (n, T, in) inputs the cheaper of ``Σ_t b_t a_tᵀ`` per column and the ghost form
    ``Σ_ts (b_t·b'_s)(a_t·a_s)`` is used (by multiply-adds; the token Gram ``a_t·a_s`` once per call).
    """

    module_types = (nn.Linear,)
    module: nn.Linear

    def __init__(self, module: nn.Module, a: torch.Tensor) -> None:
        super().__init__(module, a)
        self._aa: torch.Tensor | None = None

    @staticmethod
    def supports(module: nn.Module, a: torch.Tensor, out: torch.Tensor) -> bool:
        return (
            plain(module, (nn.Linear,))
            and a.dim() >= 2
            and a.shape[-1] == module.in_features
            and out.shape == (*a.shape[:-1], module.out_features)
        )

    def _a3(self) -> torch.Tensor:
        return self.a.reshape(self.a.shape[0], -1, self.a.shape[-1])  # (n, T, in)

    def grad(self, b: torch.Tensor, role: str) -> torch.Tensor:
        b3 = b.reshape(b.shape[0], -1, b.shape[-1])  # (n, T, out)
        if role == "bias":
            return b3.sum(1)
        return torch.bmm(b3.transpose(1, 2), self._a3())

    @property
    def token_gram(self) -> torch.Tensor:
        """``a_t·a_s`` (n, T, T): inner products of the input's positions (computed once per call)."""
        if self._aa is None:
            a3 = self._a3()
            self._aa = torch.bmm(a3, a3.transpose(1, 2))
        return self._aa

    def materialise_cheaper(self, n_cols: int, out_features: int, diagonal: bool = False) -> bool:
        """Whether per-column weight gradients cost fewer multiply-adds than the ghost contraction (sequence inputs).

        ``n_cols`` columns; ``diagonal``: only their squared norms, not the whole Gram matrix.
        """
        if self.a.dim() == 2:
            return False
        t, i, o = self._a3().shape[1], self.a.shape[-1], out_features
        pairs = n_cols if diagonal else n_cols * n_cols
        cost_materialise = n_cols * o * i * t + pairs * o * i
        cost_ghost = t * t * i + n_cols * t * t * o + pairs * o * t
        return cost_materialise <= cost_ghost

    def flat_grad_fn(self, role: str, n_cols: int) -> FlatGrad | None:
        if role == "weight" and not self.materialise_cheaper(n_cols, self.module.out_features):
            return None
        return super().flat_grad_fn(role, n_cols)

    def ghost_gram(self, b: torch.Tensor, role: str, diagonal: bool) -> torch.Tensor:
        if role != "weight":
            return self.materialised_gram(b, role, diagonal)
        n, n_cols = b.shape[0], b.shape[1]
        if self.a.dim() == 2:
            scale = (self.a * self.a).sum(1)
            return scale.reshape(n, 1) * gram(b, True) if diagonal else scale.reshape(n, 1, 1) * gram(b)
        t = self.token_gram.shape[1]
        b4 = b.reshape(n, n_cols, t, -1)  # (n, C', T, out)
        # Σ_t (a_s·a_t) b_t for every column: the square T × T factor on the left of one product
        bt = b4.transpose(1, 2).reshape(n, t, -1)  # (n, T, C'·out)
        bw = torch.bmm(self.token_gram, bt).reshape(n, t, n_cols, -1).transpose(1, 2)
        if diagonal:
            return (bw * b4).flatten(2).sum(2)
        return torch.bmm(bw.flatten(2), b4.flatten(2).transpose(1, 2))

    def sq_norm(self, b: torch.Tensor, role: str, n_cols: int) -> torch.Tensor:
        if role == "weight" and self.a.dim() == 2:  # ‖b aᵀ‖² = ‖a‖² ‖b‖²
            return sq_norms(self.a) * sq_norms(b)
        if role == "weight" and not self.materialise_cheaper(n_cols, self.module.out_features, diagonal=True):
            b3 = b.reshape(b.shape[0], self.token_gram.shape[1], -1)  # (n, T, out)
            return torch.linalg.vecdot(torch.bmm(self.token_gram, b3).flatten(1), b3.flatten(1))
        return super().sq_norm(b, role, n_cols)

    def change(self, role: str, d: torch.Tensor, shared: bool) -> torch.Tensor:
        a = self.a
        n = a.shape[0]
        if role == "bias":
            return d.reshape(1 if shared else n, *([1] * (a.dim() - 2)), -1)
        if shared:
            return a @ d.transpose(0, 1)
        return torch.bmm(self._a3(), d.transpose(1, 2)).reshape(*a.shape[:-1], d.shape[1])

    def change_along_grad(self, b: torch.Tensor, role: str) -> torch.Tensor:
        if role == "weight" and self.a.dim() == 2:  # (b aᵀ) a = b ‖a‖²
            return b * (self.a * self.a).sum(1, keepdim=True)
        return super().change_along_grad(b, role)
