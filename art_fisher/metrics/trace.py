r"""The trace of the Fisher matrix, per parameter tensor and in total, and its largest eigenvalue.

With the Gram blocks ``K_k = J_k J_kᵀ`` (C × C) of each parameter tensor ``k`` and a factor ``W`` of
``S = diag p − p pᵀ`` (``W Wᵀ = S``, :mod:`art_fisher.metrics.basis`):

- the trace of tensor ``k``'s diagonal block of ``F`` is ``tr(J_kᵀ S J_k) = tr(Wᵀ K_k W)``, which needs
  only the diagonal of ``Wᵀ K_k W``: the squared norms of per-sample gradients, one per column of ``W``;
- ``tr F`` is their sum;
- the non-zero eigenvalues of ``F = Jᵀ W Wᵀ J`` are those of the C' × C' matrix ``Wᵀ K W``
  (``K = Σ_k K_k``), so ``λ_max(F)`` is one small symmetric eigensolve per sample. Its eigenvector ``w``
  gives the top eigenvector ``Jᵀ W w`` of ``F``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from art_fisher.metrics.basis import make_basis
from art_fisher.metrics.engine.grams import gram_blocks
from art_fisher.metrics.engine.network import FunctionalNet
from art_fisher.metrics.engine.recorder import Plan

if TYPE_CHECKING:
    from art_fisher.metrics.top_mass import TopMass


def block_traces(
    net: FunctionalNet,
    plan: Plan,
    x: torch.Tensor,
    *,
    batch_size: int | None,
    create_graph: bool = False,
    classes: str | TopMass = "all",
) -> torch.Tensor:
    """``tr F_kk`` (N, B) for each selected parameter tensor ``k`` (in ``net.names`` order)."""
    _z, diag, _w = gram_blocks(
        net, plan, x, basis=make_basis(classes, smooth=create_graph), batch_size=batch_size, diagonal=True,
        create_graph=create_graph,
    )
    return diag.sum(-1)


def blocks(
    net: FunctionalNet,
    plan: Plan,
    x: torch.Tensor,
    *,
    batch_size: int | None,
    classes: str = "all",
    create_graph: bool = False,
) -> torch.Tensor:
    """The blocks ``Wᵀ K_k W`` (N, B, C', C'); ``"predicted_vs_rest"`` reduces at the predicted class."""
    basis = make_basis(classes, smooth=create_graph)
    return gram_blocks(net, plan, x, basis=basis, batch_size=batch_size, create_graph=create_graph)[1]


def top_eigen(k: torch.Tensor, *, vectors: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``λ_max(F)`` (N,) and, if ``vectors``, its unit eigenvector ``w`` (N, C') of ``K̃ = Σ_k K̃_k``.

    The eigenvector of ``F`` is ``Jᵀ W w``, i.e. ``v = Jᵀ r`` with ``r = W w``. Without vectors only
    eigenvalues are computed, whose derivative is defined even where other eigenvalues coincide.
    """
    m = k.sum(1)
    m = (m + m.transpose(-1, -2)) / 2
    if not vectors:
        return torch.linalg.eigvalsh(m)[..., -1].clamp_min(0), None
    evals, evecs = torch.linalg.eigh(m)
    return evals[..., -1].clamp_min(0), evecs[..., -1]


def max_eigenvalue(
    net: FunctionalNet,
    plan: Plan,
    x: torch.Tensor,
    *,
    batch_size: int | None,
    create_graph: bool = False,
    classes: str | TopMass = "all",
) -> torch.Tensor:
    """``λ_max(F(x))`` (N,)."""
    k = blocks(net, plan, x, batch_size=batch_size, classes=classes, create_graph=create_graph)
    return top_eigen(k, vectors=False)[0]
