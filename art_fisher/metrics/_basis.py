r"""The output covariance ``S = diag p − p pᵀ``, its factors, and the predicted-vs-rest reduction.

Every exact metric needs ``F = Jᵀ S J`` only through ``Wᵀ J`` for some ``W`` with ``W Wᵀ = S``: the
backward passes of the hook engine run along the columns of ``W``.

- :func:`factor`: ``W = V diag(√λ)`` over the ``C − 1`` non-zero eigenpairs of ``S`` (``S 1 = 0``);
- :func:`smooth_factor`: ``L = (I − p 1ᵀ) diag(√p)`` (``C`` columns), smooth in ``p``, for results that
  must be differentiable in the input;
- :func:`class_reduction` / :func:`predicted_vs_rest`: ``classes="predicted_vs_rest"`` first reduces the
  logits to ``z₂ = (log p_ŷ, log(1 − p_ŷ))``; then ``W = Aᵀ W₂`` with ``A = ∂z₂/∂z`` (2 × C).

A class with ``p_c = 0`` (``z_c = −∞``) has a zero row in ``S`` and in every factor. :func:`complement`
and :func:`centered` keep float32 accuracy where ``p_ŷ`` rounds to 1 (the guide's "Accuracy in
float32").
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch
from torch.func import jacrev, vmap


def complement(p: torch.Tensor) -> torch.Tensor:
    """``1 − p`` (..., C) of probabilities ``p``, the most probable class's as the sum of the other classes'."""
    top = p.argmax(-1, keepdim=True)
    return (1 - p).scatter(-1, top, p.scatter(-1, top, 0).sum(-1, keepdim=True))


def identity_minus(p: torch.Tensor) -> torch.Tensor:
    """``I − p 1ᵀ`` (..., C, C): entry ``(c, d)`` is ``δ_cd − p_c``, the diagonal by :func:`complement`."""
    eye = torch.eye(p.shape[-1], dtype=torch.bool, device=p.device)
    return torch.where(eye, torch.diag_embed(complement(p)), -p.unsqueeze(-1))


def centered(x: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """``x_c − Σ_d p_d x_d`` along the last axis of ``x`` (..., C), as ``(x_c − x_ŷ) − Σ_d p_d (x_d − x_ŷ)``.

    ``ŷ`` is each row's most probable class; the subtracted sum then has no term of size ``x_ŷ``, so no
    digit is lost where ``p_ŷ`` rounds to 1. ``p`` (..., C) broadcasts against ``x``.
    """
    top = p.argmax(-1, keepdim=True)
    # Σ_d p_d (x_d − x_ŷ) = Σ_d w_d x_d with w = p but w_ŷ = −(1 − p_ŷ): batched dot products, no (…, C) temporary
    w = p.scatter(-1, top, -complement(p).gather(-1, top))
    shifted = (x.unsqueeze(-2) @ w.unsqueeze(-1)).squeeze(-1)
    return x - x.gather(-1, top.expand(*x.shape[:-1], 1)) - shifted


def covariance(p: torch.Tensor) -> torch.Tensor:
    """``S = diag(p) − p pᵀ`` (..., C, C), the diagonal ``p_c (1 − p_c)`` by :func:`complement`."""
    eye = torch.eye(p.shape[-1], dtype=torch.bool, device=p.device)
    return torch.where(eye, torch.diag_embed(p * complement(p)), -p.unsqueeze(-1) * p.unsqueeze(-2))


def factor(p: torch.Tensor) -> torch.Tensor:
    """``W`` (..., C, C − 1) with ``W Wᵀ = diag(p) − p pᵀ``, from the eigendecomposition of ``S``.

    ``S`` is positive semi-definite with ``S 1 = 0``, so its smallest eigenvalue is 0 (up to rounding)
    and the other ``C − 1`` eigenpairs give ``S`` exactly.
    """
    evals, evecs = torch.linalg.eigh(covariance(p))
    w = evecs[..., 1:] * evals[..., 1:].clamp_min(0).sqrt().unsqueeze(-2)
    return w * (p > 0).unsqueeze(-1)  # exact zero rows for classes without probability


def smooth_factor(p: torch.Tensor) -> torch.Tensor:
    """``L = (I − p 1ᵀ) diag(√p)`` (..., C, C) with ``L Lᵀ = diag(p) − p pᵀ``; smooth in ``p``."""
    return identity_minus(p) * p.sqrt().unsqueeze(-2)


def predicted_vs_rest(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Two-class reduction ``(log p_y, log(1 − p_y))`` of logits ``z`` (..., C) at class ``y`` (...).

    ``log(1 − p_y)`` is the log-sum-exp of the other classes' log-probabilities, which stays finite when
    ``p_y`` rounds to 1 (and is ``−∞`` when every other class has ``z_c = −∞``).
    """
    # Explicit exp / sum / log: the forward-mode formulas of log_softmax and logsumexp are not
    # differentiable again in reverse mode (they work in place), and the sensitivity needs that.
    mask = torch.arange(z.shape[-1], device=z.device) == y.unsqueeze(-1)  # one_hot fails under vmap
    shift = z.amax(-1, keepdim=True).detach()
    total = torch.log(torch.exp(z - shift).sum(-1))
    own = (z - shift).gather(-1, y.unsqueeze(-1)).squeeze(-1) - total
    rest_shift = z.masked_fill(mask, float("-inf")).amax(-1, keepdim=True).detach()
    rest_shift = torch.where(torch.isfinite(rest_shift), rest_shift, torch.zeros_like(rest_shift))
    rest_sum = torch.exp((z - rest_shift).masked_fill(mask, float("-inf"))).sum(-1)
    rest = torch.log(rest_sum) + (rest_shift - shift).squeeze(-1) - total
    return torch.stack([own, rest], dim=-1)


def class_reduction(classes: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``(z, y) ↦`` the logits the Fisher matrix is taken of: ``z`` itself, or :func:`predicted_vs_rest`."""
    if classes == "predicted_vs_rest":
        return predicted_vs_rest
    return lambda z, _y: z


def reduction_jacobian(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``A = ∂z₂/∂z`` (n, 2, C) of :func:`predicted_vs_rest` at logits ``z`` (n, C) and classes ``y`` (n,).

    Undefined entries (every other class at ``−∞``, where the two-class distribution is ``(1, 0)`` and
    its Fisher matrix is 0) are set to 0.
    """
    return torch.nan_to_num(vmap(jacrev(predicted_vs_rest))(z, y), nan=0.0, posinf=0.0, neginf=0.0)


Basis = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class ClassSelection(Protocol):
    """A selection of classes that makes its own basis (:class:`~art_fisher.metrics._top_mass.TopMass`)."""

    def basis(self, smooth: bool = False) -> Basis:
        """``(z, y) ↦ W`` for this selection; see :func:`make_basis`."""
        ...


def make_basis(classes: str | ClassSelection, *, smooth: bool = False) -> Basis:
    """``(z, y) ↦ W`` (n, C, C') with ``W Wᵀ`` the output covariance in logit coordinates.

    Parameters
    ----------
    classes : {"all", "predicted_vs_rest"} or TopMass
        ``"all"``: ``W Wᵀ = S``; ``"predicted_vs_rest"``: ``W Wᵀ = Aᵀ S₂ A``, the two-class reduction at
        the class ``y`` (n,) of each sample; a :class:`~art_fisher.metrics._top_mass.TopMass`: its own
        basis (the most probable classes and one class for the rest).
    smooth : bool
        Use :func:`smooth_factor` (``C'`` = C, or 2), differentiable in ``z``, instead of :func:`factor`
        (``C'`` = C − 1, or 1).
    """
    if not isinstance(classes, str):  # a class selection that makes its own basis (top_mass.TopMass)
        return classes.basis(smooth=smooth)
    fac = smooth_factor if smooth else factor

    def basis(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if classes == "all":
            return fac(torch.softmax(z, -1))
        amat = reduction_jacobian(z, y)  # (n, 2, C)
        return amat.transpose(1, 2) @ fac(torch.softmax(predicted_vs_rest(z, y), -1))

    return basis


class ChunkBasis:
    """A :data:`Basis` evaluated once per chunk, so that the hook and ``torch.func`` parts use the same ``W``.

    ``basis=None`` is the identity (the unit vectors of the ``C`` classes); ``y`` (n,) are the chunk's classes.
    """

    def __init__(self, basis: Basis | None, y: torch.Tensor | None) -> None:
        self.basis_of_z = basis
        self.y = y
        self.w: torch.Tensor | None = None

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        """``W`` (n, C, C') of the chunk with logits ``z``."""
        if self.w is None:
            if self.basis_of_z is None:
                eye = torch.eye(z.shape[1], dtype=z.dtype, device=z.device)
                self.w = eye.expand(z.shape[0], -1, -1)
            else:
                self.w = self.basis_of_z(z, z.argmax(-1) if self.y is None else self.y)
        return self.w

    def grams(self, k: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """``Wᵀ K_k W`` for the Gram matrices ``k`` (n, n_tensors, C, C)."""
        if self.basis_of_z is None:
            return k
        w = self(z)
        return torch.einsum("nca,nbcd,ndf->nbaf", w, k, w)

    def vector(self, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """``Wᵀ t`` for ``t`` (n, C)."""
        return t if self.basis_of_z is None else (self(z).transpose(1, 2) @ t.unsqueeze(-1)).squeeze(-1)
