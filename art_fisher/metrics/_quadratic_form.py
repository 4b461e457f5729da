r"""The quadratic form ``vᵀ F v`` along a direction, in full or blockwise (per parameter tensor).

For ``v = Jᵀ r`` (``r = e_y − p`` gives ``v = ∇θ log p_y``) and ``t_k = J_k v_k = K_k r``:

- full: ``vᵀ F v = (Σ_k t_k)ᵀ S (Σ_k t_k) = ‖Σ_k Wᵀ t_k‖²``;
- blockwise (the layer-wise sum the original code computes): ``Σ_k ‖Wᵀ t_k‖²``;

normalised by ``‖v‖² = rᵀ K r = Σ_k rᵀ t_k``. So ``C'`` backward passes (the columns of ``W``) and one
more with the cotangent ``r`` suffice (:func:`art_fisher.metrics._engine._grams.directional`). For a fixed
direction ``t_k`` comes from the layer's output change along ``v_k``. Along the top eigenvector
``v = Jᵀ W w``: ``Wᵀ t_k = K̃_k w`` from the Gram matrices ``K̃_k = Wᵀ K_k W``.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from art_fisher import _checks
from art_fisher.metrics import _directions as directions
from art_fisher.metrics._basis import ClassSelection, make_basis
from art_fisher.metrics._directions import Direction
from art_fisher.metrics._engine import _chunking as chunking
from art_fisher.metrics._engine._grams import directional
from art_fisher.metrics._engine._network import FunctionalNet
from art_fisher.metrics._engine._recorder import HookCoverage
from art_fisher.metrics._finite_difference import fd_quadratic_form
from art_fisher.metrics._setup import check_direction_args, grad_mode, input_for, setup
from art_fisher.metrics._top_mass import selection
from art_fisher.metrics._trace import basis_grams, top_eigen


def safe_divide(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """``num / den`` with 0 where ``den`` is 0 (a zero direction); NaN where either is not finite."""
    ok = den > 0
    out = torch.where(ok, num / torch.where(ok, den, torch.ones_like(den)), torch.zeros_like(num))
    return torch.where(torch.isfinite(num) & torch.isfinite(den), out, torch.full_like(out, float("nan")))


def quadratic_form(
    net: FunctionalNet,
    coverage: HookCoverage,
    x: torch.Tensor,
    *,
    direction: Direction,
    y: torch.Tensor | None,
    blockwise: bool,
    normalize: bool,
    classes: str | ClassSelection,
    chunk_size: int | None,
    create_graph: bool = False,
) -> torch.Tensor:
    """Exact quadratic form (N,) for a named or fixed direction."""
    if isinstance(direction, str):
        t, sq = _named_direction(
            net, coverage, x, y=y, classes=classes, chunk_size=chunk_size, create_graph=create_graph
        )
    else:
        v = dict(zip(net.names, direction, strict=True))
        _z, t, _r, _rt = directional(
            net,
            coverage,
            x,
            v=v,
            basis=make_basis(classes, smooth=create_graph),
            chunk_size=chunk_size,
            create_graph=create_graph,
        )
        sq = sum(d.pow(2).sum() for d in direction) * torch.ones(t.shape[0], dtype=x.dtype, device=x.device)
    num = t.pow(2).sum((1, 2)) if blockwise else t.sum(1).pow(2).sum(-1)
    return safe_divide(num, sq) if normalize else num


def _named_direction(
    net: FunctionalNet,
    coverage: HookCoverage,
    x: torch.Tensor,
    *,
    y: torch.Tensor | None,
    classes: str | ClassSelection,
    chunk_size: int | None,
    create_graph: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``Wᵀ t_k`` (N, n_tensors, C') and ``‖v‖²`` (N,) for ``v = Jᵀ r``, ``r = e_y − p`` (``y`` default the prediction).

    One backward pass with the cotangent ``r`` gives each layer's output change ``δo_k`` along ``v_k``,
    then each column of ``W`` costs one backward pass and an inner product with ``δo_k`` per tensor
    (:func:`~art_fisher.metrics._engine._grams.directional`).
    """
    _z, t, _r, rt = directional(
        net,
        coverage,
        x,
        coefficients=directions.coefficients,
        basis=make_basis(classes, smooth=create_graph),
        y=y,
        chunk_size=chunk_size,
        create_graph=create_graph,
    )
    assert rt is not None  # directional returns r and rᵀt when given coefficients
    return t, rt.sum(1)


def along_top_eigenvector(
    net: FunctionalNet,
    coverage: HookCoverage,
    x: torch.Tensor,
    *,
    blockwise: bool,
    classes: str | ClassSelection,
    chunk_size: int | None,
    create_graph: bool = False,
) -> torch.Tensor:
    """Quadratic form along the top eigenvector ``v = Jᵀ W w`` from the Gram matrices ``K̃_k = Wᵀ K_k W``.

    ``(K_k r)ᵀ S (K_k r) = ‖K̃_k w‖²`` and ``‖v‖² = wᵀ K̃ w`` for ``r = W w``; always normalised (an
    eigenvector has no natural length). ``"predicted_vs_rest"`` reduces at the predicted class.
    """
    k = basis_grams(net, coverage, x, chunk_size=chunk_size, classes=classes, create_graph=create_graph)
    _lam, w = top_eigen(k)
    kw = (k @ w.unsqueeze(1).unsqueeze(-1)).squeeze(-1)  # (N, n_tensors, C')
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
    fd_step: float,
    chunk_size: int | None,
) -> torch.Tensor:
    """The original algorithm's central differences (:mod:`art_fisher.metrics._finite_difference`)."""
    out = []
    for sl in chunking.chunks(x.shape[0], chunk_size or chunking.FINITE_DIFFERENCE_CHUNK):
        xb = x[sl]
        z = net.logits(net.selected(), xb)
        cls = directions.class_of(direction, z, None if y is None else y[sl])
        v, shared = directions.directions_of(net, xb, z, cls, direction, normalize)
        out.append(
            fd_quadratic_form(net, xb, v, cls, shared=shared, blockwise=blockwise, classes=classes, fd_step=fd_step)
        )
    return torch.cat(out)


def fisher_quadratic_form(
    model: nn.Module,
    x: torch.Tensor,
    *,
    direction: Direction = "predicted",
    y: torch.Tensor | None = None,
    blockwise: bool = False,
    normalize: bool = True,
    classes: str = "all",
    output: str = "logits",
    params: Iterable[str] | None = None,
    method: str = "exact",
    fd_step: float = 1e-3,
    chunk_size: int | None = None,
    create_graph: bool = False,
    tau: float | None = None,
) -> torch.Tensor:
    r"""Quadratic form ``vᵀ F(x) v`` of each sample's Fisher matrix along a direction ``v``.

    With ``direction="predicted"`` (default) ``v = ∇θ log p_ŷ`` for the predicted class ``ŷ``;
    ``"label"`` uses the given ``y``; ``"top_eigenvector"`` uses the top eigenvector of ``F(x)`` (then
    the normalised form equals :func:`fisher_max_eigenvalue`); a sequence of tensors (one per
    selected parameter, same shapes) is one fixed direction for every sample. With ``normalize=True``
    (default) ``v`` is scaled to unit length over all selected parameters together, so the result is
    the Rayleigh quotient ``vᵀFv / vᵀv``; ``normalize=False`` gives ``‖v‖²`` times that (the authors'
    package passes the raw gradient). A zero gradient gives 0.

    ``blockwise=False`` (default) is the full form ``vᵀ F v``; ``blockwise=True`` is the layer-wise sum
    ``Σ_k v_kᵀ F_kk v_k`` over parameter tensors ``k`` that the original code computes (``v`` still
    normalised over all tensors together). They agree when one tensor is selected.

    Parameters
    ----------
    model, x, output, params, chunk_size
        As in :func:`fisher_trace`.
    direction : {"predicted", "label", "top_eigenvector"} or sequence of Tensor
        The direction ``v``.
    y : Tensor of shape (N,), optional
        Integer labels in ``[0, C)``; required by (and only allowed with) ``direction="label"``.
    blockwise : bool
        Layer-wise (block-diagonal) sum instead of the full form.
    normalize : bool
        Scale ``v`` to unit length.
    classes : {"all", "predicted_vs_rest"}
        ``"predicted_vs_rest"`` first reduces the output to two classes, ``(log p_ŷ, log(1 − p_ŷ))``,
        with ``ŷ`` the predicted class (or ``y`` for ``direction="label"``), as the authors' package
        does for the sensitivity; the Fisher matrix is then that of the two-class distribution.
    method : {"exact", "finite_difference"}
        ``"finite_difference"`` reproduces the original algorithm: central differences of the outputs
        at ``θ ± ε v_k`` (per tensor when ``blockwise``, all tensors together otherwise). It is
        inexact on ReLU / max-pool networks (``ε`` crosses kinks). Not available with
        ``"top_eigenvector"``.
    fd_step : float
        Step of the finite differences.
    create_graph : bool
        As in :func:`fisher_trace`: the value as a function of ``x``, with ``v`` (which depends on
        ``x``) differentiated too; along ``"top_eigenvector"`` defined where the top eigenvalue is
        simple.
    tau : float in (0, 1), optional
        As in :func:`~art_fisher.metrics.fisher_trace` (with ``classes="all"``): ``vᵀ F_τ v ≤ vᵀ F v``.


    Returns
    -------
    Tensor of shape (N,)
        On ``x``'s device; detached unless ``create_graph``.

    Raises
    ------
    TypeError, ValueError
        As :func:`fisher_trace`.

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> from art_fisher.metrics import fisher_quadratic_form
    >>> _ = torch.manual_seed(0)
    >>> model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    >>> x = torch.randn(5, 4, dtype=torch.float64)
    >>> params = dict(model.named_parameters())
    >>> def log_probs(theta, xi):  # log p(c | xi) as a function of the parameters
    ...     return torch.log_softmax(torch.func.functional_call(model, theta, (xi,)), -1)
    >>> grads = torch.func.vmap(torch.func.jacrev(log_probs), in_dims=(None, 0))(params, x)
    >>> g = torch.cat([t.flatten(2) for t in grads.values()], 2).detach()  # (N, C, P): ∇θ log p_c
    >>> p = log_probs(params, x).exp().detach()
    >>> fisher = torch.einsum("nc,ncp,ncq->npq", p, g, g)  # dense F = Σ_c p_c ∇log p_c ∇log p_cᵀ
    >>> v = g[torch.arange(5), p.argmax(1)]  # ∇θ log p_ŷ of the predicted class
    >>> v = v / v.norm(dim=1, keepdim=True)
    >>> dense = torch.einsum("np,npq,nq->n", v, fisher, v)
    >>> torch.allclose(fisher_quadratic_form(model, x), dense, rtol=1e-10)
    True
    """
    net, n_classes, eps, chunk, coverage = setup(
        model,
        x,
        output=output,
        params=params,
        method=method,
        fd_step=fd_step,
        chunk_size=chunk_size,
        create_graph=create_graph,
        first_row_in_chunks=True,
    )
    direction, yt = check_direction_args(
        direction, y, net, x, n_classes, allow_top=True, blockwise=blockwise, normalize=normalize, classes=classes
    )
    selected = selection(tau, classes=classes, method=method)
    top = isinstance(direction, str) and direction == "top_eigenvector"
    if method == "finite_difference" and top:
        raise ValueError('method="finite_difference" does not support direction="top_eigenvector".')
    x = input_for(x, create_graph)
    with grad_mode(create_graph):
        if coverage is None:  # method="finite_difference": no hooks
            values = by_finite_differences(
                net,
                x,
                direction=direction,
                y=yt,
                blockwise=blockwise,
                normalize=normalize,
                classes=classes,
                fd_step=eps,
                chunk_size=chunk,
            )
        elif top:
            values = along_top_eigenvector(
                net,
                coverage,
                x,
                blockwise=blockwise,
                classes=selected,
                chunk_size=chunk,
                create_graph=create_graph,
            )
        else:
            values = quadratic_form(
                net,
                coverage,
                x,
                direction=direction,
                y=yt,
                blockwise=blockwise,
                normalize=normalize,
                classes=selected,
                chunk_size=chunk,
                create_graph=create_graph,
            )
    return _checks.check_finite_result(values, "fisher_quadratic_form")
