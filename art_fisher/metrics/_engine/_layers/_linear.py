"""``nn.Linear``: ``o = a Wᵀ + β`` on inputs (n, in) or (n, *, in)."""

from __future__ import annotations

import torch
from torch import nn

from art_fisher.metrics._engine._layers._base import FlatGrad, LayerRule, gram, plain


class LinearRule(LayerRule):
    """Per-sample gradients ``Σ_t b_t a_tᵀ`` (weight) and ``Σ_t b_t`` (bias) over the positions ``t``.

    On (n, in) inputs the Gram matrix of weight gradients is ``(a·a) · B Bᵀ`` and is never
    materialised; on (n, T, in) inputs the cheaper of ``Σ_t b_t a_tᵀ`` per column and the ghost form
    ``Σ_ts (b_t·b'_s)(a_t·a_s)`` is used.
    """

    module_types = (nn.Linear,)
    module: nn.Linear

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

    def materialise_cheaper(self, n_cols: int, out_features: int) -> bool:
        """Whether per-column weight gradients cost less than the ghost contraction (sequence inputs)."""
        if self.a.dim() == 2:
            return False
        t, i = self._a3().shape[1], self.a.shape[-1]
        return n_cols * out_features * i <= t * t * (i + n_cols * out_features)

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
        a3 = self._a3()
        b4 = b.reshape(n, n_cols, a3.shape[1], -1)  # (n, C', T, out)
        aa = torch.bmm(a3, a3.transpose(1, 2))  # (n, T, T)
        bw = torch.einsum("ncto,nts->ncso", b4, aa)
        if diagonal:
            return (bw * b4).flatten(2).sum(2)
        return torch.bmm(bw.flatten(2), b4.flatten(2).transpose(1, 2))

    def sq_norm(self, b: torch.Tensor, role: str, n_cols: int) -> torch.Tensor:
        if role == "weight" and self.a.dim() == 2:  # ‖b aᵀ‖² = ‖a‖² ‖b‖²
            return (self.a * self.a).sum(1) * (b * b).sum(1)
        if role == "weight" and not self.materialise_cheaper(1, self.module.out_features):
            return self.ghost_gram(b.unsqueeze(1), role, diagonal=True)[:, 0]
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
