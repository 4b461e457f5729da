"""The parameter direction ``v`` of the quadratic form and the sensitivity.

A direction is either named — ``"predicted"`` / ``"label"``: ``v = ∇θ log p_y = Jᵀ r`` with the
coefficients ``r = e_y − p`` over the logits, per sample — or one fixed tensor per selected parameter.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Sequence

import torch
from torch.func import grad, vmap

from art_fisher.metrics._basis import complement
from art_fisher.metrics._engine._network import FunctionalNet

Direction = str | Sequence[torch.Tensor]


def class_of(direction: Direction, z: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
    """The class ``y`` of the direction (the label, or the predicted class) for logits ``z`` (n, C)."""
    if isinstance(direction, str) and direction == "label":
        if y is None:
            raise ValueError("direction='label' needs the labels y; got y=None.")
        return y
    return z.argmax(-1)


def coefficients(z: torch.Tensor, cls: torch.Tensor) -> torch.Tensor:
    """``r = e_y − p`` (n, C): ``v = Jᵀ r = ∇θ log p_y`` (``1 − p_y`` by ``complement``)."""
    p = torch.softmax(z, -1)
    own = torch.nn.functional.one_hot(cls, z.shape[-1]).bool()
    return torch.where(own, complement(p), -p)


def squared_norm(v: dict[str, torch.Tensor]) -> torch.Tensor:
    """``‖v_n‖²`` (n,) over all tensors of per-sample directions (name → (n, *shape))."""
    return functools.reduce(operator.add, (t.flatten(1).pow(2).sum(1) for t in v.values()))


def unit_length(v: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Per-sample directions scaled to unit length over all tensors (zero stays zero), and ``‖v_n‖²``."""
    sq = squared_norm(v)
    scale = torch.where(sq > 0, sq.rsqrt(), torch.zeros_like(sq))
    return {k: t * scale.view(-1, *([1] * (t.dim() - 1))) for k, t in v.items()}, sq


def sample_directions(
    net: FunctionalNet, x: torch.Tensor, r: torch.Tensor, *, normalize: bool
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Per-sample directions ``v_n = J_nᵀ r_n`` (``∇θ (r_nᵀ z_n)`` with ``r_n`` fixed), optionally unit length.

    Parameters
    ----------
    net : FunctionalNet
    x : Tensor of shape (n, ...)
    r : Tensor of shape (n, C)
        Coefficients over the logits.
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


def fixed_direction(names: list[str], direction: Sequence[torch.Tensor], normalize: bool) -> dict[str, torch.Tensor]:
    """A user direction (one tensor per selected parameter) by name, optionally of unit length."""
    v = dict(zip(names, direction, strict=True))
    if normalize:
        norm = torch.sqrt(functools.reduce(operator.add, (t.pow(2).sum() for t in v.values())))
        v = {k: t / norm for k, t in v.items()}
    return v


def directions_of(
    net: FunctionalNet, x: torch.Tensor, z: torch.Tensor, cls: torch.Tensor, direction: Direction, normalize: bool
) -> tuple[dict[str, torch.Tensor], bool]:
    """Directions per sample (``∇θ log p_cls``, via ``torch.func``) or the fixed user direction; and whether shared."""
    if isinstance(direction, str):
        v, _sq = sample_directions(net, x, coefficients(z, cls), normalize=normalize)
        return v, False
    return fixed_direction(net.names, direction, normalize), True
