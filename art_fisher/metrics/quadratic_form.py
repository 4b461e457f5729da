r"""The quadratic form ``vᵀ F v`` along a direction, in full or blockwise (per parameter tensor).

For ``v = Jᵀ r`` (``r = e_y − p`` gives ``v = ∇θ log p_y``) and ``t_k = J_k v_k = K_k r``:

- full: ``vᵀ F v = (Σ_k t_k)ᵀ S (Σ_k t_k) = ‖Σ_k Wᵀ t_k‖²``;
- blockwise (the layer-wise sum the original code computes): ``Σ_k ‖Wᵀ t_k‖²``;

normalised by ``‖v‖² = rᵀ K r = Σ_k rᵀ t_k``. So ``C'`` backward passes (the columns of ``W``) and one
more with the cotangent ``r`` suffice (:func:`art_fisher.metrics.engine.grams.directional`). For a fixed
direction ``t_k`` comes from the layer's output change along ``v_k``. Along the top eigenvector
``v = Jᵀ W w``: ``Wᵀ t_k = K̃_k w`` from the blocks ``K̃_k = Wᵀ K_k W``.
"""

from __future__ import annotations

import torch

from art_fisher.metrics import directions
from art_fisher.metrics.basis import make_basis
from art_fisher.metrics.directions import Direction
from art_fisher.metrics.engine import chunking
from art_fisher.metrics.engine.grams import directional
from art_fisher.metrics.engine.network import FunctionalNet
from art_fisher.metrics.engine.recorder import Plan
from art_fisher.metrics.finite_difference import fd_quadratic_form
from art_fisher.metrics.trace import blocks, top_eigen


def safe_divide(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """``num / den`` with 0 where ``den`` is 0 (a zero direction); NaN where either is not finite."""
    ok = den > 0
    out = torch.where(ok, num / torch.where(ok, den, torch.ones_like(den)), torch.zeros_like(num))
    return torch.where(torch.isfinite(num) & torch.isfinite(den), out, torch.full_like(out, float("nan")))


def quadratic_form(
    net: FunctionalNet,
    plan: Plan,
    x: torch.Tensor,
    *,
    direction: Direction,
    y: torch.Tensor | None,
    blockwise: bool,
    normalize: bool,
    classes: str,
    batch_size: int | None,
    create_graph: bool = False,
) -> torch.Tensor:
    """Exact quadratic form (N,) for a named or fixed direction."""
    if isinstance(direction, str):
        t, sq = _named_direction(net, plan, x, y=y, classes=classes, batch_size=batch_size, create_graph=create_graph)
    else:
        v = dict(zip(net.names, direction, strict=True))
        _z, t, _r, _rt = directional(
            net, plan, x, v=v, basis=make_basis(classes, smooth=create_graph), batch_size=batch_size,
            create_graph=create_graph,
        )
        sq = sum(d.pow(2).sum() for d in direction) * torch.ones(t.shape[0], dtype=x.dtype, device=x.device)
    num = t.pow(2).sum((1, 2)) if blockwise else t.sum(1).pow(2).sum(-1)
    return safe_divide(num, sq) if normalize else num


def _named_direction(
    net: FunctionalNet,
    plan: Plan,
    x: torch.Tensor,
    *,
    y: torch.Tensor | None,
    classes: str,
    batch_size: int | None,
    create_graph: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``Wᵀ t_k`` (N, B, C') and ``‖v‖²`` (N,) for ``v = Jᵀ r``, ``r = e_y − p`` (``y`` default the prediction).

    One backward pass with the cotangent ``r`` gives each layer's output change ``δo_k`` along ``v_k``,
    then each column of ``W`` costs one backward pass and an inner product with ``δo_k`` per tensor
    (:func:`~art_fisher.metrics.engine.grams.directional`).
    """
    _z, t, _r, rt = directional(
        net, plan, x, coefficients=directions.coefficients, basis=make_basis(classes, smooth=create_graph), y=y,
        batch_size=batch_size, create_graph=create_graph,
    )
    assert rt is not None  # directional returns r and rᵀt when given coefficients
    return t, rt.sum(1)


def along_top_eigenvector(
    net: FunctionalNet,
    plan: Plan,
    x: torch.Tensor,
    *,
    blockwise: bool,
    classes: str,
    batch_size: int | None,
    create_graph: bool = False,
) -> torch.Tensor:
    """Quadratic form along the top eigenvector ``v = Jᵀ W w`` from the blocks ``K̃_k = Wᵀ K_k W``.

    ``(K_k r)ᵀ S (K_k r) = ‖K̃_k w‖²`` and ``‖v‖² = wᵀ K̃ w`` for ``r = W w``; always normalised (an
    eigenvector has no natural length). ``"predicted_vs_rest"`` reduces at the predicted class.
    """
    k = blocks(net, plan, x, batch_size=batch_size, classes=classes, create_graph=create_graph)
    _lam, w = top_eigen(k)
    kw = (k @ w.unsqueeze(1).unsqueeze(-1)).squeeze(-1)  # (N, B, C')
    num = kw.pow(2).sum((1, 2)) if blockwise else kw.sum(1).pow(2).sum(-1)
    return safe_divide(num, torch.einsum("nc,nc->n", w, kw.sum(1)))


def by_finite_differences(
    net: FunctionalNet,
    x: torch.Tensor,
    *,
    direction: Direction,
    y: torch.Tensor | None,
    blockwise: bool,
    normalize: bool,
    classes: str,
    epsilon: float,
    batch_size: int | None,
) -> torch.Tensor:
    """The original algorithm's central differences (:mod:`art_fisher.metrics.finite_difference`)."""
    out = []
    for sl in chunking.chunks(x.shape[0], batch_size or chunking.FINITE_DIFFERENCE_CHUNK):
        xb = x[sl]
        z = net.logits(net.selected(), xb)
        cls = directions.class_of(direction, z, None if y is None else y[sl])
        v, shared = directions.directions_of(net, xb, z, cls, direction, normalize)
        out.append(fd_quadratic_form(net, xb, v, cls, shared=shared, blockwise=blockwise, classes=classes, epsilon=epsilon))
    return torch.cat(out)
