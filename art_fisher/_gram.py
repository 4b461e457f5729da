"""Per-sample, per-parameter-tensor Gram matrices of the logits' Jacobian.

For one sample with logits ``z`` (C,) and a parameter tensor ``θ_k``, ``J_k = ∂z/∂θ_k`` (C × P_k) and
its Gram matrix ``K_k = J_k J_kᵀ`` (C × C). Every exact metric in :mod:`art_fisher.metrics` is a
closed-form function of the logits and these C × C blocks, so the parameter space is never stored
whole.

Two engines compute the blocks:

- ``"func"``: per-sample Jacobians with ``torch.func`` (``vmap`` over samples of ``jacrev``); works for
  any module ``torch.func`` can differentiate. Memory C × P_k per sample and tensor.
- ``"hooks"`` (see :mod:`art_fisher._layer_grams`): forward hooks keep each Linear / Conv / BatchNorm
  layer's input, one batched backward per class (or per basis column) gives the layer's
  output-gradients, and the per-sample Gram follows from them without materialising per-sample
  gradients where that is cheaper (the "ghost norm" trick). Parameters it cannot handle go to the
  ``"func"`` engine.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.func import jacrev, jvp, vmap

from art_fisher._functional import FunctionalNet
from art_fisher._layer_grams import hook_directional, hook_grams, plan

# Bytes of per-sample Jacobians held at once by the "func" engine when no batch size is given.
_FUNC_BUDGET = 256 * 2**20
# Bytes of per-column output-gradients (chunk × columns × the covered layers' outputs) held at once by
# the hook engine when no batch size is given; small enough to stay cache-friendly on CPU (on the
# CIFAR-size benchmark model this gives 4 samples per chunk, which ran 1.6x faster than 32).
_HOOK_BUDGET = 48 * 2**20
_HOOK_MAX_CHUNK = 256


def hook_chunk(
    net: FunctionalNet, x: torch.Tensor, covered: dict[str, tuple[str, str]], n_cols: int, budget: int = _HOOK_BUDGET
) -> int:
    """Samples per chunk of the hook engine: ``budget`` bytes over the per-sample output-gradients.

    The covered layers' output sizes come from one forward pass of the first sample.
    """
    modules = dict(net.model.named_modules())
    sizes: list[int] = []
    handles = [
        modules[m].register_forward_hook(lambda _mod, _inp, out: sizes.append(out[0].numel()))
        for m in {m for m, _k in covered.values()}
    ]
    try:
        with torch.no_grad():
            net.logits(net.selected(), x[:1])
    finally:
        for h in handles:
            h.remove()
    per_sample = max(1, n_cols * sum(sizes) * x.element_size())
    return int(max(1, min(_HOOK_MAX_CHUNK, budget // per_sample)))


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


class _ChunkBasis:
    """``basis_of_z`` evaluated once per chunk, so the hook and ``torch.func`` parts use the same ``W``."""

    def __init__(self, basis_of_z: Callable[[torch.Tensor], torch.Tensor] | None) -> None:
        self.basis_of_z = basis_of_z
        self.w: torch.Tensor | None = None

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        if self.w is None:
            self.w = self.basis_of_z(z)
        return self.w

    @property
    def hook_arg(self):
        """What the hook engine takes: this object, or None for the identity basis."""
        return None if self.basis_of_z is None else self

    def grams(self, k: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """``Wᵀ K W`` for blocks ``k`` (n, B, C, C)."""
        if self.basis_of_z is None:
            return k
        w = self(z)
        return torch.einsum("nca,nbcd,ndf->nbaf", w, k, w)

    def vector(self, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """``Wᵀ t`` for ``t`` (n, C)."""
        return t if self.basis_of_z is None else (self(z).transpose(1, 2) @ t.unsqueeze(-1)).squeeze(-1)


def _chunk_size(net, x, covered, rest, n_classes: int, batch_size: int | None) -> int:
    if batch_size:
        return batch_size
    if covered:
        return hook_chunk(net, x, covered, n_classes)
    return func_chunk(net, n_classes, rest, x.element_size())


def block_grams(
    net: FunctionalNet,
    x: torch.Tensor,
    n_classes: int,
    *,
    batch_size: int | None = None,
    engine: str = "auto",
    basis_of_z: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (N, C) and per-tensor Gram blocks (N, B, C', C') of all samples, chunk by chunk.

    Parameters
    ----------
    net : FunctionalNet
    x : Tensor (N, ...)
    n_classes : int
    batch_size : int, optional
        Samples per chunk; default: :func:`hook_chunk` for the hook engine, a memory budget for
        ``torch.func``.
    engine : {"auto", "func"}
        ``"auto"``: hooks where they apply, ``torch.func`` for the rest; ``"func"``: ``torch.func`` only.
    basis_of_z : callable, optional
        Maps a chunk's logits (n, C) to a basis ``W`` (n, C, C'); the blocks are then ``Wᵀ K_k W`` and
        the hook engine needs ``C'`` backward passes instead of ``C``. Default: the identity.
    """
    covered, rest = plan(net) if engine == "auto" else ({}, list(net.names))
    size = _chunk_size(net, x, covered, rest, n_classes, batch_size)
    zs, ks = [], []
    for start in range(0, x.shape[0], size):
        xb = x[start : start + size]
        basis = _ChunkBasis(basis_of_z)
        blocks: dict[str, torch.Tensor] = {}
        todo = list(rest)
        z = None
        if covered:
            z, blocks, uncovered = hook_grams(net, xb, covered, basis.hook_arg)
            todo += uncovered
        if todo:
            inner = batch_size or func_chunk(net, n_classes, todo, x.element_size())
            parts = [func_grams(net, xb[i : i + inner], todo) for i in range(0, xb.shape[0], inner)]
            z = torch.cat([p[0] for p in parts]) if z is None else z
            k = basis.grams(torch.cat([p[1] for p in parts]), z)
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
    basis_of_z: Callable[[torch.Tensor], torch.Tensor] | None = None,
    batch_size: int | None = None,
    engine: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Logits (N, C), ``Wᵀ t_k`` with ``t_k = J_k v_k`` (N, B, C') for every parameter tensor ``k``.

    Either ``r_of_z`` maps the logits (n, C) to coefficients ``r`` (n, C) of per-sample directions
    ``v = Jᵀ r`` (then ``t_k = K_k r``, obtained without forming ``K_k`` where hooks apply), or ``v``
    is one fixed direction (parameter name → tensor). ``basis_of_z`` maps the logits to ``W``
    (n, C, C'; default the identity). Also returns ``r`` (N, C) and ``rᵀ t_k`` (N, B) (both None
    without ``r_of_z``).
    """
    covered, rest = plan(net) if engine == "auto" else ({}, list(net.names))
    size = _chunk_size(net, x, covered, rest, n_classes, batch_size)
    zs, ts, rs, rts = [], [], [], []
    for start in range(0, x.shape[0], size):
        xb = x[start : start + size]
        basis = _ChunkBasis(basis_of_z)
        blocks: dict[str, torch.Tensor] = {}
        rt: dict[str, torch.Tensor] = {}
        todo = list(rest)
        z, r = None, None
        if covered:
            z, blocks, uncovered, r, rt = hook_directional(net, xb, covered, r_of_z, v, basis.hook_arg)
            todo += uncovered
        if todo and r_of_z is not None:
            inner = batch_size or func_chunk(net, n_classes, todo, x.element_size())
            parts = [func_grams(net, xb[i : i + inner], todo) for i in range(0, xb.shape[0], inner)]
            z = torch.cat([p[0] for p in parts]) if z is None else z
            k = torch.cat([p[1] for p in parts])
            r = r_of_z(z) if r is None else r
            for j, name in enumerate(todo):
                t_k = (k[:, j] @ r.unsqueeze(-1)).squeeze(-1)  # (n, C)
                rt[name] = (r * t_k).sum(-1)
                blocks[name] = basis.vector(t_k, z)
        elif todo:
            for name in todo:
                z, t_k = jvp(lambda s: net.logits(s, xb), ({name: net.base[name]},), ({name: v[name]},))
                blocks[name] = basis.vector(t_k, z.detach())
        if z is None:
            z = net.logits(net.selected(), xb)
        if r is None and r_of_z is not None:
            r = r_of_z(z)
        zs.append(z)
        ts.append(torch.stack([blocks[name] for name in net.names], dim=1))
        rs.append(r)
        if r_of_z is not None:
            rts.append(torch.stack([rt[name] for name in net.names], dim=1))
    if r_of_z is None:
        return torch.cat(zs), torch.cat(ts), None, None
    return torch.cat(zs), torch.cat(ts), torch.cat(rs), torch.cat(rts)
