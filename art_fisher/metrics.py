r"""Exact, batched Fisher-information metrics of a classifier's prediction.

For one input ``x`` with logits ``z`` (C,), class probabilities ``p = softmax(z)`` and the Jacobian
``J = ∂z/∂θ`` (C × P) over the selected parameters ``θ``, the Fisher information of the predictive
distribution is

.. math::

    F(x) = \sum_c p_c \nabla_θ \log p_c \nabla_θ \log p_c^\top = J^\top S J,
    \qquad S = \operatorname{diag}(p) - p p^\top .

``F`` is never formed. With the C × C Gram matrices ``K_k = J_k J_kᵀ`` of each parameter tensor ``k``
(``K = Σ_k K_k``) and a direction ``v = Jᵀ r`` (``r = e_y − p`` gives ``v = ∇θ log p_y``):

- trace: ``tr F = tr(S K) = Σ_c p_c K_cc − pᵀ K p = tr(Wᵀ K W)`` with ``W Wᵀ = S`` (C × (C − 1): the
  backward passes run along the C − 1 columns of ``W``, not the C classes);
- quadratic form: ``vᵀ F v = (K r)ᵀ S (K r)``, normalised by ``‖v‖² = rᵀ K r``; blockwise (the layer-wise
  sum the original code computes, ``v`` still normalised over all selected parameters together):
  ``Σ_k (K_k r)ᵀ S (K_k r) / (rᵀ K r)``;
- largest eigenvalue: ``λ_max(F)`` is the largest eigenvalue of the C × C matrix ``Lᵀ K L`` where
  ``S = L Lᵀ``, ``L = (I − p 1ᵀ) diag(√p)``;
- sensitivity: see :func:`fisher_sensitivity`.

A model returning log-probabilities is used as it is (``F`` does not change when ``z`` is shifted by
a constant); a model returning probabilities is used through ``z = log p``. The model is never
modified: parameters, ``.grad``, ``requires_grad`` flags and train/eval mode come back as they were.
Models with BatchNorm or Dropout must be in eval mode (a ValueError names the module otherwise):
in training mode one sample's output depends on the batch or on chance.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence

import torch
from torch import nn

from art_fisher import _checks
from art_fisher._finite_difference import fd_quadratic_form, fd_sensitivity, per_class_trace
from art_fisher._functional import FunctionalNet, predicted_vs_rest, predicted_vs_rest_jacobian
from art_fisher._fast_sensitivity import fast_sensitivity
from art_fisher._gram import block_directional, block_grams, func_chunk, hook_chunk
from art_fisher._layer_grams import plan
from art_fisher._piecewise import is_piecewise_linear
from art_fisher._sensitivity import exact_sensitivity, sample_directions

logger = logging.getLogger(__name__)

__all__ = ["fisher_trace", "fisher_quadratic_form", "fisher_sensitivity", "fisher_max_eigenvalue"]

Direction = str | Sequence[torch.Tensor]

# Default chunk sizes (samples) where the caller gives no batch_size.
_SENSITIVITY_CHUNK = 32
# Rows (samples × replicas of one module's tensors) of one pass of the fast exact sensitivity.
_FIS_ROWS = 64
# Bytes of per-class output-gradients per chunk of the piecewise-linear sensitivity path: its batched
# backward passes hold C × chunk rows of every activation (16 samples on the digits CNN, 1 on the
# CIFAR-size one, the fastest there when measured).
_PIECEWISE_FIS_BUDGET = 2 * 2**20
_FD_CHUNK = 64
_QUAD_CHUNK = 256


def _chunks(n: int, size: int) -> Iterator[slice]:
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))


def _setup(
    model: nn.Module,
    x: torch.Tensor,
    *,
    output: str,
    params: Iterable[str] | None,
    method: str = "exact",
    epsilon: float = 1e-3,
    batch_size: int | None = None,
) -> tuple[FunctionalNet, int, float, int | None]:
    _checks.check_model(model)
    _checks.check_x(x)
    _checks.check_choice("output", output, _checks.OUTPUTS)
    _checks.check_choice("method", method, _checks.METHODS)
    eps = _checks.check_epsilon(epsilon)
    bs = _checks.check_batch_size(batch_size)
    names = _checks.check_params(model, params)
    _checks.check_model_matches_x(model, names, x)
    n_classes = _checks.probe_output(model, x, output)
    return FunctionalNet(model, names, output), n_classes, eps, bs


def _covariance(p: torch.Tensor) -> torch.Tensor:
    """``S = diag(p) − p pᵀ`` (..., C, C)."""
    return torch.diag_embed(p) - p.unsqueeze(-1) * p.unsqueeze(-2)


def _factor(p: torch.Tensor) -> torch.Tensor:
    """``W`` (..., C, C − 1) with ``W Wᵀ = diag(p) − p pᵀ``.

    ``S = diag(p) − p pᵀ`` is positive semi-definite with ``S 1 = 0``, so its smallest eigenvalue is 0
    (up to rounding) and ``W = V diag(√λ)`` over the other ``C − 1`` eigenpairs is exact: one backward
    pass fewer than the ``C`` unit vectors, for the trace, λ_max and the quadratic form alike.
    """
    evals, evecs = torch.linalg.eigh(_covariance(p))
    return evecs[..., 1:] * evals[..., 1:].clamp_min(0).sqrt().unsqueeze(-2)


def _basis(classes: str, cls_of_z=None):
    """``z ↦ W`` (n, C, C') with ``W Wᵀ`` the output covariance in logit coordinates.

    ``classes="all"``: ``W Wᵀ = S`` (``C' = C − 1``). ``"predicted_vs_rest"``: the two-class reduction
    ``z₂ = (log p_ŷ, log(1 − p_ŷ))`` has ``F = Jᵀ Aᵀ S₂ A J`` with ``A = ∂z₂/∂z`` (2 × C) and
    ``S₂`` of rank 1, so ``W = Aᵀ W₂`` (``C' = 1``); ``cls_of_z`` gives ``ŷ``.
    """

    def basis(z: torch.Tensor) -> torch.Tensor:
        if classes == "all":
            return _factor(torch.softmax(z, -1))
        cls = cls_of_z(z)
        amat = predicted_vs_rest_jacobian(z, cls)  # (n, 2, C)
        return amat.transpose(1, 2) @ _factor(torch.softmax(predicted_vs_rest(z, cls), -1))

    return basis


def _safe_divide(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    return torch.where(den > 0, num / torch.where(den > 0, den, torch.ones_like(den)), torch.zeros_like(num))


def _grams(
    net: FunctionalNet, x: torch.Tensor, n_classes: int, bs: int | None, classes: str = "all", cls_of_z=None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (N, C) and blocks ``K̃_k = Wᵀ K_k W`` (N, B, C', C') in the basis of :func:`_basis`."""
    return block_grams(net, x, n_classes, batch_size=bs, basis_of_z=_basis(classes, cls_of_z))


def _top_eigen(k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``λ_max(F)`` (N,) and its unit eigenvector ``w`` (N, C') of ``K̃ = Σ_k K̃_k``.

    With ``F = Jᵀ W Wᵀ J`` the non-zero eigenvalues of ``F`` are those of ``K̃ = Wᵀ J Jᵀ W``; the
    eigenvector of ``F`` is ``Jᵀ W w``, i.e. ``v = Jᵀ r`` with ``r = W w``.
    """
    m = k.sum(1)
    evals, evecs = torch.linalg.eigh((m + m.transpose(-1, -2)) / 2)
    return evals[..., -1].clamp_min(0), evecs[..., -1]


def _class_of(direction: Direction, z: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
    return y if isinstance(direction, str) and direction == "label" else z.argmax(-1)


def fisher_trace(
    model: nn.Module,
    x: torch.Tensor,
    *,
    output: str = "logits",
    params: Iterable[str] | None = None,
    method: str = "exact",
    epsilon: float = 1e-3,
    batch_size: int | None = None,
) -> torch.Tensor:
    r"""Trace of each sample's Fisher matrix, ``tr F(x) = Σ_c p_c ‖∇θ log p_c‖²``.

    Computed as ``tr(S K) = tr(Wᵀ K W)`` (``W Wᵀ = S``, C − 1 columns) from the Gram matrix
    ``K = J Jᵀ`` of the logits' Jacobian over the selected parameters.

    Parameters
    ----------
    model : nn.Module
        Maps ``x`` (N, ...) to (N, C); BatchNorm / Dropout modules in eval mode.
    x : Tensor of shape (N, ...)
        Finite float inputs with the model's dtype and device.
    output : {"logits", "log_probs", "probs"}
        What the model returns.
    params : iterable of str, optional
        Names (as in ``model.named_parameters()``) of the parameters the Fisher matrix is taken over;
        default: every parameter with ``requires_grad``.
    method : {"exact", "finite_difference"}
        ``"finite_difference"`` reproduces the original algorithm, which for the trace sums per-class
        products of backward-pass gradients ``Σ_c ⟨∇θ z_c, ∇θ p_c⟩`` (it has no finite difference, so
        it equals the exact trace up to rounding and ignores ``epsilon``); it is slower.
    epsilon : float
        Validated only (the trace has no finite difference).
    batch_size : int, optional
        Samples processed at once (bounds memory); default: chosen internally.

    Returns
    -------
    Tensor of shape (N,)
        Detached, on ``x``'s device, in ``x``'s dtype.

    Raises
    ------
    TypeError, ValueError
        For invalid arguments (before any computation).
    """
    net, n_classes, _eps, bs = _setup(
        model, x, output=output, params=params, method=method, epsilon=epsilon, batch_size=batch_size
    )
    x = x.detach()
    with torch.no_grad():
        if method == "finite_difference":
            # per-sample Jacobians of logits and probabilities: twice the "func" engine's memory
            size = bs or max(1, func_chunk(net, n_classes, net.names, x.element_size()) // 2)
            return torch.cat([per_class_trace(net, x[sl]) for sl in _chunks(x.shape[0], size)])
        _z, k = _grams(net, x, n_classes, bs)
        return k.diagonal(dim1=-2, dim2=-1).sum((1, 2))  # tr F = tr(S K) = tr(Wᵀ K W)


def fisher_max_eigenvalue(
    model: nn.Module,
    x: torch.Tensor,
    *,
    output: str = "logits",
    params: Iterable[str] | None = None,
    batch_size: int | None = None,
) -> torch.Tensor:
    r"""Largest eigenvalue ``λ_max(F(x))`` of each sample's Fisher matrix.

    The non-zero eigenvalues of ``F = Jᵀ S J`` are those of the C × C matrix ``Lᵀ (J Jᵀ) L`` with
    ``S = L Lᵀ`` (``L = (I − p 1ᵀ) diag(√p)``, so ``S^½ K S^½`` up to an orthogonal change of basis);
    the cost is that of :func:`fisher_trace` plus one C × C symmetric eigensolve per sample.
    ``tr F ≥ λ_max(F) ≥ uᵀ F u`` for every unit vector ``u``.

    Parameters
    ----------
    model, x, output, params, batch_size
        As in :func:`fisher_trace`.

    Returns
    -------
    Tensor of shape (N,)
        Detached, on ``x``'s device.

    Raises
    ------
    TypeError, ValueError
        For invalid arguments (before any computation).
    """
    net, n_classes, _eps, bs = _setup(model, x, output=output, params=params, batch_size=batch_size)
    x = x.detach()
    with torch.no_grad():
        _z, k = _grams(net, x, n_classes, bs)
        return _top_eigen(k)[0]


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
    epsilon: float = 1e-3,
    batch_size: int | None = None,
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
    model, x, output, params, batch_size
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
    epsilon : float
        Step of the finite differences.

    Returns
    -------
    Tensor of shape (N,)
        Detached, on ``x``'s device.

    Raises
    ------
    TypeError, ValueError
        For invalid arguments (before any computation).
    """
    net, n_classes, eps, bs = _setup(
        model, x, output=output, params=params, method=method, epsilon=epsilon, batch_size=batch_size
    )
    direction, yt = _check_direction_args(
        direction, y, net, x, n_classes, allow_top=True, blockwise=blockwise, normalize=normalize,
        classes=classes,
    )
    if method == "finite_difference" and isinstance(direction, str) and direction == "top_eigenvector":
        raise ValueError('method="finite_difference" does not support direction="top_eigenvector".')
    x = x.detach()
    with torch.no_grad():
        if method == "exact" and isinstance(direction, str) and direction == "top_eigenvector":
            return _quadratic_top_eigenvector(net, x, n_classes, bs, blockwise, classes)
        if method == "exact":
            size = bs or _QUAD_CHUNK
            parts = []
            for sl in _chunks(x.shape[0], size):
                parts.append(
                    _quadratic_directional(
                        net, x[sl], n_classes, direction, None if yt is None else yt[sl], blockwise, normalize,
                        classes, bs,
                    )
                )
            return torch.cat(parts)
        out = []
        for sl in _chunks(x.shape[0], bs or _FD_CHUNK):
            out.append(
                _quadratic_finite_difference(
                    net, x[sl], direction, None if yt is None else yt[sl], blockwise, normalize, classes, eps
                )
            )
        return torch.cat(out)


def _quadratic_directional(
    net: FunctionalNet,
    x: torch.Tensor,
    n_classes: int,
    direction: Direction,
    y: torch.Tensor | None,
    blockwise: bool,
    normalize: bool,
    classes: str,
    bs: int | None,
) -> torch.Tensor:
    """Exact quadratic form of one chunk from ``Wᵀ t_k``, ``t_k = J_k v_k`` (``= K_k r`` for ``v = Jᵀ r``).

    ``(t_k)ᵀ S t_k = ‖Wᵀ t_k‖²`` with ``W Wᵀ = S`` (:func:`_basis`), so ``C'`` backward passes suffice.
    """
    basis = _basis(classes, lambda z: _class_of(direction, z, y))
    if isinstance(direction, str):

        def r_of_z(z: torch.Tensor) -> torch.Tensor:
            cls = _class_of(direction, z, y)
            return torch.nn.functional.one_hot(cls, z.shape[-1]).to(z.dtype) - torch.softmax(z, -1)

        _z, t, _r, rt = block_directional(net, x, n_classes, r_of_z=r_of_z, basis_of_z=basis, batch_size=bs)
        sq = rt.sum(1)  # ‖v‖² = rᵀ K r
    else:
        v = dict(zip(net.names, direction, strict=True))
        _z, t, _r, _rt = block_directional(net, x, n_classes, v=v, basis_of_z=basis, batch_size=bs)
        sq = sum(d.pow(2).sum() for d in direction) * torch.ones(x.shape[0], dtype=x.dtype, device=x.device)
    num = t.pow(2).sum((1, 2)) if blockwise else t.sum(1).pow(2).sum(-1)
    return _safe_divide(num, sq) if normalize else num


def _check_direction_args(
    direction: object,
    y: object,
    net: FunctionalNet,
    x: torch.Tensor,
    n_classes: int,
    *,
    allow_top: bool,
    blockwise: object,
    normalize: object,
    classes: object,
) -> tuple[Direction, torch.Tensor | None]:
    _checks.check_bool("blockwise", blockwise)
    _checks.check_bool("normalize", normalize)
    _checks.check_choice("classes", classes, _checks.CLASSES)
    direction = _checks.check_direction(direction, net.model, net.names, x, allow_top=allow_top)
    if isinstance(direction, str) and direction == "label":
        if y is None:
            raise ValueError('direction="label" needs y (integer labels of shape (N,)); got y=None.')
        return direction, _checks.check_y(y, x.shape[0], n_classes, x.device)
    if y is not None:
        raise ValueError(
            f"y is only used with direction='label'; got y together with direction={direction!r}"
            if isinstance(direction, str)
            else "y is only used with direction='label'; got y together with a tensor direction."
        )
    return direction, None


def _quadratic_top_eigenvector(
    net: FunctionalNet, x: torch.Tensor, n_classes: int, bs: int | None, blockwise: bool, classes: str
) -> torch.Tensor:
    """Quadratic form along the top eigenvector ``v = Jᵀ W w`` from the blocks ``K̃_k = Wᵀ K_k W``.

    ``(K_k r)ᵀ S (K_k r) = ‖K̃_k w‖²`` and ``‖v‖² = wᵀ K̃ w`` for ``r = W w``; always normalised (an
    eigenvector has no natural length). ``"predicted_vs_rest"`` reduces at the predicted class.
    """
    _z, k = _grams(net, x, n_classes, bs, classes, lambda z: z.argmax(-1))
    _lam, w = _top_eigen(k)
    kw = (k @ w.unsqueeze(1).unsqueeze(-1)).squeeze(-1)  # (N, B, C')
    num = kw.pow(2).sum((1, 2)) if blockwise else kw.sum(1).pow(2).sum(-1)
    return _safe_divide(num, torch.einsum("nc,nc->n", w, kw.sum(1)))


def _quadratic_finite_difference(
    net: FunctionalNet,
    x: torch.Tensor,
    direction: Direction,
    y: torch.Tensor | None,
    blockwise: bool,
    normalize: bool,
    classes: str,
    eps: float,
) -> torch.Tensor:
    """Quadratic form of one chunk by the original's central differences."""
    z = net.logits(net.selected(), x)
    cls = _class_of(direction, z, y)
    v, shared = _directions(net, x, z, cls, direction, normalize)
    return fd_quadratic_form(net, x, v, cls, shared=shared, blockwise=blockwise, classes=classes, epsilon=eps)


def _replica_sensitivity(net: FunctionalNet, x: torch.Tensor, covered: dict, fis_args: dict) -> torch.Tensor | None:
    """The reverse-over-forward hook path of :func:`fast_sensitivity`, or None where it does not apply."""
    try:
        return fast_sensitivity(net, x, covered, piecewise=False, **fis_args)
    except RuntimeError as err:
        # Some forward-mode formulas (log_softmax, softmax, logsumexp in torch 2.13) work in place and
        # cannot be differentiated again; torch.func's path handles those models.
        if "modified by an inplace operation" not in str(err):
            raise
        logger.debug("fast sensitivity not applicable (%s); using torch.func", err)
        return None


def _directions(
    net: FunctionalNet, x: torch.Tensor, z: torch.Tensor, cls: torch.Tensor, direction: Direction, normalize: bool
) -> tuple[dict[str, torch.Tensor], bool]:
    """Directions per sample (``∇θ log p_cls``) or the shared user direction; ``shared`` says which."""
    if isinstance(direction, str):
        r = torch.nn.functional.one_hot(cls, z.shape[-1]).to(z.dtype) - torch.softmax(z, -1)
        v, _sq = sample_directions(net, x, r, normalize=normalize)
        return v, False
    v = dict(zip(net.names, direction, strict=True))
    if normalize:
        norm = torch.sqrt(sum(t.pow(2).sum() for t in v.values()))
        v = {k: t / norm for k, t in v.items()}
    return v, True


def fisher_sensitivity(
    model: nn.Module,
    x: torch.Tensor,
    *,
    direction: Direction = "predicted",
    y: torch.Tensor | None = None,
    blockwise: bool = True,
    normalize: bool = True,
    classes: str = "all",
    output: str = "logits",
    params: Iterable[str] | None = None,
    method: str = "exact",
    epsilon: float = 1e-3,
    batch_size: int | None = None,
) -> torch.Tensor:
    r"""Fisher information sensitivity (FIS) of every input entry.

    For input entry ``i`` and a parameter direction ``v`` (chosen as in
    :func:`fisher_quadratic_form`, held fixed, i.e. not differentiated with respect to ``x``):

    .. math::

        \mathrm{FIS}_i = \sum_c \partial_{x_i}\big(v^\top \nabla_θ p_c\big)\,
                                \partial_{x_i}\big(v^\top \nabla_θ \log p_c\big).

    With ``blockwise=True`` (default, what the original code computes) the sum also runs over
    parameter tensors ``k`` with ``v`` restricted to tensor ``k``; ``blockwise=False`` uses the whole
    ``v`` at once. Computed exactly: for a model whose logits are piecewise linear in ``x`` (ReLU-type
    activations, max / average pooling, Linear / Conv / eval BatchNorm; judged from its autograd graph)
    with first-order backward passes from each layer down to ``x``, since the layers'
    output-gradients are then locally constant in ``x``; otherwise as the input-gradients of a
    forward-mode JVP over the parameters (reverse over forward). ``normalize=False`` uses the raw
    gradient and gives ``‖v‖²`` times the normalised value.

    Parameters
    ----------
    model, x, output, params, batch_size
        As in :func:`fisher_trace`.
    direction : {"predicted", "label"} or sequence of Tensor
        The direction ``v``.
    y, blockwise, normalize, classes
        As in :func:`fisher_quadratic_form`; ``classes="predicted_vs_rest"`` (the authors' package's
        default) sums over the two classes ``(ŷ, rest)`` instead of all ``C``.
    method : {"exact", "finite_difference"}
        ``"finite_difference"`` reproduces the original algorithm: input-gradients of ``z_c`` and
        ``p_c`` at ``θ ± ε v_k``, differenced centrally. Far off on ReLU / max-pool networks.
    epsilon : float
        Step of the finite differences.

    Returns
    -------
    Tensor of x's shape
        Detached, on ``x``'s device.

    Raises
    ------
    TypeError, ValueError
        For invalid arguments (before any computation).
    NotImplementedError
        For ``method="exact"`` on a model with LayerNorm / InstanceNorm modules: torch.func's mixed
        second derivatives through them are wrong in torch 2.13 (verified against plain autograd).
    """
    net, n_classes, eps, bs = _setup(
        model, x, output=output, params=params, method=method, epsilon=epsilon, batch_size=batch_size
    )
    direction, yt = _check_direction_args(
        direction, y, net, x, n_classes, allow_top=False, blockwise=blockwise, normalize=normalize,
        classes=classes,
    )
    if method == "exact":
        _checks.check_second_order(model)
    x = x.detach()
    covered, rest = plan(net)
    fast = method == "exact" and not rest
    piecewise = fast and is_piecewise_linear(net, x)
    if bs is not None:
        size = bs
    elif piecewise:
        size = hook_chunk(net, x, covered, n_classes, budget=_PIECEWISE_FIS_BUDGET)
    elif method == "exact":
        per_module: dict[str, int] = {}
        for m, _kind in covered.values():
            per_module[m] = per_module.get(m, 0) + 1
        replicas = max(per_module.values(), default=1) if blockwise else 1
        size = max(1, _FIS_ROWS // replicas) if fast else _SENSITIVITY_CHUNK
    else:
        size = _FD_CHUNK
    out = []
    with torch.no_grad():
        for sl in _chunks(x.shape[0], size):
            xb = x[sl]
            z = net.logits(net.selected(), xb)
            cls = _class_of(direction, z, None if yt is None else yt[sl])
            if fast:
                if isinstance(direction, str):
                    r = torch.nn.functional.one_hot(cls, z.shape[-1]).to(z.dtype) - torch.softmax(z, -1)
                    v = None
                else:
                    r, v = None, _directions(net, xb, z, cls, direction, normalize)[0]
                fis_args = {
                    "r": r, "v": v, "y": cls, "blockwise": blockwise, "normalize": normalize, "classes": classes
                }
                res = None
                if piecewise:
                    try:
                        res = fast_sensitivity(net, xb, covered, piecewise=True, **fis_args)
                    except RuntimeError as err:
                        # e.g. an operation without a batching rule for the class-batched backward passes
                        logger.debug("piecewise-linear sensitivity path failed (%s); using reverse over forward", err)
                        piecewise = False
                if not piecewise:
                    res = _replica_sensitivity(net, xb, covered, fis_args)
                if res is not None:
                    out.append(res)
                    continue
                fast = False  # the hook paths do not apply to this model: torch.func from here on
            v, shared = _directions(net, xb, z, cls, direction, normalize)
            fn = exact_sensitivity if method == "exact" else fd_sensitivity
            kwargs = {} if method == "exact" else {"epsilon": eps}
            out.append(fn(net, xb, v, cls, shared=shared, blockwise=blockwise, classes=classes, **kwargs))
    return torch.cat(out)
