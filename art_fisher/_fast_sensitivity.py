"""Fast exact sensitivity for models whose selected parameters all sit in Linear / Conv2d / eval BatchNorm.

The sensitivity needs ``∂x z`` and ``∂x t_g`` with ``t_g = J_g v_g`` for each group ``g`` of parameter
tensors (one group per tensor when blockwise, one group otherwise), see :mod:`art_fisher._sensitivity`.
Here ``t_g`` comes from PyTorch's forward-mode AD without ``torch.func``: the batch is replicated once
per group, and a forward hook on each layer adds, on its group's replica only, the tangent
``δo = (direction of the layer's parameter) applied to the layer's input`` (for a weight direction
``V``: ``V a`` for Linear, ``conv(a, V)`` for Conv2d, ``V ⊙ x̂`` for BatchNorm; for a bias: the bias
direction). The input-derivatives then follow by ordinary backward passes through that
forward-mode graph (reverse over forward): one per class for all groups and samples at once.

Per-sample directions ``v = Jᵀ r`` (e.g. ``∇θ log p_ŷ``) are formed per layer from one backward pass
with the cotangent ``r``: ``V = Σ_t (Σ_c r_c ∂z_c/∂o_t) a_tᵀ`` (per-sample weight gradient).

When the model's logits are piecewise linear in ``x`` (:mod:`art_fisher._piecewise`) no forward mode
is needed: ``t_g = Σ_k ⟨∂z/∂o_k, δo_k⟩`` with ``∂z/∂o_k`` locally constant in ``x``, so ``∂x t_g`` is a
first-order backward pass from the layers of group ``g`` down to ``x`` (:func:`_piecewise_tail`).
"""

from __future__ import annotations

import torch
import torch.autograd.forward_ad as fwad
import torch.nn.functional as F
from torch import nn
from torch.func import jacrev, jvp, vmap

from art_fisher._functional import FunctionalNet, predicted_vs_rest, predicted_vs_rest_jacobian
from art_fisher._layer_grams import xhat
from art_fisher._sensitivity import fis_from_jacobians, unit_length


def _per_sample_direction(module: nn.Module, kind: str, a: torch.Tensor, br: torch.Tensor) -> torch.Tensor:
    """Gradient of ``Σ_c r_c z_c`` w.r.t. the parameter, per sample: (n, *param.shape)."""
    n = a.shape[0]
    if isinstance(module, nn.Linear):
        b3 = br.reshape(n, -1, br.shape[-1])
        if kind == "bias":
            return b3.sum(1)
        return torch.bmm(b3.transpose(1, 2), a.reshape(n, -1, a.shape[-1]))
    if isinstance(module, nn.Conv2d):
        if kind == "bias":
            return br.sum((2, 3))
        u = F.unfold(a, module.kernel_size, dilation=module.dilation, padding=module.padding, stride=module.stride)
        return torch.bmm(br.flatten(2), u.transpose(1, 2)).reshape(n, *module.weight.shape)
    if kind == "bias":
        return br.flatten(2).sum(2)
    return (br * xhat(module, a)).flatten(2).sum(2)


def _apply_direction(module: nn.Module, kind: str, a: torch.Tensor, d: torch.Tensor, shared: bool) -> torch.Tensor:
    """Output change of the layer at input ``a`` (n, ...) along direction ``d`` (per sample or shared)."""
    n = a.shape[0]
    if isinstance(module, nn.Linear):
        if kind == "bias":
            vb = d.expand(n, -1) if shared else d
            return vb.reshape(n, *([1] * (a.dim() - 2)), -1).expand(*a.shape[:-1], vb.shape[-1])
        if shared:
            return a @ d.transpose(0, 1)
        return torch.bmm(a.reshape(n, -1, a.shape[-1]), d.transpose(1, 2)).reshape(*a.shape[:-1], d.shape[1])
    if isinstance(module, nn.Conv2d):
        if kind == "bias":
            return (d.reshape(1, -1, 1, 1) if shared else d.reshape(n, -1, 1, 1))
        if shared:
            return F.conv2d(a, d, None, module.stride, module.padding, module.dilation)
        u = F.unfold(a, module.kernel_size, dilation=module.dilation, padding=module.padding, stride=module.stride)
        out = torch.bmm(d.flatten(2), u)  # (n, out, L)
        h = (a.shape[2] + 2 * module.padding[0] - module.dilation[0] * (module.kernel_size[0] - 1) - 1) // module.stride[0] + 1
        return out.reshape(n, out.shape[1], h, -1)
    shape = [1 if shared else n, -1] + [1] * (a.dim() - 2)
    if kind == "bias":
        return d.reshape(shape)
    return d.reshape(shape) * xhat(module, a)


def _record_inputs(net: FunctionalNet, x: torch.Tensor, modules: dict[str, nn.Module], names: list[str]):
    records: dict[str, list] = {m: [] for m in names}
    handles = [
        modules[m].register_forward_hook(lambda _mod, inp, out, m=m: records[m].append((inp[0], out)))
        for m in names
    ]
    try:
        z = net.logits(net.selected(), x)
    finally:
        for h in handles:
            h.remove()
    return z, records


def _layer_directions(modules, mod_names, covered, records, z, r, v, normalize):
    """Directions per parameter: per sample from one backward pass with the cotangent ``r``, or ``v``.

    Returns the directions (name → (n, *shape), or *shape when shared) and whether they are shared.
    """
    if r is None:
        return dict(v), True
    outs = [records[m][0][1] for m in mod_names]
    brs = torch.autograd.grad(z, outs, r, retain_graph=True)
    directions: dict[str, torch.Tensor] = {}
    for m, br in zip(mod_names, brs, strict=True):
        a = records[m][0][0].detach()
        for name, (mm, kind) in covered.items():
            if mm == m:
                directions[name] = _per_sample_direction(modules[m], kind, a, br.detach())
    if normalize:
        directions = unit_length(directions)[0]
    return directions, False


def fast_sensitivity(
    net: FunctionalNet,
    x: torch.Tensor,
    covered: dict[str, tuple[str, str]],
    *,
    r: torch.Tensor | None,
    v: dict[str, torch.Tensor] | None,
    y: torch.Tensor,
    blockwise: bool,
    normalize: bool,
    classes: str,
    piecewise: bool = False,
) -> torch.Tensor | None:
    """Exact FIS of one chunk (shape of ``x``), or None when a covered module does not run exactly once.

    Parameters
    ----------
    r : Tensor (n, C) or None
        Per-sample direction coefficients (``v = Jᵀ r``); None when ``v`` is given.
    v : dict of str to Tensor or None
        One fixed direction per selected parameter.
    y : Tensor (n,)
        Class of the ``"predicted_vs_rest"`` reduction.
    piecewise : bool
        The model's logits are piecewise linear in ``x`` (:func:`art_fisher._piecewise.is_piecewise_linear`):
        use the first-order path (:func:`_piecewise_tail`) instead of reverse over forward.
    """
    modules = dict(net.model.named_modules())
    mod_names = sorted({m for m, _k in covered.values()})
    with torch.enable_grad():
        x0 = x.detach().requires_grad_(True)
        z_full, records = _record_inputs(net, x0, modules, mod_names)
        if any(len(rec) != 1 for rec in records.values()):
            return None
        directions, shared = _layer_directions(modules, mod_names, covered, records, z_full, r, v, normalize)
        if piecewise:
            return _piecewise_tail(net, x0, z_full, records, modules, mod_names, covered, directions, shared,
                                   blockwise, classes, y)
        # input-Jacobian of the (reduced) logits
        reduce = (lambda z, yy: predicted_vs_rest(z, yy)) if classes == "predicted_vs_rest" else (lambda z, _y: z)
        z = reduce(z_full, y)
        jz = torch.stack(
            [torch.autograd.grad(z[:, c].sum(), x0, retain_graph=c < z.shape[1] - 1)[0].flatten(1)
             for c in range(z.shape[1])],
            dim=1,
        )  # (n, C', D)
    z = z.detach()

    # replicated forward passes, one replica per group of tangents; blockwise, the replicas of one
    # module's tensors share a pass, so no tangent exists before that module
    if blockwise:
        by_mod: dict[str, list[str]] = {}
        for name in net.names:
            by_mod.setdefault(covered[name][0], []).append(name)
        passes = [[[name] for name in names] for names in by_mod.values()]
    else:
        passes = [[list(net.names)]]
    ts, jts = [], []
    for replicas in passes:
        t, jt = _tangent_jacobians(net, x, modules, covered, replicas, directions, shared, reduce, y)
        ts.append(t)
        jts.append(jt)
    t = torch.cat(ts, dim=1)
    jt = torch.cat(jts, dim=1)
    return fis_from_jacobians(z, t, jz, jt).view_as(x)


def _tangent_jacobians(net, x, modules, covered, replicas, directions, shared, reduce, y):
    """``t`` (n, R, C') and ``∂x t`` (n, R, C', D) for ``R`` replicas, each with its own tangent group."""
    n, n_rep = x.shape[0], len(replicas)
    replica_of = {name: g for g, names in enumerate(replicas) for name in names}
    by_module: dict[str, list[tuple[str, str]]] = {}
    for name in replica_of:
        m, kind = covered[name]
        by_module.setdefault(m, []).append((name, kind))

    def hook(module, inputs, output, m):
        a = fwad.unpack_dual(inputs[0]).primal
        pieces = [None] * n_rep
        for name, kind in by_module[m]:
            g = replica_of[name]
            delta = _apply_direction(module, kind, a[g * n : (g + 1) * n], directions[name], shared)
            delta = delta.expand(n, *output.shape[1:])
            pieces[g] = delta if pieces[g] is None else pieces[g] + delta
        primal = fwad.unpack_dual(output).primal
        if all(p is not None for p in pieces):
            tangent = torch.cat(pieces) if n_rep > 1 else pieces[0]
        else:
            zeros = torch.zeros((n, *primal.shape[1:]), dtype=primal.dtype, device=primal.device)
            tangent = torch.cat([p if p is not None else zeros for p in pieces])
        return output + fwad.make_dual(torch.zeros_like(primal), tangent)

    with torch.enable_grad(), fwad.dual_level():
        xr = x.detach().repeat(n_rep, *([1] * (x.dim() - 1))).requires_grad_(True)
        handles = [modules[m].register_forward_hook(lambda mod, i, o, m=m: hook(mod, i, o, m)) for m in by_module]
        try:
            zr = reduce(net.logits(net.selected(), xr), y.repeat(n_rep))
        finally:
            for h in handles:
                h.remove()
        t = fwad.unpack_dual(zr).tangent  # (R·n, C')
        n_out = t.shape[1]
        jt = torch.stack(
            [torch.autograd.grad(t[:, c].sum(), xr, retain_graph=c < n_out - 1)[0].flatten(1) for c in range(n_out)],
            dim=1,
        )  # (R·n, C', D)
    t = t.detach().reshape(n_rep, n, -1).transpose(0, 1)
    jt = jt.reshape(n_rep, n, *jt.shape[1:]).transpose(0, 1)
    return t, jt


def _reduce_to_two(z, t, jz, jt, y):
    """``(z, t, ∂x z, ∂x t)`` of the logits → those of ``z₂ = (log p_y, log(1 − p_y))``.

    ``t₂ = A t`` with ``A = ∂z₂/∂z`` (n, 2, C), so ``∂x t₂ = A ∂x t + ∂z(A t)|_t ∂x z`` and
    ``∂x z₂ = A ∂x z``.
    """
    amat = predicted_vs_rest_jacobian(z, y)  # (n, 2, C)

    def a_times(zi: torch.Tensor, ti: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
        return jvp(lambda zz: predicted_vs_rest(zz, yi), (zi,), (ti,))[1]

    du = vmap(vmap(jacrev(a_times), in_dims=(None, 0, None)))(z, t, y)  # (n, G, 2, C)
    t2 = torch.einsum("nac,ngc->nga", amat, t)
    jt2 = torch.einsum("nac,ngcd->ngad", amat, jt) + torch.einsum("ngac,ncd->ngad", du, jz)
    return predicted_vs_rest(z, y), t2, torch.einsum("nac,ncd->nad", amat, jz), jt2


def _piecewise_tail(net, x0, z, records, modules, mod_names, covered, directions, shared, blockwise, classes, y):
    """FIS of one chunk for a model piecewise linear in ``x`` (see :mod:`art_fisher._piecewise`).

    With ``B_c = ∂z_c/∂o_k`` at a layer's output ``o_k`` and ``δo_k`` the layer's output change along
    its parameter direction, ``t_k,c = ⟨B_c, δo_k⟩``. ``B_c`` is locally constant in ``x`` here, so
    ``∂x t_k,c`` is the gradient of ``⟨B_c, δo_k(x)⟩`` with ``B_c`` held fixed: a first-order backward
    pass from layer ``k`` down to ``x`` only (batched over the ``C`` classes), instead of a
    reverse-over-forward pass through the whole network. A bias direction gives ``∂x t = 0``.
    """
    n, n_cls = x0.shape[0], z.shape[1]
    outs = [records[m][0][1] for m in mod_names]
    eye = torch.eye(n_cls, dtype=z.dtype, device=z.device).unsqueeze(1).expand(n_cls, n, n_cls)
    grads = torch.autograd.grad(z, [*outs, x0], eye, retain_graph=True, is_grads_batched=True)
    b_of = {m: g.detach() for m, g in zip(mod_names, grads[:-1], strict=True)}  # (C, n, *out)
    jz = grads[-1].detach().flatten(2).transpose(0, 1)  # (n, C, D)
    del grads
    groups = [[name] for name in net.names] if blockwise else [list(net.names)]
    ts, jts = [], []
    for group in groups:
        t = torch.zeros(n_cls, n, dtype=z.dtype, device=z.device)
        deltas, cots = [], []
        for name in group:
            m, kind = covered[name]
            out = records[m][0][1]
            delta = _apply_direction(modules[m], kind, records[m][0][0], directions[name], shared).expand_as(out)
            t = t + (b_of[m] * delta.detach()).flatten(2).sum(2)
            if delta.requires_grad:
                deltas.append(delta)
                cots.append(b_of[m])
        if deltas:
            (jt,) = torch.autograd.grad(deltas, x0, cots, retain_graph=True, is_grads_batched=True)
            jt = jt.flatten(2).transpose(0, 1)  # (n, C, D)
        else:
            jt = torch.zeros_like(jz)
        ts.append(t.transpose(0, 1))
        jts.append(jt)
    z = z.detach()
    t = torch.stack(ts, dim=1)  # (n, G, C)
    jt = torch.stack(jts, dim=1)  # (n, G, C, D)
    if classes == "predicted_vs_rest":
        z, t, jz, jt = _reduce_to_two(z, t, jz, jt, y)
    return fis_from_jacobians(z, t, jz, jt).view_as(x0)
