r"""Many-class heads: the Fisher matrix ``F_τ`` of the most probable classes, and an unbiased trace estimate.

With ``τ ∈ (0, 1)`` each sample keeps its ``k`` most probable classes ``T`` (the fewest whose
probabilities sum to at least ``1 − τ``) and merges the others ``R`` (probability ``q ≤ τ``) into one
class; the metrics are then those of

.. math::

    F_τ = \sum_{c∈T} p_c \nabla\log p_c \nabla\log p_c^\top + q \nabla\log q \nabla\log q^\top ,

at ``k`` backward passes instead of ``C − 1``, and ``F_τ ≼ F``. :func:`fisher_trace_estimate` adds ``m``
classes drawn from ``p(·|R)`` for an unbiased estimate of ``tr F`` with its standard error. The bounds
and the estimator are derived in the field-models guide ("Many classes").
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import NamedTuple

import torch
from torch import nn

from art_fisher import _checks
from art_fisher.metrics._basis import Basis, complement, factor, identity_minus
from art_fisher.metrics._engine._grams import tensor_grams
from art_fisher.metrics._engine._network import FunctionalNet
from art_fisher.metrics._setup import probe_with_coverage


def check_tau(tau: object, *, allow_none: bool = True) -> float | None:
    """``tau`` as a float in (0, 1) (or None when allowed); ValueError / TypeError naming it otherwise."""
    if tau is None and allow_none:
        return None
    if isinstance(tau, bool) or not isinstance(tau, (int, float)):
        raise TypeError(f"tau must be a float in (0, 1){' or None' if allow_none else ''}; got {tau!r}.")
    if isinstance(tau, int) and not 0 < tau < 1:  # an int of any size, without converting it to float
        raise ValueError(f"tau must be a float in (0, 1) (the probability mass left out); got {str(tau)[:40]}.")
    if not (0 < float(tau) < 1) or math.isnan(float(tau)):
        raise ValueError(f"tau must be a float in (0, 1) (the probability mass left out); got {tau!r}.")
    return float(tau)


def selection(tau: object, *, classes: str = "all", method: str = "exact") -> str | TopMass:
    """The ``classes`` the engine uses: ``classes`` itself for ``tau=None``, else a :class:`TopMass` of ``tau``.

    Raises
    ------
    TypeError, ValueError
        If ``tau`` is not None or a float in (0, 1), or comes with ``classes="predicted_vs_rest"`` (two
        classes already) or ``method="finite_difference"`` (the original algorithm takes every class).
    """
    tau = check_tau(tau)
    if tau is None:
        return classes
    if classes != "all":
        raise ValueError(
            f'tau applies to classes="all" only (it keeps the most probable of them); got classes={classes!r}.'
        )
    if method != "exact":
        raise ValueError(f'tau needs method="exact"; got method={method!r}.')
    return TopMass(tau)


def kept_classes(
    z: torch.Tensor, tau: float, max_kept: int | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Classes of logits ``z`` (n, C) in decreasing probability (n, C), how many are kept (n,), dropped mass (n,).

    ``k`` is the smallest number of most probable classes whose probabilities sum to at least ``1 − τ``
    (at least one class), at most ``max_kept``; the dropped mass ``q`` is summed over the other classes
    themselves (not as ``1 −`` the kept mass, which would lose its digits to rounding).
    """
    p = torch.softmax(z.detach(), -1)
    ps, order = p.sort(-1, descending=True)
    cap = z.shape[-1] if max_kept is None else min(max_kept, z.shape[-1])  # beyond C, no cap (and no int64 overflow)
    k = ((ps.cumsum(-1) < 1 - tau).sum(-1) + 1).clamp(max=cap)
    rank = torch.arange(z.shape[-1], device=z.device)
    q = (ps * (rank >= k.unsqueeze(-1))).sum(-1)
    return order, k, q


class TopMass:
    """The coarsened class set of the module docstring, passed to the engine as ``classes``.

    Parameters
    ----------
    tau : float in (0, 1)
        Probability mass each sample may leave out.
    samples : int
        Classes drawn from the dropped ones per sample (columns placed first; 0 for none).
    generator : torch.Generator, optional
        Source of the draws (required when ``samples > 0``).
    max_kept : int, optional
        At most this many classes kept per sample (the dropped mass may then exceed ``tau``).
    """

    def __init__(
        self, tau: float, samples: int = 0, generator: torch.Generator | None = None, max_kept: int | None = None
    ) -> None:
        self.tau = tau
        self.samples = samples
        self.generator = generator
        self.max_kept = max_kept

    def basis(self, smooth: bool = False) -> Basis:
        """``(z, y) ↦ W`` (n, C, m + K'): the sampled columns, then a factor of ``F_τ``'s output covariance.

        ``K'`` is the largest kept count ``k`` in the chunk (or ``k + 1`` when ``smooth``); samples with
        fewer kept classes get zero columns, which contribute nothing.
        """

        def w_of(z: torch.Tensor, _y: torch.Tensor) -> torch.Tensor:
            return self._factor(z, smooth)

        return w_of

    def _factor(self, z: torch.Tensor, smooth: bool) -> torch.Tensor:
        n, n_classes = z.shape
        order, k, _q = kept_classes(z, self.tau, self.max_kept)
        p = torch.softmax(z, -1)
        big_k = int(k.max())
        keep = torch.arange(big_k, device=z.device) < k.unsqueeze(-1)  # (n, K)
        top = order[:, :big_k]
        kept_mask = torch.zeros(n, n_classes, dtype=torch.bool, device=z.device).scatter(1, top, keep)
        p_rest = p.masked_fill(kept_mask, 0)
        q = p_rest.sum(-1)
        has_rest = q > 0
        r = p_rest / torch.where(has_rest, q, torch.ones_like(q)).unsqueeze(-1)  # p(c | R), 0 on T
        eye = torch.nn.functional.one_hot(top, n_classes).to(z.dtype)  # (n, K, C)
        # rows of A = ∂(log p_T, log q)/∂z: e_c − p for kept classes, r − p for the rest (0 where padded / empty)
        rows_t = torch.where(eye.bool(), complement(p).unsqueeze(1), -p.unsqueeze(1)) * keep.unsqueeze(-1)
        row_r = (r - p) * has_rest.unsqueeze(-1)
        a = torch.cat([rows_t, row_r.unsqueeze(1)], dim=1)  # (n, K + 1, C)
        p_red = torch.cat([p.gather(1, top) * keep, q.unsqueeze(-1)], dim=1)  # (n, K + 1)
        w_red = _smooth_factor(p_red) if smooth else factor(p_red)
        w = a.transpose(1, 2) @ w_red  # (n, C, K') with W Wᵀ = Aᵀ S_red A
        if not self.samples:
            return w
        # draws from p(· | R); where R is empty (q = 0) any class, with a zero column
        probs = torch.where(has_rest.unsqueeze(-1), r.detach(), torch.ones_like(r))
        drawn = torch.multinomial(probs, self.samples, replacement=True, generator=self.generator)  # (n, m)
        e = torch.nn.functional.one_hot(drawn, n_classes).to(z.dtype)  # (n, m, C)
        cols = (e - r.unsqueeze(1)) * q.sqrt().reshape(n, 1, 1)  # √q (e_c − r)
        return torch.cat([cols.transpose(1, 2), w], dim=2)


def _smooth_factor(p: torch.Tensor) -> torch.Tensor:
    """:func:`~art_fisher.metrics._basis.smooth_factor` with a zero derivative at the padded zero probabilities.

    ``√p`` has an infinite derivative at 0; the padded classes are exactly 0 and stay 0 nearby.
    """
    positive = p > 0
    root = torch.where(positive, torch.where(positive, p, torch.ones_like(p)).sqrt(), torch.zeros_like(p))
    return identity_minus(p) * root.unsqueeze(-2)


class TraceEstimate(NamedTuple):
    """:func:`fisher_trace_estimate`'s result; every field has shape (N,).

    Attributes
    ----------
    estimate : Tensor
        Unbiased estimate of ``tr F(x)``.
    stderr : Tensor
        Its standard error (0 where nothing was dropped).
    lower : Tensor
        ``tr F_τ(x) ≤ tr F(x)``, certain.
    dropped_mass : Tensor
        ``q``, the probability of the dropped classes (≤ τ).
    kept : Tensor
        Number of classes kept (int64); the backward passes per sample are about ``kept + samples``.
    """

    estimate: torch.Tensor
    stderr: torch.Tensor
    lower: torch.Tensor
    dropped_mass: torch.Tensor
    kept: torch.Tensor


def fisher_trace_estimate(
    model: nn.Module,
    x: torch.Tensor,
    *,
    tau: float = 1e-3,
    samples: int = 8,
    max_kept: int | None = None,
    seed: int = 0,
    output: str = "logits",
    params: Iterable[str] | None = None,
    chunk_size: int | None = None,
) -> TraceEstimate:
    r"""``tr F(x)`` from the classes holding ``1 − τ`` of the probability and ``samples`` draws of the others.

    ``estimate = tr F_τ + (q/m) Σ_i ‖Jᵀ(e_{c_i} − r)‖²`` with ``c_i ∼ p(·|R)`` i.i.d. (``R`` the dropped
    classes, ``q`` their probability, ``r`` their conditional probabilities; derived in
    :doc:`/guides/model_families`): unbiased, ``≥ lower = tr F_τ``, standard error ``q s/√m``. It costs
    about ``k + m`` backward passes per sample (``k`` kept classes, at most ``max_kept``) instead of
    ``C − 1``; when every sample keeps ``C − 1`` or more classes it is exact (``stderr`` 0).

    Parameters
    ----------
    model, x, output, params, chunk_size
        As in :func:`art_fisher.metrics.fisher_trace`.
    tau : float in (0, 1)
        Probability mass each sample may leave to the sampled part.
    samples : int
        Draws ``m`` ≥ 2 from the dropped classes per sample.
    max_kept : int, optional
        Keep at most this many classes (the dropped mass ``q`` may then exceed ``tau``; the estimate stays
        unbiased, its standard error grows with ``q``): caps the cost at ``max_kept + samples`` backward
        passes whatever the predictions.
    seed : int
        Seed of the draws (a fixed seed gives the same estimate for the same inputs and chunking).

    Returns
    -------
    TraceEstimate
        ``estimate``, ``stderr``, ``lower``, ``dropped_mass`` and ``kept``, each (N,), detached.

    Raises
    ------
    TypeError, ValueError
        For invalid arguments (before any computation), and for samples whose output or result is not
        finite.

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> from art_fisher.metrics import fisher_trace_estimate
    >>> _ = torch.manual_seed(0)
    >>> model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 10)).double()
    >>> x = torch.randn(5, 4, dtype=torch.float64)
    >>> params = dict(model.named_parameters())
    >>> def log_probs(theta, xi):  # log p(c | xi) as a function of the parameters
    ...     return torch.log_softmax(torch.func.functional_call(model, theta, (xi,)), -1)
    >>> grads = torch.func.vmap(torch.func.jacrev(log_probs), in_dims=(None, 0))(params, x)
    >>> g = torch.cat([t.flatten(2) for t in grads.values()], 2).detach()  # (N, C, P): ∇θ log p_c
    >>> p = log_probs(params, x).exp().detach()
    >>> fisher = torch.einsum("nc,ncp,ncq->npq", p, g, g)  # dense F = Σ_c p_c ∇log p_c ∇log p_cᵀ
    >>> dense = fisher.diagonal(dim1=1, dim2=2).sum(-1)  # exact tr F(x)
    >>> est = fisher_trace_estimate(model, x, tau=0.5, samples=8, seed=0)
    >>> est.kept  # classes kept of 10: about kept + samples backward passes
    tensor([4, 4, 5, 4, 4])
    >>> bool((est.lower <= dense * (1 + 1e-12)).all())  # tr F_τ ≤ tr F: a certain lower bound
    True
    >>> exact = fisher_trace_estimate(model, x, tau=1e-9)  # every class kept: exact, zero stderr
    >>> torch.allclose(exact.estimate, dense, rtol=1e-10), bool((exact.stderr == 0).all())
    (True, True)
    """
    _checks.check_model(model)
    _checks.check_x(x)
    _checks.check_choice("output", output, _checks.OUTPUTS)
    checked_tau = check_tau(tau, allow_none=False)
    assert checked_tau is not None  # allow_none=False
    tau = checked_tau
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 2:
        raise ValueError(f"samples must be an int >= 2 (a standard error needs two draws); got {samples!r}.")
    if max_kept is not None and (isinstance(max_kept, bool) or not isinstance(max_kept, int) or max_kept < 1):
        raise ValueError(f"max_kept must be None or an int >= 1; got {str(max_kept)[:40]}.")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int; got {seed!r}.")
    if not 0 <= seed < 2**63:
        raise ValueError(f"seed must be an int from 0 to 2**63 - 1 (torch.Generator's range); got {str(seed)[:40]}.")
    chunk = _checks.check_chunk_size(chunk_size)
    names = _checks.check_params(model, params)
    _checks.check_model_matches_x(model, names, x)
    net = FunctionalNet(model, names, output)
    x = x.detach()
    _n_classes, coverage = probe_with_coverage(net, x, first_row_in_chunks=True)
    gen = torch.Generator(device=x.device).manual_seed(seed)
    spec = TopMass(tau, samples=samples, generator=gen, max_kept=max_kept)
    with torch.no_grad():
        z, diag, _w = tensor_grams(net, coverage, x, basis=spec.basis(), chunk_size=chunk, diagonal=True)
    per_column = diag.sum(1)  # (N, m + K)
    drawn, lower = per_column[:, :samples], per_column[:, samples:].sum(1)
    _order, kept, q = kept_classes(z, tau, max_kept)
    estimate = lower + drawn.mean(1)
    stderr = drawn.std(1) / math.sqrt(samples)
    estimate = _checks.check_finite_result(estimate, "fisher_trace_estimate")
    return TraceEstimate(estimate, stderr, lower, q.to(estimate.dtype), kept)
