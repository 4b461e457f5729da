"""Fisher information sensitivity (FIS) and the parameter-space work it needs.

For one sample with logits ``z(x)`` (C,), ``p = softmax(z)`` and a parameter direction ``v`` held fixed
(not differentiated with respect to ``x``), let ``t(x) = J(x) v`` be the logits' directional derivative
along ``v``. Then ``vᵀ∇θ log p = b = t − (pᵀt) 1`` and ``vᵀ∇θ p = a = p ⊙ b``, and the sensitivity of
input dimension ``i`` is

    FIS_i = Σ_c ∂x_i a_c · ∂x_i b_c,

which needs only ``∂x z`` and ``∂x t`` (C × D each): reverse mode over ``x`` of a forward-mode JVP
over the parameters, vmapped over samples. The blockwise form sums the same expression over parameter
tensors ``k`` with ``v`` restricted to tensor ``k`` (``t_k = J_k v_k``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.func import grad, jacrev, jvp, vmap

from art_fisher._functional import FunctionalNet, predicted_vs_rest


def sample_directions(
    net: FunctionalNet, x: torch.Tensor, r: torch.Tensor, *, normalize: bool
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Per-sample directions ``v_n = J_nᵀ r_n`` (``∇θ (r_nᵀ z_n)`` with ``r_n`` fixed), optionally unit length.

    Parameters
    ----------
    net : FunctionalNet
        The model.
    x : Tensor of shape (n, ...)
        Inputs.
    r : Tensor of shape (n, C)
        Coefficients over the logits (``e_y − p`` gives ``v = ∇θ log p_y``).
    normalize : bool
        Divide each ``v_n`` by its norm over all selected parameters (zero stays zero).

    Returns
    -------
    v : dict of str to Tensor of shape (n, *param.shape)
    sq_norm : Tensor of shape (n,)
        ``‖v_n‖²`` before normalisation.
    """

    def score(s: dict[str, torch.Tensor], xi: torch.Tensor, ri: torch.Tensor) -> torch.Tensor:
        return (net.logits_one(s, xi) * ri).sum()

    v = vmap(grad(score), in_dims=(None, 0, 0))(net.selected(), x, r)
    return unit_length(v) if normalize else (v, squared_norm(v))


def squared_norm(v: dict[str, torch.Tensor]) -> torch.Tensor:
    """``‖v_n‖²`` (n,) over all tensors of per-sample directions (name → (n, *shape))."""
    return sum(t.flatten(1).pow(2).sum(1) for t in v.values())


def unit_length(v: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Per-sample directions scaled to unit length over all tensors (zero stays zero), and ``‖v_n‖²``."""
    sq = squared_norm(v)
    scale = torch.where(sq > 0, sq.rsqrt(), torch.zeros_like(sq))
    return {k: t * scale.view(-1, *([1] * (t.dim() - 1))) for k, t in v.items()}, sq


def _reducer(classes: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    if classes == "predicted_vs_rest":
        return predicted_vs_rest
    return lambda z, _y: z


def fis_from_jacobians(
    z: torch.Tensor, t: torch.Tensor, jz: torch.Tensor, jt: torch.Tensor
) -> torch.Tensor:
    """FIS from logits, their directional derivatives and both input-Jacobians.

    Parameters
    ----------
    z : Tensor (n, C)
    t : Tensor (n, G, C)
        ``J_g v_g`` for each of ``G`` blocks (``G = 1`` for the full form).
    jz : Tensor (n, C, D)
        ``∂x z``.
    jt : Tensor (n, G, C, D)
        ``∂x t``.

    Returns
    -------
    Tensor (n, D)
        ``Σ_g Σ_c ∂x a_c ∂x b_c``.
    """
    p = torch.softmax(z, dim=-1)  # (n, C)
    dp = p.unsqueeze(-1) * (jz - torch.einsum("nc,ncd->nd", p, jz).unsqueeze(1))  # (n, C, D)
    b = t - torch.einsum("ngc,nc->ng", t, p).unsqueeze(-1)  # (n, G, C)
    dpt = torch.einsum("ngcd,nc->ngd", jt, p) + torch.einsum("ngc,ncd->ngd", t, dp)
    db = jt - dpt.unsqueeze(2)  # (n, G, C, D)
    da = dp.unsqueeze(1) * b.unsqueeze(-1) + p[:, None, :, None] * db
    return (da * db).sum(dim=(1, 2))


def exact_sensitivity(
    net: FunctionalNet,
    x: torch.Tensor,
    v: dict[str, torch.Tensor],
    y: torch.Tensor,
    *,
    shared: bool,
    blockwise: bool,
    classes: str,
) -> torch.Tensor:
    """Exact FIS of one chunk.

    Parameters
    ----------
    net : FunctionalNet
    x : Tensor (n, ...)
    v : dict of str to Tensor
        Directions, (n, *shape) per parameter, or (*shape) when ``shared``.
    y : Tensor (n,)
        Class used by the ``"predicted_vs_rest"`` reduction.
    shared, blockwise : bool
    classes : {"all", "predicted_vs_rest"}

    Returns
    -------
    Tensor of x's shape
    """
    reduce = _reducer(classes)
    groups = [[k] for k in net.names] if blockwise else [net.names]

    def outs(xi: torch.Tensor, vi: dict[str, torch.Tensor], yi: torch.Tensor):
        def zf(s: dict[str, torch.Tensor]) -> torch.Tensor:
            return reduce(net.logits_one(s, xi), yi)

        ts = []
        for g in groups:
            z, t = jvp(zf, ({k: net.base[k] for k in g},), ({k: vi[k] for k in g},))
            ts.append(t)
        tt = torch.stack(ts)
        return (z, tt), (z, tt)

    def one(xi, vi, yi):
        (jz, jt), (z, t) = jacrev(outs, has_aux=True)(xi, vi, yi)
        return z, t, jz.flatten(1), jt.flatten(2)

    z, t, jz, jt = vmap(one, in_dims=(0, None if shared else 0, 0))(x, v, y)
    return fis_from_jacobians(z, t, jz, jt).view_as(x)
