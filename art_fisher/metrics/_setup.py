"""Argument set-up shared by the public metric functions (checks first, then the functional model)."""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import AbstractContextManager
from typing import NamedTuple, cast

import torch
from torch import nn

from art_fisher import _checks
from art_fisher.metrics._directions import Direction
from art_fisher.metrics._engine._network import FunctionalNet
from art_fisher.metrics._engine._recorder import HookCoverage, Probe, find_coverage, probe_forward


class Setup(NamedTuple):
    """What :func:`setup` gives a metric (unpacks in this order).

    Attributes
    ----------
    net : FunctionalNet
    n_classes : int
    fd_step : float
    chunk_size : int or None
    coverage : HookCoverage or None
        The hook engine's coverage from the probe pass (``method="exact"``), else None.
    """

    net: FunctionalNet
    n_classes: int
    fd_step: float
    chunk_size: int | None
    coverage: HookCoverage | None


def setup(
    model: nn.Module,
    x: torch.Tensor,
    *,
    output: str,
    params: Iterable[str] | None,
    method: str = "exact",
    fd_step: float = 1e-3,
    chunk_size: int | None = None,
    create_graph: bool = False,
    first_row_in_chunks: bool = False,
) -> Setup:
    """Check the arguments every metric takes; the functional model, class count, step, chunk size and coverage.

    Raises TypeError / ValueError (naming the argument) before any computation. With ``method="exact"``
    the output probe's call of the first sample is the hook engine's probe pass (one call for both).
    ``first_row_in_chunks``: the metric runs the hook engine on chunks of ``x`` in order, so the check of
    the first sample's row in a batch is left to the first chunk's forward pass
    (:class:`~art_fisher._checks.FirstRowCheck`, run by
    :func:`~art_fisher.metrics._engine._recorder.recorded_forward`) instead of a call of its own.
    """
    _checks.check_model(model)
    check_materialised(model)
    _checks.check_x(x)
    _checks.check_choice("output", output, _checks.OUTPUTS)
    _checks.check_choice("method", method, _checks.METHODS)
    step = _checks.check_fd_step(fd_step)
    chunk = _checks.check_chunk_size(chunk_size)
    _checks.check_bool("create_graph", create_graph)
    if create_graph and method != "exact":
        raise ValueError(f"create_graph=True needs method='exact'; got method={method!r}.")
    names = _checks.check_params(model, params)
    _checks.check_model_matches_x(model, names, x)
    net = FunctionalNet(model, names, output)
    if method != "exact":
        return Setup(net, _checks.probe_output(model, x, output), step, chunk, None)
    n_classes, coverage = probe_with_coverage(net, x, first_row_in_chunks=first_row_in_chunks)
    return Setup(net, n_classes, step, chunk, coverage)


def probe_with_coverage(net: FunctionalNet, x: torch.Tensor, *, first_row_in_chunks: bool) -> tuple[int, HookCoverage]:
    """The output checks (:func:`~art_fisher._checks.probe_output`) and the hook coverage from one probe pass.

    The class count and the coverage. With ``first_row_in_chunks`` (the caller runs the hook engine on
    chunks of ``x`` in order) the first row's batch check is left to the first chunk where the coverage
    has hooks.
    """
    model = net.model
    probes: list[Probe] = []

    def probe_call() -> object:
        probes.append(probe_forward(net, x))
        return probes[-1].out

    n_classes = _checks.probe_output(model, x, net.output, single=probe_call, batch=False)
    probe = probes[-1]
    coverage = find_coverage(net, x, probe)
    if first_row_in_chunks and coverage.rules and x.shape[0] > 1:
        coverage.first_row_check = _checks.FirstRowCheck(
            model, x[:4].detach(), probe.z.detach(), lambda xb: net.logits(net.selected(), xb)
        )
    else:
        _checks.check_first_row(model, x, cast("torch.Tensor", probe.out).detach(), model)
    return n_classes, coverage


def check_materialised(model: nn.Module) -> None:
    """Raise ValueError for a model with lazy modules not yet initialised (``nn.LazyLinear`` before its first call).

    Their first forward pass would create the parameters, changing the user's model and computing the
    metrics of freshly drawn weights.
    """
    lazy = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if nn.parameter.is_lazy(t)]
    if lazy:
        raise ValueError(
            f"model has uninitialised lazy parameters or buffers ({', '.join(lazy[:3])}"
            f"{', ...' if len(lazy) > 3 else ''}); run one forward pass of the model first, so that they exist."
        )


def grad_mode(create_graph: bool) -> AbstractContextManager:
    """Autograd on while the result must stay differentiable in ``x``, off otherwise."""
    return torch.enable_grad() if create_graph else torch.no_grad()


def input_for(x: torch.Tensor, create_graph: bool) -> torch.Tensor:
    """``x`` itself when the result keeps its graph, else detached."""
    return x if create_graph else x.detach()


def check_direction_args(
    direction: object,
    y: object,
    net: FunctionalNet,
    x: torch.Tensor,
    n_classes: int,
    *,
    allow_top: bool,
    blockwise: object,
    normalize: object,
    classes: object,
) -> tuple[Direction, torch.Tensor | None]:
    """Check the options of the directional metrics; the checked direction and labels (or None)."""
    _checks.check_bool("blockwise", blockwise)
    _checks.check_bool("normalize", normalize)
    _checks.check_choice("classes", classes, _checks.CLASSES)
    direction = _checks.check_direction(direction, net.model, net.names, x, allow_top=allow_top)
    if isinstance(direction, str) and direction == "label":
        if y is None:
            raise ValueError('direction="label" needs y (integer labels of shape (N,)); got y=None.')
        yt = _checks.check_y(y, x.shape[0], n_classes, x.device)
        if net.output != "logits":  # a zero probability is an exact -inf logit only through log p
            _checks.check_label_probabilities(net, x.detach(), yt)
        return direction, yt
    if y is not None:
        raise ValueError(
            f"y is only used with direction='label'; got y together with direction={direction!r}"
            if isinstance(direction, str)
            else "y is only used with direction='label'; got y together with a tensor direction."
        )
    return direction, None
