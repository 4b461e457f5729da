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
    """``(C, n, M)`` per-class, per-sample vectors → ``(n, C, C)`` Gram matrices."""
    g = g.transpose(0, 1)
    return g @ g.transpose(1, 2)


def _linear_blocks(
    a: torch.Tensor, b: torch.Tensor, want: set[str], mode: str = "auto"
) -> dict[str, torch.Tensor]:
    n = a.shape[0]
    out = {}
    if a.dim() == 2:
        bb = _gram(b)
        if "weight" in want:
            out["weight"] = (a * a).sum(1).view(n, 1, 1) * bb
        if "bias" in want:
            out["bias"] = bb
        return out
    a = a.reshape(n, -1, a.shape[-1])  # (n, T, in)
    b = b.reshape(b.shape[0], n, -1, b.shape[-1])  # (C, n, T, out)
    n_cls, _, t, o = b.shape
    i = a.shape[-1]
    if "weight" in want:
        cheaper = n_cls * o * i <= t * t * (i + n_cls * o)
        if mode == "materialise" or (mode == "auto" and cheaper):
            out["weight"] = _gram(torch.einsum("cnto,nti->cnoi", b, a).flatten(2))
        else:
            aa = a @ a.transpose(1, 2)  # (n, T, T)
            bw = torch.einsum("cnto,nts->cnso", b, aa)
            out["weight"] = torch.einsum("cnso,dnso->ncd", bw, b)
    if "bias" in want:
        out["bias"] = _gram(b.sum(2))
    return out


def _conv_blocks(
    module: nn.Conv2d, a: torch.Tensor, b: torch.Tensor, want: set[str], mode: str = "auto"
) -> dict[str, torch.Tensor]:
    n = a.shape[0]
    n_cls = b.shape[0]
    b = b.flatten(3)  # (C, n, out, L)
    out = {}
    if "weight" in want:
        u = F.unfold(a, module.kernel_size, dilation=module.dilation, padding=module.padding, stride=module.stride)
        k, length = u.shape[1], u.shape[2]
        o = b.shape[2]
        cost_materialise = n_cls * o * k * length + n_cls * n_cls * o * k
        cost_ghost = length * length * (k + n_cls * o) + n_cls * n_cls * o * length
        if mode == "materialise" or (mode == "auto" and cost_materialise <= cost_ghost):
            g = torch.einsum("cnol,nkl->cnok", b, u).flatten(2)
            out["weight"] = _gram(g)
        else:
            uu = u.transpose(1, 2) @ u  # (n, L, L)
            bw = (b.reshape(n_cls, n, o, length) @ uu.unsqueeze(0))  # (C, n, out, L)
            out["weight"] = torch.einsum("cnol,dnol->ncd", bw, b)
        del u
    if "bias" in want:
        out["bias"] = _gram(b.sum(3))
    return out


def _bn_blocks(module: nn.Module, a: torch.Tensor, b: torch.Tensor, want: set[str]) -> dict[str, torch.Tensor]:
    shape = [1, -1] + [1] * (a.dim() - 2)
    xhat = (a - module.running_mean.view(shape)) * torch.rsqrt(module.running_var.view(shape) + module.eps)
    n_cls, n = b.shape[0], b.shape[1]
    ch = a.shape[1]
    b = b.reshape(n_cls, n, ch, -1)
    out = {}
    if "weight" in want:
        out["weight"] = _gram((b * xhat.reshape(1, n, ch, -1)).sum(3))
    if "bias" in want:
        out["bias"] = _gram(b.sum(3))
    return out


def hook_grams(
    net: FunctionalNet, x: torch.Tensor, covered: dict[str, tuple[str, str]]
) -> tuple[torch.Tensor, dict[str, torch.Tensor], list[str]]:
    """Logits (n, C) and Gram blocks (n, C, C) of the hook-covered parameters of one chunk.

    Returns
    -------
    z : Tensor (n, C)
    blocks : dict of str to Tensor (n, C, C)
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
        outputs = [records[m][0][1] for m in good]
        n_cls = z.shape[1]
        per_class = []
        with torch.enable_grad():
            for c in range(n_cls):
                grads = torch.autograd.grad(z[:, c].sum(), outputs, retain_graph=c < n_cls - 1)
                per_class.append([g.detach() for g in grads])
        for j, m in enumerate(good):
            b = torch.stack([per_class[c][j] for c in range(n_cls)])  # (C, n, *out)
            for c in range(n_cls):
                per_class[c][j] = None
            a = records[m][0][0]
            module = modules[m]
            if isinstance(module, nn.Linear):
                res = _linear_blocks(a, b, wanted[m])
            elif isinstance(module, nn.Conv2d):
                res = _conv_blocks(module, a, b, wanted[m])
            else:
                res = _bn_blocks(module, a, b, wanted[m])
            del b
            for kind, k in res.items():
                blocks[f"{m}.{kind}" if m else kind] = k
    return z.detach(), blocks, uncovered
