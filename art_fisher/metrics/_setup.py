"""Argument set-up shared by the public metric functions (checks first, then the functional model)."""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import AbstractContextManager

import torch
from torch import nn

from art_fisher import _checks
from art_fisher.metrics._directions import Direction
from art_fisher.metrics._engine._network import FunctionalNet


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
) -> tuple[FunctionalNet, int, float, int | None]:
    """Check the arguments every metric takes; the functional model, class count, step and chunk size.

    Raises TypeError / ValueError (naming the argument) before any computation.
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
    n_classes = _checks.probe_output(model, x, output)
    return FunctionalNet(model, names, output), n_classes, step, chunk


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
