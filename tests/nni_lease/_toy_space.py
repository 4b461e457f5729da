"""A toy model space and evaluators for the multi-trial tests (importable by NNI trial processes)."""

from __future__ import annotations

import nni
import torch
from nni.nas.nn.pytorch import InputChoice, LayerChoice, ModelSpace

#: LeaSE-style objective (lower is better) of each candidate of the ``op`` choice; trials report its
#: negation as ``default`` (NNI's convention: a larger metric is better).
OBJECTIVES = {"identity": 1.0, "relu": 0.2, "tanh": 0.6}


class ToySpace(ModelSpace):
    """``op`` picks one of three activations; ``inp`` is an ``InputChoice(n_chosen=1)`` over two inputs."""

    def __init__(self) -> None:
        super().__init__()
        self.op = LayerChoice(
            {"identity": torch.nn.Identity(), "relu": torch.nn.ReLU(), "tanh": torch.nn.Tanh()}, label="op"
        )
        self.inp = InputChoice(2, n_chosen=1, label="inp")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(self.inp([x, -x]))


def op_name(model: torch.nn.Module) -> str:
    return {torch.nn.Identity: "identity", torch.nn.ReLU: "relu", torch.nn.Tanh: "tanh"}[type(model.op)]


def evaluate_toy(model: torch.nn.Module, fail_op: str = "") -> None:
    """Report minus the fixed objective of the chosen op (+0.5 objective for input 1); raise for ``fail_op``."""
    name = op_name(model)
    if name == fail_op:
        raise RuntimeError(f"simulated crash for {name}")
    nni.report_intermediate_result({"default": -(OBJECTIVES[name] + 1.0)})
    x = torch.ones(1)
    extra = 0.0 if float(model(x)[0]) == float(model.op(x)[0]) else 0.5  # input 1 (-x) costs 0.5
    nni.report_final_result({"default": -(OBJECTIVES[name] + extra), "objective": OBJECTIVES[name] + extra})


class _Dead(torch.nn.Module):
    """Constant zero logits: an explainer that cannot learn (it still has parameters for the optimiser)."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.flatten(1)) * 0.0


class DigitsToySpace(ModelSpace):
    """Explainers for 8×8 digits: ``op`` is a dead constant classifier or a linear one (clearly better)."""

    def __init__(self) -> None:
        super().__init__()
        self.op = LayerChoice(
            {"dead": _Dead(), "linear": torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))}, label="op"
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)
