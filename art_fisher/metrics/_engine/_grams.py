"""Per-sample, per-parameter-tensor Gram matrices of the logits' Jacobian, and its directional products.

For one sample with logits ``z`` (C,) and a parameter tensor ``θ_k``, ``J_k = ∂z/∂θ_k`` (C × P_k). In a
basis ``W`` (C × C', :mod:`art_fisher.metrics._basis`) the engine gives

- :func:`tensor_grams`: ``Wᵀ K_k W`` with ``K_k = J_k J_kᵀ`` (or only its diagonal, all a trace needs);
- :func:`directional`: ``Wᵀ J_k v_k`` for a direction ``v`` that is either fixed or per sample
  ``v = Jᵀ r`` (then ``J_k v_k = K_k r``, without forming ``K_k``).

Parameters of layers with a rule (:mod:`art_fisher.metrics._engine._layers`, as found by
:func:`~art_fisher.metrics._engine._recorder.find_coverage`) come from one recorded forward pass and one
batched backward pass per column of ``W``, which gives each layer's output-gradients ``b_j = Σ_c W_cj
∂z_c/∂o``; the layer's rule turns them and its recorded input into per-sample gradients or a ghost
contraction. Every other parameter goes through ``torch.func`` (``vmap`` over samples of ``jacrev``),
so any module ``torch.func`` can differentiate works.

With ``create_graph=True`` every step keeps its autograd graph, so the results are differentiable
in the input ``x``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
from torch.func import jacrev, jvp, vmap

from art_fisher import _checks
from art_fisher.metrics._basis import Basis, ChunkBasis
from art_fisher.metrics._engine import _chunking as chunking
from art_fisher.metrics._engine._layers import gram
from art_fisher.metrics._engine._network import FunctionalNet
from art_fisher.metrics._engine._recorder import HookCoverage, Recorded, recorded_forward

Coefficients = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def func_grams(net: FunctionalNet, x: torch.Tensor, names: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (n, C) and Gram matrices ``K_k`` (n, len(names), C, C) of one chunk with ``torch.func``."""
    sel = {k: net.base[k] for k in names}

    def one(s: dict[str, torch.Tensor], xi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = net.logits_one(s, xi)
        return z, z

    jac, z = vmap(jacrev(one, has_aux=True), in_dims=(None, 0))(sel, x)
    grams = [gram(jac[k].flatten(2)) for k in names]  # (n, C, C) each
    return z, torch.stack(grams, dim=1)


def _func_parts(net: FunctionalNet, coverage: HookCoverage, x: torch.Tensor, names: list[str], chunk_size: int | None):
    """:func:`func_grams` over sub-chunks that keep the Jacobians within the ``torch.func`` budget."""
    n_params = sum(net.base[k].numel() for k in names)
    inner = chunking.func_chunk(n_params, coverage.n_classes, x.element_size(), chunk_size)
    parts = [func_grams(net, x[sl], names) for sl in chunking.chunks(x.shape[0], inner)]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def _samples_per_chunk(coverage: HookCoverage, x: torch.Tensor, n_cols: int, chunk_size: int | None) -> int:
    if coverage.rules:
        return chunking.hook_chunk(coverage.out_numel, n_cols, x.element_size(), chunk_size)
    return chunk_size or chunking.MAX_CHUNK  # the torch.func parts size their own sub-chunks


def _columns(rec: Recorded, w: torch.Tensor, create_graph: bool):
    """Output-gradients ``b_j`` of every recorded layer for each column ``w_j`` of ``W`` (n, C, C'), one pass each."""
    edges = [rec.edges[m] for m in rec.modules]
    n_cols = w.shape[2]
    for j in range(n_cols):
        grads = torch.autograd.grad(
            rec.z, edges, w[:, :, j], retain_graph=create_graph or j < n_cols - 1, create_graph=create_graph
        )
        yield j, dict(zip(rec.modules, grads, strict=True))


def _hook_grams(
    rec: Recorded, coverage: HookCoverage, w: torch.Tensor, diagonal: bool, create_graph: bool
) -> dict[str, torch.Tensor]:
    """Gram matrices ``Wᵀ K_k W`` (n, C', C'), or their diagonals (n, C'), of the recorded layers' parameters.

    Diagonals: each ``b_j`` is turned into squared norms of per-sample gradients (by the layer's
    cheaper route) as soon as its pass is done, and dropped. Full Gram matrices: each ``b_j`` is turned into
    per-sample gradients at once where that is the cheaper route, and kept for the layer's ghost
    contraction otherwise.
    """
    wanted = {m: [role for p, (mm, role) in coverage.covered.items() if mm == m] for m in rec.modules}
    param_of = {where: name for name, where in coverage.covered.items()}
    n_cols = w.shape[2]
    if diagonal:  # one squared norm per column and tensor, nothing kept
        norms: dict[tuple[str, str], list[torch.Tensor]] = {(m, k): [] for m in rec.modules for k in wanted[m]}
        for _j, grads in _columns(rec, w, create_graph):
            for m, g in grads.items():
                for role in wanted[m]:
                    norms[(m, role)].append(rec.rules[m].sq_norm(g, role, n_cols))
            del grads
        return {param_of[(m, role)]: torch.stack(parts, dim=1) for (m, role), parts in norms.items()}
    flat_grad_fns = {(m, role): rec.rules[m].flat_grad_fn(role, n_cols) for m in rec.modules for role in wanted[m]}
    flat_grads: dict[tuple[str, str], list[torch.Tensor]] = {
        key: [] for key, f in flat_grad_fns.items() if f is not None
    }
    kept: dict[str, list[torch.Tensor]] = {
        m: [] for m in rec.modules if any(flat_grad_fns[(m, k)] is None for k in wanted[m])
    }
    for _j, grads in _columns(rec, w, create_graph):
        for m, g in grads.items():
            for role in wanted[m]:
                flat_grad = flat_grad_fns[(m, role)]
                if flat_grad is not None:
                    flat_grads[(m, role)].append(flat_grad(g))
            if m in kept:
                kept[m].append(g)
        del grads
    grams: dict[str, torch.Tensor] = {}
    for (m, role), parts in flat_grads.items():
        grams[param_of[(m, role)]] = gram(torch.stack(parts, dim=1))
    for m, parts in kept.items():
        b = torch.stack(parts, dim=1)  # (n, C', *out)
        kept[m] = []
        for role in wanted[m]:
            if flat_grad_fns[(m, role)] is None:
                grams[param_of[(m, role)]] = rec.rules[m].ghost_gram(b, role, diagonal=False)
        del b
    return grams


def tensor_grams(
    net: FunctionalNet,
    coverage: HookCoverage,
    x: torch.Tensor,
    *,
    basis: Basis | None = None,
    y: torch.Tensor | None = None,
    chunk_size: int | None = None,
    diagonal: bool = False,
    create_graph: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Logits (N, C), Gram matrices ``Wᵀ K_k W`` (N, n_tensors, C', C') and ``W`` (N, C, C') of all samples.

    With ``diagonal``, their diagonals (N, n_tensors, C') instead.

    Parameters
    ----------
    net : FunctionalNet
    coverage : HookCoverage
        Which parameters the hooks compute (the rest go through ``torch.func``).
    x : Tensor (N, ...)
    basis : callable, optional
        ``(z, y) ↦ W`` (n, C, C') from a chunk's logits and classes; default the identity (``C' = C``).
    y : Tensor (N,), optional
        The class of each sample passed to ``basis``; default the predicted class.
    chunk_size : int, optional
        Samples per chunk; default :mod:`~art_fisher.metrics._engine._chunking`'s policy.
    diagonal : bool
        Only the diagonals (what a trace needs; cheaper).
    create_graph : bool
        Keep the graph: the results are differentiable in ``x``.
    """
    # C' ≤ C columns kept, or the streamed columns' working set for diagonals
    size = _samples_per_chunk(coverage, x, chunking.STREAMED_COPIES if diagonal else coverage.n_classes, chunk_size)
    zs: list[torch.Tensor] = []
    ks: list[torch.Tensor] = []
    ws: list[torch.Tensor] = []
    for sl in chunking.chunks(x.shape[0], size):
        xb = x[sl]
        w_of = ChunkBasis(basis, None if y is None else y[sl])
        grams: dict[str, torch.Tensor] = {}
        todo = list(coverage.rest)
        z = None
        if coverage.rules:
            rec = recorded_forward(net, coverage, xb, create_graph=create_graph)
            z = rec.z if create_graph else rec.z.detach()
            _checks.check_finite_output(z, sl.start, net, x)
            if rec.modules:
                grams = _hook_grams(rec, coverage, w_of(z), diagonal, create_graph)
            todo += rec.missing
            del rec
        if todo:
            zf, k = _func_parts(net, coverage, xb, todo, chunk_size)
            z = zf if z is None else z
            _checks.check_finite_output(z, sl.start, net, x)
            k = w_of.grams(k, z)
            if diagonal:
                k = k.diagonal(dim1=-2, dim2=-1)
            grams.update({name: k[:, j] for j, name in enumerate(todo)})
        assert z is not None  # every selected parameter goes through the hooks or through torch.func
        zs.append(z)
        ks.append(torch.stack([grams[name] for name in net.names], dim=1))
        ws.append(w_of(z))
    n_cols = max(w.shape[2] for w in ws)  # a basis may give chunks fewer columns (zero columns elsewhere)
    dims = 1 if diagonal else 2
    return (
        torch.cat(zs),
        torch.cat([pad_columns(k, n_cols, dims) for k in ks]),
        torch.cat([pad_columns(w, n_cols, 1) for w in ws]),
    )


def pad_columns(t: torch.Tensor, n_cols: int, dims: int) -> torch.Tensor:
    """``t`` with its last ``dims`` dimensions (columns of ``W``) zero-padded to ``n_cols``: what zero columns give."""
    missing = n_cols - t.shape[-1]
    if missing == 0:
        return t
    return torch.nn.functional.pad(t, [0, missing] * dims)


def directional(
    net: FunctionalNet,
    coverage: HookCoverage,
    x: torch.Tensor,
    *,
    coefficients: Coefficients | None = None,
    v: dict[str, torch.Tensor] | None = None,
    basis: Basis | None = None,
    y: torch.Tensor | None = None,
    chunk_size: int | None = None,
    create_graph: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Logits (N, C) and ``Wᵀ t_k`` with ``t_k = J_k v_k`` (N, n_tensors, C') for every parameter tensor ``k``.

    Either ``coefficients`` maps a chunk's logits (n, C) and classes (n,) (``y``, default the predicted
    class) to coefficients ``r`` (n, C) of per-sample directions ``v = Jᵀ r`` (then ``t_k = K_k r``), or
    ``v`` is one fixed direction (parameter name → tensor). ``basis`` is as in :func:`tensor_grams`. Also
    returns ``r`` (N, C) and ``rᵀ t_k`` (N, n_tensors) (both None for a fixed ``v``).

    On the hook path, one backward pass with the cotangent ``r`` gives each layer's ``b_r = Σ_c r_c
    ∂z_c/∂o``, hence the layer's output change ``δo_k`` along ``v_k`` and ``rᵀ t_k = ⟨b_r, δo_k⟩``; then
    one backward pass per column ``w_j`` of ``W`` gives ``(Wᵀ t_k)_j = ⟨b_j, δo_k⟩``.
    """
    size = _samples_per_chunk(coverage, x, coverage.n_classes + 1, chunk_size)
    zs: list[torch.Tensor] = []
    ts: list[torch.Tensor] = []
    rs: list[torch.Tensor] = []
    rts: list[torch.Tensor] = []
    for sl in chunking.chunks(x.shape[0], size):
        xb = x[sl]
        yb = None if y is None else y[sl]
        w_of = ChunkBasis(basis, yb)
        t: dict[str, torch.Tensor] = {}
        rt: dict[str, torch.Tensor] = {}
        todo = list(coverage.rest)
        z, r = None, None
        if coverage.rules:
            rec = recorded_forward(net, coverage, xb, create_graph=create_graph)
            z = rec.z if create_graph else rec.z.detach()
            _checks.check_finite_output(z, sl.start, net, x)
            r = None if coefficients is None else coefficients(z, _classes(z, yb))
            if rec.modules:
                _hook_directional(rec, coverage, w_of(z), r, v, t, rt, create_graph)
            todo += rec.missing
            del rec
        if todo and coefficients is not None:
            zf, k = _func_parts(net, coverage, xb, todo, chunk_size)
            z = zf if z is None else z
            _checks.check_finite_output(z, sl.start, net, x)
            r = coefficients(z, _classes(z, yb)) if r is None else r
            for j, name in enumerate(todo):
                t_k = (k[:, j] @ r.unsqueeze(-1)).squeeze(-1)  # (n, C)
                rt[name] = (r * t_k).sum(-1)
                t[name] = w_of.vector(t_k, z)
        elif todo:
            assert v is not None  # a fixed direction when there are no coefficients
            if z is None:
                z = net.logits(net.selected(), xb)
                _checks.check_finite_output(z, sl.start, net, x)
            for name in todo:
                t_k = jvp(functools.partial(net.logits, x=xb), ({name: net.base[name]},), ({name: v[name]},))[1]
                t[name] = w_of.vector(t_k, z)
        assert z is not None  # every selected parameter goes through the hooks or through torch.func
        zs.append(z)
        ts.append(torch.stack([t[name] for name in net.names], dim=1))
        if r is not None:
            rs.append(r)
        if coefficients is not None:
            rts.append(torch.stack([rt[name] for name in net.names], dim=1))
    n_cols = max(t.shape[-1] for t in ts)
    ts = [pad_columns(t, n_cols, 1) for t in ts]
    if coefficients is None:
        return torch.cat(zs), torch.cat(ts), None, None
    return torch.cat(zs), torch.cat(ts), torch.cat(rs), torch.cat(rts)


def inner(g: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """Per-sample inner product (n,) of ``g`` (n, *out) with ``delta`` broadcastable to it.

    ``g`` is first summed over the dimensions ``delta`` broadcasts (a bias's output change is constant
    there), then the product is a batched dot product, never an elementwise product of ``g``'s size.
    """
    n = g.shape[0]
    if delta.shape[0] != n:
        delta = delta.expand(n, *delta.shape[1:])
    dims = tuple(i for i in range(1, g.dim()) if delta.shape[i] == 1 and g.shape[i] != 1)
    if dims:
        g = g.sum(dims, keepdim=True)
    return torch.bmm(g.reshape(n, 1, -1), delta.expand_as(g).reshape(n, -1, 1)).reshape(n)


def _classes(z: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
    return z.detach().argmax(-1) if y is None else y


def _hook_directional(
    rec: Recorded,
    coverage: HookCoverage,
    w: torch.Tensor,
    r: torch.Tensor | None,
    v: dict[str, torch.Tensor] | None,
    t: dict[str, torch.Tensor],
    rt: dict[str, torch.Tensor],
    create_graph: bool,
) -> None:
    """Fill ``t`` (name → (n, C')) and ``rt`` (name → (n,)) for the recorded layers' parameters."""
    edges = [rec.edges[m] for m in rec.modules]
    if r is not None:
        brs = dict(
            zip(
                rec.modules,
                torch.autograd.grad(rec.z, edges, r, retain_graph=True, create_graph=create_graph),
                strict=True,
            )
        )
    deltas = []
    for name, (m, role) in coverage.covered.items():
        if m not in rec.rules:
            continue
        rule = rec.rules[m]
        if r is not None:
            delta = rule.change_along_grad(brs[m], role)
            rt[name] = inner(brs[m], delta)
        else:
            assert v is not None  # a fixed direction when there are no coefficients
            delta = rule.change(role, v[name], shared=True)
        deltas.append((name, m, delta))
    if r is not None:
        del brs
    cols: dict[str, list[torch.Tensor]] = {name: [] for name, _m, _d in deltas}
    for _j, grads in _columns(rec, w, create_graph):
        for name, m, delta in deltas:
            cols[name].append(inner(grads[m], delta))
    for name, col in cols.items():
        t[name] = torch.stack(col, dim=1)
