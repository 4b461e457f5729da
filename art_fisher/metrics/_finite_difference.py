"""``method="finite_difference"``: the original algorithm's numbers, batched over samples.

The original code (class ``FISHER_OPERATION`` of Martin & Elster's walkthrough) works on one sample:

- quadratic form: for each parameter tensor ``k``, central differences of the outputs along ``±ε v_k``:
  ``Σ_k Σ_c (Δ_k z_c / 2ε)(Δ_k p_c / 2ε)``;
- sensitivity: the same with the input-gradients of ``z_c`` and ``p_c`` at ``θ ± ε v_k``;
- trace: per class ``c`` and tensor ``k``, backward passes give ``∇θ_k z_c`` and ``∇θ_k p_c`` and it
  sums their products. It contains **no** finite difference; the same per-class products are computed
  here (batched with ``torch.func``), so ``fisher_trace(method="finite_difference")`` equals the exact
  trace up to rounding and ``fd_step`` does not enter it.

Here the parameters are perturbed functionally (``θ ± ε v`` passed to ``functional_call``), never in
place, and ``blockwise=False`` perturbs all selected tensors together (the full form ``vᵀ F v``).
Summing ``Δz`` against ``Δp`` equals summing ``Δ log p`` against ``Δp`` exactly (``Σ_c Δp_c = 0``), so
logits and log-probabilities give identical numbers; a model returning probabilities is differenced
through ``log p``.
"""

from __future__ import annotations

import torch
from torch.func import jacrev, vmap

from art_fisher.metrics._basis import class_reduction
from art_fisher.metrics._engine._network import FunctionalNet


def fd_quadratic_form(
    net: FunctionalNet,
    x: torch.Tensor,
    v: dict[str, torch.Tensor],
    y: torch.Tensor,
    *,
    shared: bool,
    blockwise: bool,
    classes: str,
    fd_step: float,
) -> torch.Tensor:
    """``Σ_groups Σ_c (Δz_c / 2ε)(Δp_c / 2ε)`` per sample, shape (n,)."""
    reduce_classes = class_reduction(classes)

    def shifted(xi, vi, yi, group, sign):
        s = {k: net.base[k] + sign * fd_step * vi[k] for k in group}
        return reduce_classes(net.logits_one(s, xi), yi)

    total = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
    dims = (0, None if shared else 0, 0)
    for g in net.groups(blockwise):
        zp = vmap(lambda xi, vi, yi, g=g: shifted(xi, vi, yi, g, 1.0), in_dims=dims)(x, v, y)
        zm = vmap(lambda xi, vi, yi, g=g: shifted(xi, vi, yi, g, -1.0), in_dims=dims)(x, v, y)
        dz = (zp - zm) / (2 * fd_step)
        dp = (torch.softmax(zp, -1) - torch.softmax(zm, -1)) / (2 * fd_step)
        total = total + (dz * dp).sum(-1)
    return total


def fd_sensitivity(
    net: FunctionalNet,
    x: torch.Tensor,
    v: dict[str, torch.Tensor],
    y: torch.Tensor,
    *,
    shared: bool,
    blockwise: bool,
    classes: str,
    fd_step: float,
) -> torch.Tensor:
    """``Σ_groups Σ_c (Δ∂x z_c / 2ε)(Δ∂x p_c / 2ε)`` per input entry, shape of ``x``."""
    reduce_classes = class_reduction(classes)

    def outputs(xi, vi, yi, group, sign):
        s = {k: net.base[k] + sign * fd_step * vi[k] for k in group}
        z = reduce_classes(net.logits_one(s, xi), yi)
        return z, torch.softmax(z, -1)

    total = torch.zeros_like(x)
    dims = (0, None if shared else 0, 0)
    for g in net.groups(blockwise):
        jac = []
        for sign in (1.0, -1.0):
            f = jacrev(lambda xi, vi, yi, g=g, sign=sign: outputs(xi, vi, yi, g, sign))
            jac.append(vmap(f, in_dims=dims)(x, v, y))  # ((n, C, *xs), (n, C, *xs))
        dz = (jac[0][0] - jac[1][0]) / (2 * fd_step)
        dp = (jac[0][1] - jac[1][1]) / (2 * fd_step)
        total = total + (dz * dp).sum(1)
    return total


def per_class_trace(net: FunctionalNet, x: torch.Tensor) -> torch.Tensor:
    """The original trace: ``Σ_k Σ_c ⟨∇θ_k z_c, ∇θ_k p_c⟩`` per sample, shape (n,)."""

    def outputs(s, xi):
        z = net.logits_one(s, xi)
        return z, torch.softmax(z, -1)

    jz, jp = vmap(jacrev(outputs), in_dims=(None, 0))(net.selected(), x)
    total = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
    for k in net.names:
        total = total + (jz[k] * jp[k]).flatten(1).sum(1)
    return total
