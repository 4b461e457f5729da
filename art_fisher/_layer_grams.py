"""Fast per-sample Gram blocks from layer inputs and output-gradients (the "ghost norm" idea).

For a layer with input ``A`` and output ``o``, one backward pass per class ``c`` of the batch logits
``z[:, c]`` gives the output-gradients ``B_c = ∂z_c/∂o`` of every sample at once. The per-sample
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


def _conv_blocks(
    module: nn.Conv2d, a: torch.Tensor, b: torch.Tensor, want: set[str], mode: str = "auto"
) -> dict[str, torch.Tensor]:
    """Blocks of ``nn.Conv2d``: input ``a`` (n, in, H, W), output-gradients ``b`` (n, C, out, H', W')."""
    n, n_cls, o = b.shape[0], b.shape[1], b.shape[2]
    b = b.reshape(n, n_cls * o, -1)  # (n, C·out, L)
    length = b.shape[2]
    out = {}
    if "weight" in want:
        u = F.unfold(a, module.kernel_size, dilation=module.dilation, padding=module.padding, stride=module.stride)
        k = u.shape[1]
        cost_materialise = n_cls * o * k * length + n_cls * n_cls * o * k
        cost_ghost = length * length * (k + n_cls * o) + n_cls * n_cls * o * length
        if mode == "materialise" or (mode == "auto" and cost_materialise <= cost_ghost):
            g = torch.bmm(b, u.transpose(1, 2))  # (n, C·out, k): per-sample, per-class weight gradients
            out["weight"] = _gram(g.reshape(n, n_cls, o * k))
        else:
            uu = torch.bmm(u.transpose(1, 2), u)  # (n, L, L)
            bw = torch.bmm(b, uu).reshape(n, n_cls, o * length)
            out["weight"] = torch.bmm(bw, b.reshape(n, n_cls, o * length).transpose(1, 2))
        del u
    if "bias" in want:
        out["bias"] = _gram(b.sum(2).reshape(n, n_cls, o))
    return out


def _bn_blocks(module: nn.Module, a: torch.Tensor, b: torch.Tensor, want: set[str]) -> dict[str, torch.Tensor]:
    """Blocks of eval-mode BatchNorm: input ``a`` (n, ch, *), output-gradients ``b`` (n, C, ch, *)."""
    shape = [1, -1] + [1] * (a.dim() - 2)
    xhat = (a - module.running_mean.reshape(shape)) * torch.rsqrt(module.running_var.reshape(shape) + module.eps)
    n, n_cls, ch = b.shape[0], b.shape[1], a.shape[1]
    b = b.reshape(n, n_cls, ch, -1)
    out = {}
    if "weight" in want:
        out["weight"] = _gram((b * xhat.reshape(n, 1, ch, -1)).sum(3))
    if "bias" in want:
        out["bias"] = _gram(b.sum(3))
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
    xhat = (a - module.running_mean.reshape(shape)) * torch.rsqrt(module.running_var.reshape(shape) + module.eps)
    if kind == "weight":
        g = v.reshape(shape) if br is None else (br * xhat).flatten(2).sum(2).reshape(n, *shape[1:])
        return g * xhat
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


def grams_consumer(_z: torch.Tensor):
    """Consumer for :func:`hook_pass` that returns the Gram blocks ``K_k`` (n, C, C)."""

    def consume(module, a, b, want):
        if isinstance(module, nn.Linear):
            return _linear_blocks(a, b, want)
        if isinstance(module, nn.Conv2d):
            return _conv_blocks(module, a, b, want)
        return _bn_blocks(module, a, b, want)

    return consume


def hook_pass(
    net: FunctionalNet, x: torch.Tensor, covered: dict[str, tuple[str, str]], make_consumer, basis_of_z=None
) -> tuple[torch.Tensor, dict[str, torch.Tensor], list[str]]:
    """One forward pass with hooks and one backward pass per basis column, then ``consumer`` per layer.

    Parameters
    ----------
    make_consumer : callable
        Called with the logits ``z`` (n, C); returns ``consumer(module, a, b, want, prefix) ->
        {kind: Tensor}`` that gets the layer input ``a`` (n, ...), the per-column output-gradients
        ``b`` (n, C', ...), the wanted kinds and the module's name.
    basis_of_z : callable, optional
        Maps the logits (n, C) to a basis ``W`` (n, C, C'); the backward pass ``j`` uses the cotangent
        ``W[:, :, j]``, so ``b[:, j] = Σ_c W_cj ∂z_c/∂output`` and the Gram blocks come out as
        ``Wᵀ K_k W``. Default: the identity (``C' = C``, ``b[:, c] = ∂z_c/∂output``).

    Returns
    -------
    z : Tensor (n, C)
    blocks : dict of str to Tensor
        The consumer's results by parameter name.
    uncovered : list of str
        Covered-by-type parameters whose module turned out not to run exactly once (weight sharing,
        unused modules); the caller computes them with ``torch.func``.
    """
    z, modules, wanted, records, good, uncovered = _recorded_forward(net, x, covered)
    zd = z.detach()
    blocks: dict[str, torch.Tensor] = {}
    if good:
        consumer = make_consumer(zd)
        outputs = [records[m][0][1] for m in good]
        cots = _cotangents(zd, None if basis_of_z is None else basis_of_z(zd))
        per_col = []
        with torch.enable_grad():
            for i, cot in enumerate(cots):
                grads = torch.autograd.grad(z, outputs, cot, retain_graph=i < len(cots) - 1)
                per_col.append([g.detach() for g in grads])
        for j, m in enumerate(good):
            b = torch.stack([per_col[c][j] for c in range(len(cots))], dim=1)  # (n, C', *out)
            for c in range(len(cots)):
                per_col[c][j] = None
            res = consumer(modules[m], records[m][0][0], b, wanted[m], m)
            del b
            for kind, k in res.items():
                blocks[f"{m}.{kind}" if m else kind] = k
    return zd, blocks, uncovered


def hook_grams(
    net: FunctionalNet, x: torch.Tensor, covered: dict[str, tuple[str, str]], basis_of_z=None
) -> tuple[torch.Tensor, dict[str, torch.Tensor], list[str]]:
    """Logits (n, C) and Gram blocks (n, C', C') (``Wᵀ K_k W``) of the hook-covered parameters of one chunk."""
    consume = grams_consumer(None)
    return hook_pass(
        net, x, covered, lambda _z: lambda mod, a, b, want, _prefix: consume(mod, a, b, want), basis_of_z
    )
