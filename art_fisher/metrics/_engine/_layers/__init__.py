"""Per-layer rules of the hook engine, one module per layer type (as BackPACK's module extensions).

Each rule is a :class:`~art_fisher.metrics._engine._layers._base.LayerRule` subclass
(:mod:`~art_fisher.metrics._engine._layers._base` says what a rule computes). Adding a layer type means
adding one module with such a subclass and listing it in :data:`RULES`.
"""

from __future__ import annotations

import torch
from torch import nn

from art_fisher.metrics._engine._layers._base import FlatGrad, LayerRule, gram
from art_fisher.metrics._engine._layers._batchnorm import BatchNormRule
from art_fisher.metrics._engine._layers._conv2d import Conv2dRule
from art_fisher.metrics._engine._layers._layernorm import LayerNormRule
from art_fisher.metrics._engine._layers._linear import LinearRule

__all__ = [
    "RULES",
    "BatchNormRule",
    "Conv2dRule",
    "LayerNormRule",
    "LayerRule",
    "LinearRule",
    "FlatGrad",
    "gram",
    "is_candidate",
    "rule_for",
]

#: The layer types the hook engine handles; every other parameter goes through ``torch.func``.
RULES: tuple[type[LayerRule], ...] = (LinearRule, Conv2dRule, BatchNormRule, LayerNormRule)


def rule_for(module: nn.Module, a: torch.Tensor, out: torch.Tensor) -> type[LayerRule] | None:
    """The rule class for ``module`` called on ``a`` with output ``out``, or None (never raises)."""
    for rule in RULES:
        if rule.supports(module, a, out):
            return rule
    return None


def is_candidate(module: nn.Module) -> bool:
    """Whether some rule may apply to ``module`` (decided finally on its recorded input)."""
    return any(isinstance(module, rule.module_types) for rule in RULES)
