"""Fast per-sample Gram blocks from layer inputs and output-gradients (the "ghost norm" idea).

For a layer with input ``A`` and output ``o``, one backward pass per class ``c`` of the batch logits
``z[:, c]`` gives the output-gradients ``B_c = ∂z_c/∂o`` of every sample at once (or, with a basis
``W`` (C × C'), one pass per column ``w_j`` with the cotangent ``w_j``, giving ``Σ_c W_cj B_c`` and the
blocks ``Wᵀ K W``; the metrics use ``W Wᵀ = diag p − p pᵀ``, C − 1 columns). The per-sample
gradient of a weight is then a contraction of ``B_c`` with ``A``, and the Gram block
``K[c, d] = ⟨G_c, G_d⟩`` follows:

- ``nn.Linear`` on (N, in) inputs: ``G_c = B_c A ᵀ`` so ``K = (A·A) · B Bᵀ`` (never materialised);
  on (N, T, in) inputs either materialise ``G_c = Σ_t B_ct A_tᵀ`` or use ``Σ_ts (B_ct·B_ds)(A_t·A_s)``,
  whichever is cheaper;
- ``nn.Conv2d`` (groups 1, zero padding): with the unfolded input ``U`` (in·kh·kw, L),
  ``G_c = B_c Uᵀ``; materialise it, or use ``K[c,d] = ⟨B_d, B_c (UᵀU)⟩`` (L × L), by cost;
- BatchNorm in eval mode: per-sample ``γ``-gradient ``Σ_t x̂_t B_t`` and ``β``-gradient ``Σ_t B_t``;
- biases: ``Σ_t B_t``.

A module is handled here only if it was called exactly once in the forward pass and its parameters
belong to no other module; every other selected parameter (unknown module types, weight sharing,
grouped convolutions, ...) goes to the ``torch.func`` engine.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from art_fisher._functional import FunctionalNet

_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def _supported(module: nn.Module) -> bool:
    if type(module) is nn.Linear:
        return True
    if type(module) is nn.Conv2d:
        return module.groups == 1 and module.padding_mode == "zeros" and not isinstance(module.padding, str)
    if type(module) in _BN:
        return module.affine and module.running_mean is not None and not module.training
    return False


def plan(net: FunctionalNet) -> tuple[dict[str, tuple[str, str]], list[str]]:
    """Split the selected parameters into hook-covered ones and the rest.

    Returns
    -------
    covered : dict of str to (module name, "weight" | "bias")
    rest : list of str
        Selected parameters for the ``torch.func`` engine.
    """
    owners: dict[int, int] = {}
    for _m, p in net.model.named_parameters(remove_duplicate=False):
        owners[id(p)] = owners.get(id(p), 0) + 1
    selected = set(net.names)
    covered: dict[str, tuple[str, str]] = {}
    for mod_name, module in net.model.named_modules():
        if not _supported(module):
            continue
        for kind in ("weight", "bias"):
            p = module._parameters.get(kind)
            full = f"{mod_name}.{kind}" if mod_name else kind
            if p is not None and full in selected and owners[id(p)] == 1:
                covered[full] = (mod_name, kind)
    return covered, [n for n in net.names if n not in covered]


def _gram(g: torch.Tensor) -> torch.Tensor:
    """``(n, C, M)`` per-sample, per-class vectors → ``(n, C, C)`` Gram matrices."""
    g = g.flatten(2)
    return torch.bmm(g, g.transpose(1, 2))


def _linear_blocks(
    a: torch.Tensor, b: torch.Tensor, want: set[str], mode: str = "auto"
) -> dict[str, torch.Tensor]:
    """Blocks of ``nn.Linear``: input ``a`` (n, *, in), output-gradients ``b`` (n, C, *, out)."""
    n, n_cls = b.shape[0], b.shape[1]
    out = {}
    if a.dim() == 2:
        bb = _gram(b)
        if "weight" in want:
            out["weight"] = (a * a).sum(1).reshape(n, 1, 1) * bb
        if "bias" in want:
            out["bias"] = bb
        return out
    a = a.reshape(n, -1, a.shape[-1])  # (n, T, in)
    b = b.reshape(n, n_cls, -1, b.shape[-1])  # (n, C, T, out)
    t, o, i = b.shape[2], b.shape[3], a.shape[-1]
    if "weight" in want:
        cheaper = n_cls * o * i <= t * t * (i + n_cls * o)
        if mode == "materialise" or (mode == "auto" and cheaper):
            out["weight"] = _gram(torch.einsum("ncto,nti->ncoi", b, a))
        else:
            aa = torch.bmm(a, a.transpose(1, 2))  # (n, T, T)
            bw = torch.einsum("ncto,nts->ncso", b, aa)
            out["weight"] = torch.bmm(bw.flatten(2), b.flatten(2).transpose(1, 2))
    if "bias" in want:
        out["bias"] = _gram(b.sum(2))
    return out


def xhat(module: nn.Module, a: torch.Tensor) -> torch.Tensor:
    """Input ``a`` (n, ch, *) of an eval-mode BatchNorm, normalised by its running statistics."""
    shape = [1, -1] + [1] * (a.dim() - 2)
    return (a - module.running_mean.reshape(shape)) * torch.rsqrt(module.running_var.reshape(shape) + module.eps)


def _unfold(module: nn.Conv2d, a: torch.Tensor) -> torch.Tensor:
    """Patches (n, in·kh·kw, L) of the layer input ``a``."""
    return F.unfold(a, module.kernel_size, dilation=module.dilation, padding=module.padding, stride=module.stride)


def _materialise(n_cls: int, o: int, k: int, length: int, mode: str = "auto") -> bool:
    """Whether per-sample conv weight gradients (C·o × k) are cheaper than the ghost (L × L) route."""
    cost_materialise = n_cls * o * k * length + n_cls * n_cls * o * k
    cost_ghost = length * length * (k + n_cls * o) + n_cls * n_cls * o * length
    return mode == "materialise" or (mode == "auto" and cost_materialise <= cost_ghost)


def _conv_blocks(
    module: nn.Conv2d, a: torch.Tensor, b: torch.Tensor, want: set[str], mode: str = "auto"
) -> dict[str, torch.Tensor]:
    """Blocks of ``nn.Conv2d``: input ``a`` (n, in, H, W), output-gradients ``b`` (n, C, out, H', W')."""
    n, n_cls, o = b.shape[0], b.shape[1], b.shape[2]
    b = b.reshape(n, n_cls * o, -1)  # (n, C·out, L)
    length = b.shape[2]
    out = {}
    if "weight" in want:
        u = _unfold(module, a)
        if _materialise(n_cls, o, u.shape[1], length, mode):
            g = torch.bmm(b, u.transpose(1, 2))  # (n, C·out, k): per-sample, per-class weight gradients
            out["weight"] = _gram(g.reshape(n, n_cls, -1))
        else:
            uu = torch.bmm(u.transpose(1, 2), u)  # (n, L, L)
            bw = torch.bmm(b, uu).reshape(n, n_cls, o * length)
            out["weight"] = torch.bmm(bw, b.reshape(n, n_cls, o * length).transpose(1, 2))
        del u
    if "bias" in want:
        out["bias"] = _gram(b.sum(2).reshape(n, n_cls, o))
    return out


def _output_change(module: nn.Module, a: torch.Tensor, kind: str, br: torch.Tensor | None, v: torch.Tensor | None):
    """Output change (n, *out) of a layer along a parameter direction.

    The direction is either per sample, ``v = Jᵀ r`` restricted to this parameter, given through
    ``br = Σ_c r_c ∂z_c/∂output`` (n, *out), or one fixed tensor ``v`` of the parameter's shape.
    """
    n = a.shape[0]
    if isinstance(module, nn.Linear):
        if kind == "bias":
            vb = v.expand(n, -1) if br is None else br.reshape(n, -1, br.shape[-1]).sum(1)
            return vb.reshape(n, *([1] * (a.dim() - 2)), -1).expand(*a.shape[:-1], vb.shape[-1])
        if br is None:
            return a @ v.transpose(0, 1)
        if a.dim() == 2:
            return br * (a * a).sum(1, keepdim=True)
        a3, b3 = a.reshape(n, -1, a.shape[-1]), br.reshape(n, -1, br.shape[-1])
        vw = torch.bmm(b3.transpose(1, 2), a3)  # (n, out, in)
        return torch.bmm(a3, vw.transpose(1, 2)).view_as(br)
    if isinstance(module, nn.Conv2d):
        if kind == "bias":
            if br is None:
                return v.reshape(1, -1, 1, 1).expand(n, -1, 1, 1)
            return br.sum((2, 3), keepdim=True)
        if br is None:
            return F.conv2d(a, v, None, module.stride, module.padding, module.dilation)
        u = F.unfold(a, module.kernel_size, dilation=module.dilation, padding=module.padding, stride=module.stride)
        b2 = br.flatten(2)  # (n, out, L)
        vw = torch.bmm(b2, u.transpose(1, 2))  # (n, out, k): per-sample weight direction
        return torch.bmm(vw, u).view_as(br)
    # eval-mode BatchNorm
    shape = [1, -1] + [1] * (a.dim() - 2)
    normed = xhat(module, a)
    if kind == "weight":
        g = v.reshape(shape) if br is None else (br * normed).flatten(2).sum(2).reshape(n, *shape[1:])
        return g * normed
    return v.reshape(shape).expand_as(a) if br is None else br.flatten(2).sum(2).reshape(n, *shape[1:]).expand_as(a)


def _recorded_forward(net, x: torch.Tensor, covered: dict) -> tuple:
    """One forward pass with hooks on the covered modules.

    Returns the logits ``z`` (with graph), the model's modules by name, the parameter kinds wanted of
    each covered module, each module's recorded ``(input, output)`` pairs, the modules
    that ran exactly once with a differentiable output (``good``), and the covered parameters whose
    module did not (``uncovered``; weight sharing or unused modules).
    """
    modules = dict(net.model.named_modules())
    wanted: dict[str, set[str]] = {}
    for mod_name, kind in covered.values():
        wanted.setdefault(mod_name, set()).add(kind)
    records: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {m: [] for m in wanted}

    def make_hook(mod_name: str):
        def hook(_module, inputs, output):
            records[mod_name].append((inputs[0].detach(), output))

        return hook

    handles = [modules[m].register_forward_hook(make_hook(m)) for m in wanted]
    try:
        with torch.enable_grad():
            xr = x.detach().requires_grad_(True)
            z = net.logits(net.selected(), xr)
    finally:
        for h in handles:
            h.remove()
    good = [m for m, rec in records.items() if len(rec) == 1 and rec[0][1].requires_grad]
    uncovered = [p for p, (m, _k) in covered.items() if m not in good]
    return z, modules, wanted, records, good, uncovered


def _cotangents(z: torch.Tensor, basis: torch.Tensor | None):
    """Cotangents of the per-column backward passes: ``basis[:, :, j]`` (n, C) or the unit vectors."""
    if basis is None:
        eye = torch.eye(z.shape[1], dtype=z.dtype, device=z.device)
        return [eye[c].expand_as(z) for c in range(z.shape[1])]
    return [basis[:, :, j] for j in range(basis.shape[2])]


def hook_directional(
    net: FunctionalNet,
    x: torch.Tensor,
    covered: dict[str, tuple[str, str]],
    r_of_z=None,
    v: dict[str, torch.Tensor] | None = None,
    basis_of_z=None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor], list[str], torch.Tensor | None, dict[str, torch.Tensor]]:
    """``Wᵀ t_k`` with ``t_k = J_k v_k`` (n, C) for the hook-covered parameters of one chunk.

    One forward pass with hooks; for per-sample directions ``v = Jᵀ r`` one backward pass with the
    cotangent ``r`` gives each layer's ``Σ_c r_c ∂z_c/∂output``, hence the layer's output change
    ``δo_k`` along ``v_k`` and ``rᵀ t_k = ⟨Σ_c r_c ∂z_c/∂output, δo_k⟩``; then one backward pass per
    column ``w_j`` of the basis ``W = basis_of_z(z)`` (n, C, C'; default the identity) gives
    ``(Wᵀ t_k)_j = ⟨Σ_c W_cj ∂z_c/∂output, δo_k⟩``. Nothing of size C × output is kept.

    Returns
    -------
    z : Tensor (n, C)
    t : dict of str to Tensor (n, C')
    uncovered : list of str
    r : Tensor (n, C) or None
    rt : dict of str to Tensor (n,)
        ``rᵀ t_k`` (empty when ``r_of_z`` is None).
    """
    z, modules, wanted, records, good, uncovered = _recorded_forward(net, x, covered)
    zd = z.detach()
    r = None if r_of_z is None else r_of_z(zd)
    basis = None if basis_of_z is None else basis_of_z(zd)
    t: dict[str, torch.Tensor] = {}
    rt: dict[str, torch.Tensor] = {}
    if not good:
        return zd, t, uncovered, r, rt
    outputs = [records[m][0][1] for m in good]
    with torch.enable_grad():
        brs = torch.autograd.grad(z, outputs, r, retain_graph=True) if r is not None else [None] * len(good)
    deltas = []
    for m, br in zip(good, brs, strict=True):
        prefix = f"{m}." if m else ""
        for kind in sorted(wanted[m]):
            vk = None if v is None else v[prefix + kind]
            delta = _output_change(modules[m], records[m][0][0], kind, br, vk)
            if br is not None:
                rt[prefix + kind] = (br * delta).flatten(1).sum(1)
            deltas.append((prefix + kind, good.index(m), delta))
    del brs
    cols: dict[str, list[torch.Tensor]] = {name: [] for name, _j, _d in deltas}
    cots = _cotangents(zd, basis)
    with torch.enable_grad():
        for i, cot in enumerate(cots):
            grads = torch.autograd.grad(z, outputs, cot, retain_graph=i < len(cots) - 1)
            for name, j, delta in deltas:
                cols[name].append((grads[j] * delta).flatten(1).sum(1))
    for name, col in cols.items():
        t[name] = torch.stack(col, dim=1)
    return zd, t, uncovered, r, rt


def _column_plan(module: nn.Module, a: torch.Tensor, out: torch.Tensor, want: set[str], n_cols: int):
    """How each wanted block of a layer is formed from the per-column output-gradients ``b_j``.

    Returns ``reducers`` (kind → ``f(b_j) -> (n, M)``, the block being the Gram matrix of the stacked
    ``f(b_j)``: per-sample gradients, applied to each column as soon as its backward pass is done, so
    the large ``b_j`` is dropped at once) and ``keep`` (kinds whose block needs all columns at once:
    the ghost contractions of :func:`_linear_blocks` / :func:`_conv_blocks`).
    """
    n = out.shape[0]
    if isinstance(module, nn.Linear):
        return {}, set(want)
    reducers = {}
    if isinstance(module, nn.Conv2d):
        o = out.shape[1]
        length = out[0, 0].numel()
        keep = set()
        if "weight" in want:
            k = module.in_channels * module.kernel_size[0] * module.kernel_size[1]
            if _materialise(n_cols, o, k, length):
                ut = _unfold(module, a).transpose(1, 2)  # (n, L, k)
                reducers["weight"] = lambda g: torch.bmm(g.reshape(n, o, length), ut).reshape(n, -1)
            else:
                keep.add("weight")
        if "bias" in want:
            reducers["bias"] = lambda g: g.reshape(n, o, length).sum(2)
        return reducers, keep
    ch = a.shape[1]  # eval-mode BatchNorm
    if "weight" in want:
        normed = xhat(module, a).reshape(n * ch, -1, 1)
        reducers["weight"] = lambda g: torch.bmm(g.reshape(n * ch, 1, -1), normed).reshape(n, ch)
    if "bias" in want:
        reducers["bias"] = lambda g: g.reshape(n, ch, -1).sum(2)
    return reducers, set()


def hook_grams(
    net: FunctionalNet, x: torch.Tensor, covered: dict[str, tuple[str, str]], basis_of_z=None
) -> tuple[torch.Tensor, dict[str, torch.Tensor], list[str]]:
    """Logits (n, C) and Gram blocks ``Wᵀ K_k W`` (n, C', C') of the hook-covered parameters of one chunk.

    One forward pass with hooks, then one backward pass per basis column ``w_j`` (cotangent
    ``W[:, :, j]``; ``W = basis_of_z(z)`` (n, C, C'), default the identity) giving each layer's
    ``b_j = Σ_c W_cj ∂z_c/∂output``; each ``b_j`` is reduced to per-sample gradients at once where that
    is the chosen route (:func:`_column_plan`), and kept for a ghost contraction otherwise.

    Returns
    -------
    z : Tensor (n, C)
    blocks : dict of str to Tensor (n, C', C')
    uncovered : list of str
        Covered-by-type parameters whose module turned out not to run exactly once (weight sharing,
        unused modules); the caller computes them with ``torch.func``.
    """
    z, modules, wanted, records, good, uncovered = _recorded_forward(net, x, covered)
    zd = z.detach()
    blocks: dict[str, torch.Tensor] = {}
    if not good:
        return zd, blocks, uncovered
    outputs = [records[m][0][1] for m in good]
    cots = _cotangents(zd, None if basis_of_z is None else basis_of_z(zd))
    plans = {m: _column_plan(modules[m], records[m][0][0], records[m][0][1], wanted[m], len(cots)) for m in good}
    reduced: dict[str, dict[str, list[torch.Tensor]]] = {m: {kind: [] for kind in plans[m][0]} for m in good}
    kept: dict[str, list[torch.Tensor]] = {m: [] for m in good}
    with torch.enable_grad():
        for i, cot in enumerate(cots):
            grads = torch.autograd.grad(z, outputs, cot, retain_graph=i < len(cots) - 1)
            for m, g in zip(good, grads, strict=True):
                g = g.detach()
                for kind, reduce in plans[m][0].items():
                    reduced[m][kind].append(reduce(g))
                if plans[m][1]:
                    kept[m].append(g)
            del grads
    for m in good:
        prefix = f"{m}." if m else ""
        for kind, parts in reduced[m].items():
            blocks[prefix + kind] = _gram(torch.stack(parts, dim=1))
        keep = plans[m][1]
        if keep:
            b = torch.stack(kept[m], dim=1)  # (n, C', *out)
            kept[m] = []
            a = records[m][0][0]
            if isinstance(modules[m], nn.Linear):
                res = _linear_blocks(a, b, keep)
            else:
                res = _conv_blocks(modules[m], a, b, keep)
            del b
            for kind, k in res.items():
                blocks[prefix + kind] = k
    return zd, blocks, uncovered
