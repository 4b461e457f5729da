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
            out["weight"] = (a * a).sum(1).view(n, 1, 1) * bb
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
            out["weight"] = _gram(g.view(n, n_cls, o * k))
        else:
            uu = torch.bmm(u.transpose(1, 2), u)  # (n, L, L)
            bw = torch.bmm(b, uu).view(n, n_cls, o * length)
            out["weight"] = torch.bmm(bw, b.view(n, n_cls, o * length).transpose(1, 2))
        del u
    if "bias" in want:
        out["bias"] = _gram(b.sum(2).view(n, n_cls, o))
    return out


def _bn_blocks(module: nn.Module, a: torch.Tensor, b: torch.Tensor, want: set[str]) -> dict[str, torch.Tensor]:
    """Blocks of eval-mode BatchNorm: input ``a`` (n, ch, *), output-gradients ``b`` (n, C, ch, *)."""
    shape = [1, -1] + [1] * (a.dim() - 2)
    xhat = (a - module.running_mean.view(shape)) * torch.rsqrt(module.running_var.view(shape) + module.eps)
    n, n_cls, ch = b.shape[0], b.shape[1], a.shape[1]
    b = b.reshape(n, n_cls, ch, -1)
    out = {}
    if "weight" in want:
        out["weight"] = _gram((b * xhat.reshape(n, 1, ch, -1)).sum(3))
    if "bias" in want:
        out["bias"] = _gram(b.sum(3))
    return out


def _directional_linear(a, b, want, r, v):
    n = b.shape[0]
    if a.dim() == 2:
        a3, b4 = a.unsqueeze(1), b.unsqueeze(2)  # (n, 1, in), (n, C, 1, out)
    else:
        a3, b4 = a.reshape(n, -1, a.shape[-1]), b.reshape(n, b.shape[1], -1, b.shape[-1])
    out = {}
    br = None if r is None else torch.einsum("nc,ncto->nto", r, b4)
    if "weight" in want:
        if r is not None:
            vw = torch.einsum("nto,nti->noi", br, a3)
            delta = torch.einsum("nti,noi->nto", a3, vw)
        else:
            delta = a3 @ v["weight"].transpose(0, 1)
        out["weight"] = torch.einsum("ncto,nto->nc", b4, delta)
    if "bias" in want:
        vb = br.sum(1) if r is not None else v["bias"].expand(n, -1)  # (n, out)
        out["bias"] = torch.einsum("ncto,no->nc", b4, vb)
    return out


def _directional_conv(module, a, b, want, r, v):
    n, n_cls, o = b.shape[0], b.shape[1], b.shape[2]
    b = b.reshape(n, n_cls, o, -1)  # (n, C, out, L)
    out = {}
    br = None if r is None else torch.einsum("nc,ncol->nol", r, b)
    if "weight" in want:
        u = F.unfold(a, module.kernel_size, dilation=module.dilation, padding=module.padding, stride=module.stride)
        vw = torch.bmm(br, u.transpose(1, 2)) if r is not None else v["weight"].reshape(1, o, -1).expand(n, -1, -1)
        delta = torch.bmm(vw, u)  # (n, out, L): the output change along the weight direction
        out["weight"] = torch.bmm(b.flatten(2), delta.flatten(1).unsqueeze(-1)).squeeze(-1)
    if "bias" in want:
        vb = br.sum(-1) if r is not None else v["bias"].expand(n, -1)  # (n, out)
        out["bias"] = torch.einsum("ncol,no->nc", b, vb)
    return out


def _directional_bn(module, a, b, want, r, v):
    shape = [1, -1] + [1] * (a.dim() - 2)
    xhat = (a - module.running_mean.view(shape)) * torch.rsqrt(module.running_var.view(shape) + module.eps)
    n, n_cls, ch = b.shape[0], b.shape[1], a.shape[1]
    b = b.reshape(n, n_cls, ch, -1)
    xhat = xhat.reshape(n, ch, -1)
    br = None if r is None else torch.einsum("nc,ncht->nht", r, b)
    out = {}
    if "weight" in want:
        vg = (br * xhat).sum(-1) if r is not None else v["weight"].expand(n, -1)  # (n, ch)
        out["weight"] = torch.einsum("ncht,nht->nc", b, vg.unsqueeze(-1) * xhat)
    if "bias" in want:
        vb = br.sum(-1) if r is not None else v["bias"].expand(n, -1)
        out["bias"] = torch.einsum("ncht,nh->nc", b, vb)
    return out


def grams_consumer(_z: torch.Tensor):
    """Consumer for :func:`hook_pass` that returns the Gram blocks ``K_k`` (n, C, C)."""

    def consume(module, a, b, want):
        if isinstance(module, nn.Linear):
            return _linear_blocks(a, b, want)
        if isinstance(module, nn.Conv2d):
            return _conv_blocks(module, a, b, want)
        return _bn_blocks(module, a, b, want)

    return consume


def directional_consumer(r: torch.Tensor | None, v: dict[str, torch.Tensor] | None):
    """Consumer for :func:`hook_pass` returning ``t_k = J_k v_k`` (n, C) per block.

    Either ``r`` (n, C): per-sample directions ``v = Jᵀ r`` (``K_k r`` without forming ``K_k``), or
    ``v``: one fixed direction per parameter name.
    """

    def consume(module, a, b, want, prefix):
        vv = None if v is None else {k: v[f"{prefix}.{k}" if prefix else k] for k in want}
        if isinstance(module, nn.Linear):
            return _directional_linear(a, b, want, r, vv)
        if isinstance(module, nn.Conv2d):
            return _directional_conv(module, a, b, want, r, vv)
        return _directional_bn(module, a, b, want, r, vv)

    return consume


def hook_pass(
    net: FunctionalNet, x: torch.Tensor, covered: dict[str, tuple[str, str]], make_consumer
) -> tuple[torch.Tensor, dict[str, torch.Tensor], list[str]]:
    """One forward pass with hooks and one backward pass per class, then ``consumer`` per layer.

    Parameters
    ----------
    make_consumer : callable
        Called with the logits ``z`` (n, C); returns ``consumer(module, a, b, want, prefix) ->
        {kind: Tensor}`` that gets the layer input ``a`` (n, ...), the per-class output-gradients
        ``b`` (n, C, ...), the wanted kinds and the module's name.

    Returns
    -------
    z : Tensor (n, C)
    blocks : dict of str to Tensor
        The consumer's results by parameter name.
    uncovered : list of str
        Covered-by-type parameters whose module turned out not to run exactly once (weight sharing,
        unused modules); the caller computes them with ``torch.func``.
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
    blocks: dict[str, torch.Tensor] = {}
    if good:
        consumer = make_consumer(z.detach())
        outputs = [records[m][0][1] for m in good]
        n_cls = z.shape[1]
        per_class = []
        with torch.enable_grad():
            for c in range(n_cls):
                grads = torch.autograd.grad(z[:, c].sum(), outputs, retain_graph=c < n_cls - 1)
                per_class.append([g.detach() for g in grads])
        for j, m in enumerate(good):
            b = torch.stack([per_class[c][j] for c in range(n_cls)], dim=1)  # (n, C, *out)
            for c in range(n_cls):
                per_class[c][j] = None
            res = consumer(modules[m], records[m][0][0], b, wanted[m], m)
            del b
            for kind, k in res.items():
                blocks[f"{m}.{kind}" if m else kind] = k
    return z.detach(), blocks, uncovered


def hook_grams(
    net: FunctionalNet, x: torch.Tensor, covered: dict[str, tuple[str, str]]
) -> tuple[torch.Tensor, dict[str, torch.Tensor], list[str]]:
    """Logits (n, C) and Gram blocks (n, C, C) of the hook-covered parameters of one chunk."""
    consume = grams_consumer(None)
    return hook_pass(net, x, covered, lambda _z: lambda mod, a, b, want, _prefix: consume(mod, a, b, want))
