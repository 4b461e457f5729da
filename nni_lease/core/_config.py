"""LeaSE's configuration, written once: :class:`LeaseConfig`.

The one-shot strategy (:class:`nni_lease.LeaSE`), its Lightning module, the multi-trial trial code
(:mod:`nni_lease.multitrial`), the one-shot API (:mod:`nni_lease.oneshot`) and the command line all take
their LeaSE settings from this one frozen dataclass, which checks them when it is built.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal, get_args

import torch

from art_fisher.utils import check_choice, check_int, check_real
from nni_lease._limits import MAX_RATE, MAX_SEED
from nni_lease.core._explain import Norm, Objective, Weighting, check_explanation_arguments

Hypergradient = Literal["first_order", "unrolled"]
#: Accepted values of ``hypergradient``.
HYPERGRADIENTS: tuple[str, ...] = get_args(Hypergradient)


@dataclass(frozen=True)
class LeaseConfig:
    r"""Every LeaSE setting (stages 2-4 of a step and the listener); validated at construction.

    Parameters
    ----------
    gamma : float
        Weight :math:`\gamma \ge 0` of the listener's validation loss in the architecture objective
        :math:`L_e^{val} + \gamma L_a^{val}` (0: the architecture ignores the listener, i.e. DARTS).
    hypergradient : {"first_order", "unrolled"}
        How :math:`L_a^{val}` is differentiated with respect to the architecture (see
        :mod:`nni_lease.core`): ``"first_order"`` holds the explainer's and the listener's weights fixed
        and follows the validation batch's explanation only (an approximation); ``"unrolled"`` follows
        the LeaSE paper's whole chain E′(A) → δ(E′) → W′ → :math:`L_a^{val}` with one virtual step of each network.
    pgd_epsilon, pgd_norm, pgd_steps, pgd_step_size, pgd_random_start, pgd_objective, weighting
        The explanation (:func:`nni_lease.core.pgd_explain`'s ``epsilon``, ``norm``, ``steps``,
        ``step_size``, ``random_start``, ``objective``, ``weighting``; same defaults).
    listener_optimizer : type of torch.optim.Optimizer
        Optimiser class of the listener's weights.
    listener_learning_rate, listener_weight_decay : float
        Its learning rate (> 0) and weight decay (≥ 0).
    unrolled_step_size : float or None
        Step ξ of both virtual steps of ``"unrolled"``; ``None``: each network's own current learning rate.
    seed : int
        Seeds the default listener's initialisation and the explanations' random starts (private
        generators; the global RNG is not used).

    Raises
    ------
    TypeError
        For a value of the wrong type, naming the setting.
    ValueError
        Naming the offending setting, the expected and the received value.

    Examples
    --------
    >>> config = LeaseConfig(gamma=0.5)
    >>> config.explanation_kwargs()["norm"], config.step_size
    ('l2', 0.625)
    >>> LeaseConfig.setting_names()[:3]
    ('gamma', 'hypergradient', 'pgd_epsilon')
    """

    gamma: float = 1.0
    hypergradient: Hypergradient = "first_order"
    pgd_epsilon: float = 0.5
    pgd_norm: Norm = "l2"
    pgd_steps: int = 2
    pgd_step_size: float | None = None
    pgd_random_start: float = 0.25
    pgd_objective: Objective = "predicted_label"
    weighting: Weighting = "reweight"
    listener_optimizer: type[torch.optim.Optimizer] = torch.optim.Adam
    listener_learning_rate: float = 1e-3
    listener_weight_decay: float = 0.0
    unrolled_step_size: float | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        check_real(self.gamma, "gamma", low=0.0, high=MAX_RATE)
        check_choice(self.hypergradient, "hypergradient", Hypergradient)
        check_explanation_arguments(
            epsilon=self.pgd_epsilon,
            step_size=self.pgd_step_size,
            steps=self.pgd_steps,
            norm=self.pgd_norm,
            random_start=self.pgd_random_start,
            objective=self.pgd_objective,
            prefix="pgd_",
        )
        check_choice(self.weighting, "weighting", Weighting)
        optimizer = self.listener_optimizer
        if not (isinstance(optimizer, type) and issubclass(optimizer, torch.optim.Optimizer)):
            raise TypeError(f"listener_optimizer must be a torch.optim.Optimizer class; got {optimizer!r}.")
        check_real(self.listener_learning_rate, "listener_learning_rate", low=0.0, high=MAX_RATE, low_open=True)
        check_real(self.listener_weight_decay, "listener_weight_decay", low=0.0)
        check_real(self.unrolled_step_size, "unrolled_step_size", low=0.0, high=MAX_RATE, low_open=True, optional=True)
        check_int(self.seed, "seed", low=0, high=MAX_SEED)
        object.__setattr__(self, "gamma", float(self.gamma))
        object.__setattr__(self, "pgd_epsilon", float(self.pgd_epsilon))

    @classmethod
    def setting_names(cls) -> tuple[str, ...]:
        """Names of all settings (the fields), in declaration order."""
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def from_settings(cls, base: LeaseConfig | None = None, **settings: Any) -> LeaseConfig:
        """``base`` (default: the defaults) with ``settings`` replaced.

        Raises
        ------
        ValueError
            For an unknown setting name (listing the known ones) or a bad value.
        """
        unknown = sorted(set(settings) - set(cls.setting_names()))
        if unknown:
            raise ValueError(f"unknown LeaSE setting(s) {unknown}; the settings are {list(cls.setting_names())}.")
        return dataclasses.replace(base if base is not None else cls(), **settings)

    @property
    def step_size(self) -> float:
        """The PGD step actually used: ``pgd_step_size`` or ``2.5 * pgd_epsilon / pgd_steps``."""
        if self.pgd_step_size is not None:
            return float(self.pgd_step_size)
        return 2.5 * self.pgd_epsilon / self.pgd_steps

    def make_listener_optimizer(self, parameters: Iterable[torch.nn.Parameter]) -> torch.optim.Optimizer:
        """``listener_optimizer`` over ``parameters`` with ``listener_learning_rate`` and ``listener_weight_decay``."""
        # Every optimiser class takes lr and weight_decay; the base class's own signature does not say so.
        make: Callable[..., torch.optim.Optimizer] = self.listener_optimizer
        return make(parameters, lr=self.listener_learning_rate, weight_decay=self.listener_weight_decay)

    def explanation_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of :func:`nni_lease.core.pgd_explain` for these settings."""
        return {
            "epsilon": self.pgd_epsilon,
            "norm": self.pgd_norm,
            "steps": self.pgd_steps,
            "step_size": self.step_size,
            "random_start": self.pgd_random_start,
            "objective": self.pgd_objective,
            "weighting": self.weighting,
        }

    def as_dict(self) -> dict[str, Any]:
        """The settings as JSON-ready values (the optimiser as ``module.QualName``; the PGD step resolved)."""
        out = dataclasses.asdict(self)
        opt = self.listener_optimizer
        out["listener_optimizer"] = f"{opt.__module__}.{opt.__qualname__}"
        out["pgd_step_size"] = self.step_size
        return out
