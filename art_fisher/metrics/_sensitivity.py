r"""Fisher information sensitivity (FIS): its exact paths and the dispatch between them.

For one sample with logits ``z(x)`` (C,), ``p = softmax(z)`` and a parameter direction ``v`` held fixed,
let ``t(x) = J(x) v``. Then ``vᵀ∇θ log p = b = t − (pᵀt) 1`` and ``vᵀ∇θ p = a = p ⊙ b``, and

    FIS_i = Σ_c ∂x_i a_c · ∂x_i b_c,

which needs only ``∂x z`` and ``∂x t`` (C × D each), blockwise summed over parameter tensors ``k`` with
``t_k = J_k v_k`` (:func:`fis_from_jacobians`). The paths, fastest first:

- **hook, first order**: logits piecewise linear in ``x`` (:func:`is_piecewise_linear`); the layers'
  output-gradients are held constant in ``x``;
- **hook, second order**: every selected parameter in a layer with a rule; reverse over reverse;
- **torch.func**: the rest; ``vmap`` over samples of ``jacrev`` in ``x`` of a JVP in the parameters
  (a double VJP where forward mode has no formula).

Why each path is exact: the Fisher-metrics guide ("How it is computed, and why it is exact").
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn
from torch.func import grad, jacrev, jvp, vjp, vmap
from torch.nn.attention import SDPBackend, sdpa_kernel

from art_fisher import _checks
from art_fisher.metrics import _directions as directions
from art_fisher.metrics._basis import centered, class_reduction, predicted_vs_rest, reduction_jacobian
from art_fisher.metrics._directions import Direction
from art_fisher.metrics._engine import _chunking as chunking
from art_fisher.metrics._engine._network import FunctionalNet
from art_fisher.metrics._engine._recorder import HookCoverage, recorded_forward
from art_fisher.metrics._finite_difference import fd_sensitivity
from art_fisher.metrics._piecewise import is_piecewise_linear
from art_fisher.metrics._setup import check_direction_args, setup

logger = logging.getLogger(__name__)

# --- From the input-Jacobians to the sensitivity --------------------------------------------------------


def fis_from_jacobians(z: torch.Tensor, t: torch.Tensor, jz: torch.Tensor, jt: torch.Tensor) -> torch.Tensor:
    """``Σ_g Σ_c ∂x a_c ∂x b_c`` (n, D) from the logits and directional derivatives and their input-Jacobians.

    The inputs are ``z`` (n, C), ``t`` (n, G, C), ``∂x z`` (n, C, D) and ``∂x t`` (n, G, C, D).
    """
    p = torch.softmax(z, dim=-1)  # (n, C)
    # every x − Σ_c p_c x_c through basis.centered (no digit lost where p_ŷ rounds to 1)
    dp = p.unsqueeze(-1) * centered(jz.transpose(1, 2), p.unsqueeze(1)).transpose(1, 2)  # (n, C, D)
    b = centered(t, p.unsqueeze(1))  # (n, G, C)
    jt_centered = centered(jt.transpose(2, 3), p[:, None, None, :]).transpose(2, 3)  # (n, G, C, D)
    db = jt_centered - torch.einsum("ngc,ncd->ngd", t, dp).unsqueeze(2)  # (n, G, C, D)
    da = dp.unsqueeze(1) * b.unsqueeze(-1) + p[:, None, :, None] * db
    return (da * db).sum(dim=(1, 2))


def _reduce_to_two(z, t, jz, jt, y):
    """``(z, t, ∂x z, ∂x t)`` of the logits → those of ``z₂ = (log p_y, log(1 − p_y))``.

    ``t₂ = A t`` with ``A = ∂z₂/∂z`` (n, 2, C), so ``∂x t₂ = A ∂x t + ∂z(A t)|_t ∂x z`` and ``∂x z₂ = A ∂x z``.
    """
    amat = reduction_jacobian(z, y)  # (n, 2, C)

    def a_times(zi: torch.Tensor, ti: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
        return jvp(lambda zz: predicted_vs_rest(zz, yi), (zi,), (ti,))[1]

    du = vmap(vmap(jacrev(a_times), in_dims=(None, 0, None)))(z, t, y)  # (n, G, 2, C)
    t2 = torch.einsum("nac,ngc->nga", amat, t)
    jt2 = torch.einsum("nac,ngcd->ngad", amat, jt) + torch.einsum("ngac,ncd->ngad", du, jz)
    return predicted_vs_rest(z, y), t2, torch.einsum("nac,ncd->nad", amat, jz), jt2


# --- Hook paths -----------------------------------------------------------------------------------------


def hook_sensitivity(
    net: FunctionalNet,
    coverage: HookCoverage,
    x: torch.Tensor,
    *,
    r: torch.Tensor | None,
    v: dict[str, torch.Tensor] | None,
    y: torch.Tensor,
    blockwise: bool,
    normalize: bool,
    classes: str,
    first_order: bool,
) -> torch.Tensor | None:
    """Exact FIS of one chunk (shape of ``x``), or None when a covered module did not run exactly once.

    Parameters
    ----------
    r : Tensor (n, C) or None
        Per-sample direction coefficients (``v = Jᵀ r``); None when ``v`` is given.
    v : dict of str to Tensor or None
        One fixed direction per selected parameter.
    y : Tensor (n,)
        Class of the ``"predicted_vs_rest"`` reduction.
    first_order : bool
        The logits are piecewise linear in ``x``: hold the output-gradients ``B_c`` constant.
    """
    n, n_cls = x.shape[0], coverage.n_classes
    if r is not None:  # per-sample directions v = Jᵀ r, held fixed (not differentiated in x)
        d = _hook_directions(net, coverage, x, r, normalize)
        if d is None:
            return None
        # one sample: its direction is shared by its copies; several: each copy block gets the same rows
        shared = n == 1
        d = {k: t[0] if shared else t.repeat(n_cls, *([1] * (t.dim() - 1))) for k, t in d.items()}
    else:
        assert v is not None  # a fixed direction when there are no coefficients
        d, shared = dict(v), True
    # one copy of the chunk per class (row c·n + i is sample i for class c): every class's input-gradient
    # is then one plain batched backward pass, where batched cotangents (is_grads_batched) would loop over
    # the classes in vmap's fallbacks of the double-backward kernels
    xc = x.detach().repeat(n_cls, *([1] * (x.dim() - 1))).requires_grad_(True)
    # the math kernel of scaled dot-product attention: the fused CPU kernels have no double backward
    with sdpa_kernel([SDPBackend.MATH]):
        rec = recorded_forward(net, coverage, xc, create_graph=True)
    if rec.missing:
        return None
    z, x0 = rec.z, rec.x
    edges = [rec.edges[m] for m in rec.modules]
    with torch.enable_grad():
        eye = torch.eye(n_cls, dtype=z.dtype, device=z.device).repeat_interleave(n, dim=0)  # row c·n + i: e_c
        inputs: list[Any] = [*edges, x0]  # torch.autograd.grad takes edges and tensors mixed; its stubs do not
        grads = torch.autograd.grad(z, inputs, eye, retain_graph=True, create_graph=not first_order)
        b_of = dict(zip(rec.modules, grads[:-1], strict=True))  # (C·n, *out)
        if first_order:
            b_of = {m: b.detach() for m, b in b_of.items()}
        jz = _by_class(grads[-1].detach(), n_cls)  # (n, C, D)
        del grads
        groups = net.groups(blockwise)
        ts, jts = [], []
        for group in groups:
            t = torch.zeros(n_cls * n, dtype=z.dtype, device=z.device)
            for name in group:
                m, role = coverage.covered[name]
                delta = rec.rules[m].change(role, d[name], shared).expand(rec.shapes[m])
                t = t + (b_of[m] * delta).flatten(1).sum(1)
            # row c·n + i of t depends on copy c·n + i only: one backward pass gives every ∂x t_c
            jt = torch.autograd.grad(t.sum(), x0, retain_graph=True, allow_unused=True)[0] if t.requires_grad else None
            jts.append(torch.zeros_like(jz) if jt is None else _by_class(jt.detach(), n_cls))
            ts.append(t.detach().reshape(n_cls, n).transpose(0, 1))
    z = z[:n].detach()
    t = torch.stack(ts, dim=1)  # (n, G, C)
    jt = torch.stack(jts, dim=1)  # (n, G, C, D)
    if classes == "predicted_vs_rest":
        z, t, jz, jt = _reduce_to_two(z, t, jz, jt, y)
    return fis_from_jacobians(z, t, jz, jt).view_as(x)


def _hook_directions(
    net: FunctionalNet, coverage: HookCoverage, x: torch.Tensor, r: torch.Tensor, normalize: bool
) -> dict[str, torch.Tensor] | None:
    """Per-sample directions ``v = Jᵀ r`` (name → (n, *shape)) from one hooked pass, or None where one is missing."""
    rec = recorded_forward(net, coverage, x)
    if rec.missing:
        return None
    brs = torch.autograd.grad(rec.z, [rec.edges[m] for m in rec.modules], r)
    b_of = dict(zip(rec.modules, brs, strict=True))
    d = {name: rec.rules[m].grad(b_of[m], role).detach() for name, (m, role) in coverage.covered.items()}
    return directions.unit_length(d)[0] if normalize else d


def _by_class(g: torch.Tensor, n_cls: int) -> torch.Tensor:
    """Rows ``c·n + i`` of ``g`` (C·n, ...) → (n, C, D): sample ``i``, class ``c``, flattened input."""
    return g.reshape(n_cls, -1, g[0].numel()).transpose(0, 1)


# --- torch.func path ------------------------------------------------------------------------------------


def _jvp_by_double_vjp(f, primals: dict, tangents: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """``(f(θ), J v)`` as the gradient in ``u`` of ``⟨vjp(u), v⟩`` (linear in ``u``): no forward-mode formula needed."""
    z, vjp_fn = vjp(f, primals)[:2]  # (output, pullback); a third item only with has_aux

    def pulled(u: torch.Tensor) -> torch.Tensor:
        (g,) = vjp_fn(u)
        return sum((g[k] * tangents[k]).sum() for k in tangents)

    return z, grad(pulled)(torch.zeros_like(z))


def func_sensitivity(
    net: FunctionalNet,
    x: torch.Tensor,
    v: dict[str, torch.Tensor],
    y: torch.Tensor,
    *,
    shared: bool,
    blockwise: bool,
    classes: str,
    forward_mode: bool = True,
) -> torch.Tensor:
    """Exact FIS of one chunk with ``torch.func``: ``v`` (n, *shape) per parameter, or (*shape) when ``shared``."""
    reduce_classes = class_reduction(classes)
    groups = net.groups(blockwise)

    def outs(xi: torch.Tensor, vi: dict[str, torch.Tensor], yi: torch.Tensor):
        def zf(s: dict[str, torch.Tensor]) -> torch.Tensor:
            return reduce_classes(net.logits_one(s, xi), yi)

        ts = []
        for g in groups:
            if forward_mode:
                z, t = jvp(zf, ({k: net.base[k] for k in g},), ({k: vi[k] for k in g},))[:2]
            else:
                z, t = _jvp_by_double_vjp(zf, {k: net.base[k] for k in g}, {k: vi[k] for k in g})
            ts.append(t)
        tt = torch.stack(ts)
        return (z, tt), (z, tt)

    def one(xi, vi, yi):
        (jz, jt), (z, t) = jacrev(outs, has_aux=True)(xi, vi, yi)
        return z, t, jz.flatten(1), jt.flatten(2)

    z, t, jz, jt = vmap(one, in_dims=(0, None if shared else 0, 0))(x, v, y)
    return fis_from_jacobians(z, t, jz, jt).view_as(x)


# --- Dispatch -------------------------------------------------------------------------------------------


def _chunk_of(path: str, coverage: HookCoverage | None, itemsize: int, n_params: int) -> int:
    """Samples per pass of a sensitivity path, from its memory budget.

    The hook paths hold ``C`` copies of each sample's layer outputs and, with more than one sample per
    chunk, ``C`` copies of each sample's direction (``n_params`` entries).
    """
    if path in ("first_order", "second_order") and coverage is not None:
        budget = chunking.FIRST_ORDER_BUDGET if path == "first_order" else chunking.SECOND_ORDER_BUDGET
        outputs = chunking.hook_chunk(coverage.out_numel, coverage.n_classes, itemsize, budget=budget)
        return min(outputs, chunking.by_budget(coverage.n_classes * n_params * itemsize, chunking.HOOK_BUDGET))
    if path == "func":
        return chunking.FUNC_SENSITIVITY_CHUNK
    return chunking.FINITE_DIFFERENCE_CHUNK


def sensitivity(
    net: FunctionalNet,
    coverage: HookCoverage | None,
    x: torch.Tensor,
    *,
    direction: Direction,
    y: torch.Tensor | None,
    blockwise: bool,
    normalize: bool,
    classes: str,
    method: str,
    fd_step: float,
    chunk_size: int | None,
) -> torch.Tensor:
    """FIS of all samples (shape of ``x``): the fastest exact path that applies, or finite differences."""
    path = "finite_difference"
    if method == "exact":
        assert coverage is not None  # the exact paths need the hook coverage
        path = "func" if coverage.rest else ("first_order" if is_piecewise_linear(coverage.probe) else "second_order")
    size = chunk_size or _chunk_of(path, coverage, x.element_size(), sum(net.base[k].numel() for k in net.names))
    forward_mode = True
    out = []
    for sl in chunking.chunks(x.shape[0], size):
        xb = x[sl]
        with torch.no_grad():
            z = net.logits(net.selected(), xb)
        _checks.check_finite_output(z, sl.start, net, x)
        cls = directions.class_of(direction, z, None if y is None else y[sl])
        res = None
        while res is None and coverage is not None and path in ("first_order", "second_order"):
            if isinstance(direction, str):
                r, v = directions.coefficients(z, cls), None
            else:
                r, v = None, directions.fixed_direction(net.names, direction, normalize)
            try:
                res = hook_sensitivity(
                    net,
                    coverage,
                    xb,
                    r=r,
                    v=v,
                    y=cls,
                    blockwise=blockwise,
                    normalize=normalize,
                    classes=classes,
                    first_order=path == "first_order",
                )
            except (RuntimeError, NotImplementedError) as err:  # e.g. an op without a batching rule
                logger.debug("%s hook sensitivity failed (%s); trying the next path", path, err)
                res = None
            if res is None:
                path = "second_order" if path == "first_order" else "func"
                if path == "func":  # torch.func's mixed second derivatives are wrong through some modules
                    _checks.check_second_order(net.model)
        if res is not None:
            out.append(res)
            continue
        with torch.no_grad():
            v, shared = directions.directions_of(net, xb, z, cls, direction, normalize)
            if path == "finite_difference":
                out.append(
                    fd_sensitivity(
                        net, xb, v, cls, shared=shared, blockwise=blockwise, classes=classes, fd_step=fd_step
                    )
                )
                continue
            if forward_mode:
                try:
                    out.append(func_sensitivity(net, xb, v, cls, shared=shared, blockwise=blockwise, classes=classes))
                    continue
                except NotImplementedError as err:  # no forward-mode formula (reverse over forward)
                    logger.debug("forward-mode JVP failed (%s); using a double VJP", err)
                    forward_mode = False
            out.append(
                func_sensitivity(
                    net, xb, v, cls, shared=shared, blockwise=blockwise, classes=classes, forward_mode=False
                )
            )
    return torch.cat(out)


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
    fd_step: float = 1e-3,
    chunk_size: int | None = None,
) -> torch.Tensor:
    r"""Fisher information sensitivity (FIS) of every input entry.

    For input entry ``i`` and a parameter direction ``v`` (chosen as in
    :func:`fisher_quadratic_form`, held fixed, i.e. not differentiated with respect to ``x``):

    .. math::

        \mathrm{FIS}_i = \sum_c \partial_{x_i}\big(v^\top \nabla_θ p_c\big)\,
                                \partial_{x_i}\big(v^\top \nabla_θ \log p_c\big).

    With ``blockwise=True`` (default, what the original code computes) the sum also runs over
    parameter tensors ``k`` with ``v`` restricted to tensor ``k``; ``blockwise=False`` uses the whole
    ``v`` at once. ``normalize=False`` uses the raw gradient and gives ``‖v‖²`` times the normalised
    value. Computed exactly, by the fastest path that applies to the model (see
    :doc:`/guides/fisher_metrics`).

    Parameters
    ----------
    model, x, output, params, chunk_size
        As in :func:`fisher_trace`.
    direction : {"predicted", "label"} or sequence of Tensor
        The direction ``v``.
    y, blockwise, normalize, classes
        As in :func:`fisher_quadratic_form`; ``classes="predicted_vs_rest"`` (the authors' package's
        default) sums over the two classes ``(ŷ, rest)`` instead of all ``C``.
    method : {"exact", "finite_difference"}
        ``"finite_difference"`` reproduces the original algorithm: input-gradients of ``z_c`` and
        ``p_c`` at ``θ ± ε v_k``, differenced centrally (inexact where ``ε`` crosses a ReLU kink).
    fd_step : float
        Step of the finite differences.


    Returns
    -------
    Tensor of x's shape
        Detached, on ``x``'s device.

    Raises
    ------
    TypeError, ValueError
        As :func:`fisher_trace`.
    NotImplementedError
        For ``method="exact"`` when the ``torch.func`` path is needed on a model with LayerNorm /
        InstanceNorm modules, whose mixed second derivatives ``torch.func`` gets wrong.

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> from art_fisher.metrics import fisher_sensitivity
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
    >>> fis = fisher_sensitivity(model, x, blockwise=False)  # (N, 4), like x
    >>> theta = {k: t.detach() for k, t in params.items()}
    >>> sizes = [t.numel() for t in theta.values()]
    >>> def b_and_a(xi, v):  # vᵀ∇θ log p_c(xi) and vᵀ∇θ p_c(xi), with v held fixed
    ...     b = torch.func.jvp(lambda th: log_probs(th, xi), (theta,), (v,))[1]
    ...     return torch.stack([b, log_probs(theta, xi).exp() * b])
    >>> dense = []
    >>> for xi, gi, pi in zip(x, g, p):
    ...     v = gi[pi.argmax()] / gi[pi.argmax()].norm()  # the predicted class's unit gradient
    ...     v = {k: c.view_as(t) for (k, t), c in zip(theta.items(), v.split(sizes))}
    ...     jb, ja = torch.func.jacrev(b_and_a)(xi, v)  # (C, D) each: input-gradients
    ...     dense.append((ja * jb).sum(0))  # FIS_i = Σ_c ∂x_i a_c ∂x_i b_c
    >>> torch.allclose(fis, torch.stack(dense), rtol=1e-10)
    True
    """
    net, n_classes, eps, chunk, coverage = setup(
        model, x, output=output, params=params, method=method, fd_step=fd_step, chunk_size=chunk_size
    )
    direction, yt = check_direction_args(
        direction, y, net, x, n_classes, allow_top=False, blockwise=blockwise, normalize=normalize, classes=classes
    )
    x = x.detach()
    if coverage is not None and coverage.rest:
        _checks.check_second_order(model)
    values = sensitivity(
        net,
        coverage,
        x,
        direction=direction,
        y=yt,
        blockwise=blockwise,
        normalize=normalize,
        classes=classes,
        method=method,
        fd_step=eps,
        chunk_size=chunk,
    )
    return _checks.check_finite_result(values, "fisher_sensitivity")
