"""Per-sample, per-parameter-tensor Gram matrices of the logits' Jacobian.

For one sample with logits ``z`` (C,) and a parameter tensor ``θ_k``, ``J_k = ∂z/∂θ_k`` (C × P_k) and
its Gram matrix ``K_k = J_k J_kᵀ`` (C × C). Every exact metric in :mod:`art_fisher.metrics` is a
closed-form function of the logits and these C × C blocks, so the parameter space is never stored
whole.

Two engines compute the blocks:

- ``"func"``: per-sample Jacobians with ``torch.func`` (``vmap`` over samples of ``jacrev``); works for
  any module ``torch.func`` can differentiate. Memory C × P_k per sample and tensor.
- ``"hooks"`` (see :mod:`art_fisher._layer_grams`): forward hooks keep each Linear / Conv / BatchNorm
  layer's input, one batched backward per class gives the layer's output-gradients, and the per-sample
  Gram follows from them without materialising per-sample gradients where that is cheaper (the
  "ghost norm" trick). Parameters it cannot handle go to the ``"func"`` engine.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.func import jacrev, jvp, vmap

from art_fisher._functional import FunctionalNet
from art_fisher._layer_grams import hook_directional, hook_grams, plan

# Bytes of per-sample Jacobians held at once by the "func" engine when no batch size is given.
_FUNC_BUDGET = 256 * 2**20
# Samples per chunk of the hook engine when no batch size is given.
_HOOK_CHUNK = 32


def func_chunk(net: FunctionalNet, n_classes: int, names: list[str], itemsize: int) -> int:
    """A chunk size that keeps the ``"func"`` engine's per-sample Jacobians within its budget."""
    sizes = sum(net.base[n].numel() for n in names)
    per_sample = max(1, 3 * n_classes * sizes * itemsize)
    return int(max(1, min(256, _FUNC_BUDGET // per_sample)))


def func_grams(net: FunctionalNet, x: torch.Tensor, names: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (n, C) and blocks (n, len(names), C, C) of one chunk with ``torch.func``."""
    sel = {k: net.base[k] for k in names}

    def one(s: dict[str, torch.Tensor], xi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = net.logits_one(s, xi)
        return z, z

    jac, z = vmap(jacrev(one, has_aux=True), in_dims=(None, 0))(sel, x)
    blocks = []
    for k in names:
        jk = jac[k].flatten(2)  # (n, C, P_k)
        blocks.append(torch.bmm(jk, jk.transpose(1, 2)))
    return z, torch.stack(blocks, dim=1)


def block_grams(
    net: FunctionalNet,
    x: torch.Tensor,
    n_classes: int,
    *,
    batch_size: int | None = None,
    engine: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (N, C) and per-tensor Gram blocks (N, B, C, C) of all samples, chunk by chunk.

    Parameters
    ----------
    net : FunctionalNet
    x : Tensor (N, ...)
    n_classes : int
    batch_size : int, optional
        Samples per chunk; default: ``_HOOK_CHUNK`` for the hook engine, a memory budget for
        ``torch.func``.
    engine : {"auto", "func"}
        ``"auto"``: hooks where they apply, ``torch.func`` for the rest; ``"func"``: ``torch.func`` only.
    """
    covered, rest = plan(net) if engine == "auto" else ({}, list(net.names))
    if covered:
        size = batch_size or _HOOK_CHUNK
    else:
        size = batch_size or func_chunk(net, n_classes, rest, x.element_size())
    zs, ks = [], []
    for start in range(0, x.shape[0], size):
        xb = x[start : start + size]
        blocks: dict[str, torch.Tensor] = {}
        todo = list(rest)
        z = None
        if covered:
            z, blocks, uncovered = hook_grams(net, xb, covered)
            todo += uncovered
        if todo:
            inner = batch_size or func_chunk(net, n_classes, todo, x.element_size())
            parts = [func_grams(net, xb[i : i + inner], todo) for i in range(0, xb.shape[0], inner)]
            z = torch.cat([p[0] for p in parts])
            k = torch.cat([p[1] for p in parts])
            blocks.update({name: k[:, j] for j, name in enumerate(todo)})
        zs.append(z)
        ks.append(torch.stack([blocks[name] for name in net.names], dim=1))
    return torch.cat(zs), torch.cat(ks)


def block_directional(
    net: FunctionalNet,
    x: torch.Tensor,
    n_classes: int,
    *,
    r_of_z: Callable[[torch.Tensor], torch.Tensor] | None = None,
    v: dict[str, torch.Tensor] | None = None,
    batch_size: int | None = None,
    engine: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Logits (N, C) and ``t_k = J_k v_k`` (N, B, C) for every parameter tensor ``k``.

    Either ``r_of_z`` maps the logits (n, C) to coefficients ``r`` (n, C) of per-sample directions
    ``v = Jᵀ r`` (then ``t_k = K_k r``, obtained without forming ``K_k`` where hooks apply), or ``v``
    is one fixed direction (parameter name → tensor). Also returns ``r`` (N, C) (or None).
    """
    covered, rest = plan(net) if engine == "auto" else ({}, list(net.names))
    size = batch_size or (_HOOK_CHUNK if covered else func_chunk(net, n_classes, rest, x.element_size()))
    zs, ts, rs = [], [], []
    for start in range(0, x.shape[0], size):
        xb = x[start : start + size]
        blocks: dict[str, torch.Tensor] = {}
        todo = list(rest)
        z, r = None, None
        if covered:
            z, blocks, uncovered, r = hook_directional(net, xb, covered, r_of_z, v)
            todo += uncovered
        if todo and r_of_z is not None:
            inner = batch_size or func_chunk(net, n_classes, todo, x.element_size())
            parts = [func_grams(net, xb[i : i + inner], todo) for i in range(0, xb.shape[0], inner)]
            z = torch.cat([p[0] for p in parts])
            k = torch.cat([p[1] for p in parts])
            r = r_of_z(z) if r is None else r
            blocks.update({name: k[:, j] @ r.unsqueeze(-1) for j, name in enumerate(todo)})
            blocks = {name: t.squeeze(-1) if t.dim() == 3 else t for name, t in blocks.items()}
        elif todo:
            for name in todo:
                z, blocks[name] = jvp(lambda s: net.logits(s, xb), ({name: net.base[name]},), ({name: v[name]},))
        if z is None:
            z = net.logits(net.selected(), xb)
        if r is None and r_of_z is not None:
            r = r_of_z(z)
        zs.append(z)
        ts.append(torch.stack([blocks[name] for name in net.names], dim=1))
        rs.append(r)
    return torch.cat(zs), torch.cat(ts), None if r_of_z is None else torch.cat(rs)
