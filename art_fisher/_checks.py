"""Argument validation for :mod:`art_fisher.metrics` (everything is checked before any work).

One check may wait for the first chunk's forward pass, the first piece of work: whether the first
sample's output is its row in a batch (:class:`FirstRowCheck`), so that it costs no call of its own.

The checks of plain values (integers, reals, choices, booleans) are :mod:`art_fisher.utils`'s; this module
adds what is particular to a model and its inputs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from art_fisher import utils as validation

OUTPUTS = ("logits", "log_probs", "probs")
METHODS = ("exact", "finite_difference")
DIRECTIONS = ("predicted", "label", "top_eigenvector")
CLASSES = ("all", "predicted_vs_rest")


def _type_name(value: object) -> str:
    return type(value).__name__


def check_choice(name: str, value: object, choices: Sequence[str]) -> None:
    """Raise unless ``value`` is one of ``choices`` (:func:`art_fisher.utils.check_choice`)."""
    validation.check_choice(value, name, choices)


def _batch_dependence(module: nn.Module) -> str | None:
    """Why ``module`` makes one input's output depend on the batch or change the model's state; None if not.

    Every normalisation layer of torch (``_NormBase``: BatchNorm, SyncBatchNorm, InstanceNorm, their lazy
    variants, any subclass) is judged by what its forward does: a BatchNorm normalises by the batch's
    statistics in training mode or when it keeps no running statistics (``track_running_stats=False``);
    an InstanceNorm normalises each sample by its own statistics (fine), but in training mode with
    ``track_running_stats=True`` it updates its running statistics. A lazy module not yet initialised
    would be initialised by the first call. GroupNorm and LayerNorm are per-sample and stateless.
    """
    from torch.nn.modules.lazy import LazyModuleMixin

    if isinstance(module, LazyModuleMixin) and module.has_uninitialized_params():
        return "is a lazy module not yet initialised (the first call would create its parameters); call it once first"
    if isinstance(module, nn.modules.instancenorm._InstanceNorm):
        if module.training and module.track_running_stats:
            return (
                "is in training mode with track_running_stats=True, where every call updates its running "
                "statistics; call model.eval() first (the metrics never change the model's mode)"
            )
        return None
    if isinstance(module, nn.modules.batchnorm._NormBase):
        if module.training:
            return (
                "is in training mode, where its output depends on the whole batch and every call updates its "
                "running statistics; call model.eval() first (the metrics never change the model's mode)"
            )
        if module.running_mean is None or module.running_var is None:
            return (
                "keeps no running statistics (track_running_stats=False), so even in eval mode it normalises "
                "by the statistics of the whole batch"
            )
        return None
    if isinstance(module, nn.modules.dropout._DropoutNd) and module.training:
        return (
            "is in training mode, where its output depends on chance; call model.eval() first (the metrics "
            "never change the model's mode)"
        )
    return None


def check_model(model: object) -> None:
    """``model`` is an ``nn.Module`` whose output for one input depends on that input alone, without side effects.

    Refused (ValueError naming the module): any normalisation layer that normalises by batch statistics or
    updates running statistics when called, dropout in training mode, and uninitialised lazy modules
    (see :func:`_batch_dependence`). :func:`probe_output` then checks the model's behaviour itself.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module; got {_type_name(model)}.")
    for mod_name, module in model.named_modules():
        why = _batch_dependence(module)
        if why is not None:
            raise ValueError(
                f"model: module {mod_name or '<root>'!r} ({type(module).__name__}) {why}. The Fisher information "
                "of one input is only defined when the model's output for it depends on that input alone."
            )


# torch.func's mixed second derivatives through these are wrong in torch 2.13 (checked against plain
# autograd and finite differences), so the exact sensitivity refuses them.
_NO_SECOND_ORDER = (nn.LayerNorm, nn.modules.instancenorm._InstanceNorm)


def check_second_order(model: nn.Module) -> None:
    """Raise ``NotImplementedError`` for modules whose mixed second derivatives torch.func gets wrong."""
    for mod_name, module in model.named_modules():
        if isinstance(module, _NO_SECOND_ORDER):
            raise NotImplementedError(
                f"model: module {mod_name or '<root>'!r} ({type(module).__name__}) is not supported by the "
                "exact sensitivity: torch.func's mixed second derivatives through it are wrong in this torch "
                "release. Use method='finite_difference' or a model without it."
            )


def check_x(x: object) -> torch.Tensor:
    """``x`` is a finite float tensor of shape (N, ...) with N >= 1."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor of shape (N, ...); got {_type_name(x)}.")
    if not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor (float32 or float64); got dtype {x.dtype}.")
    if x.dtype not in (torch.float32, torch.float64):
        raise TypeError(_HALF_UNSUPPORTED.format(what=f"x is {x.dtype}"))
    if x.dim() < 2:
        raise ValueError(
            f"x must have a batch dimension: shape (N, ...) with at least 2 dimensions; got shape {tuple(x.shape)}."
        )
    if x.shape[0] == 0:
        raise ValueError(f"x must hold at least one sample; got shape {tuple(x.shape)}.")
    if not bool(torch.isfinite(x).all()):
        raise ValueError("x must be finite; got NaN or infinite values.")
    return x


def check_params(model: nn.Module, params: Iterable[str] | None) -> list[str]:
    """Resolve ``params`` to a non-empty list of parameter names in ``model.named_parameters()`` order."""
    available = dict(model.named_parameters())
    if params is None:
        if not available:
            raise ValueError("model has no parameters, so its Fisher information is not defined.")
        names = [n for n, p in available.items() if p.requires_grad]
        # A frozen model still has a Fisher information: with no parameter requiring grad, all count.
        return names or list(available)
    if isinstance(params, (str, bytes)) or not isinstance(params, Iterable):
        raise TypeError(
            f"params must be None or an iterable of parameter names (str); got {_type_name(params)} {params!r}."
        )
    wanted = list(params)
    bad_types = [w for w in wanted if not isinstance(w, str)]
    if bad_types:
        raise TypeError(f"params must hold parameter names (str); got {_type_name(bad_types[0])}.")
    unknown = [w for w in wanted if w not in available]
    if unknown:
        shown = list(available)[:20]
        raise ValueError(
            f"params: unknown parameter names {unknown}; the model has {shown}"
            + (" ..." if len(available) > 20 else "")
            + "."
        )
    if not wanted:
        raise ValueError("params must name at least one parameter; got an empty iterable.")
    chosen = set(wanted)
    return [n for n in available if n in chosen]


_HALF_UNSUPPORTED = (
    "half precision is not supported ({what}): the Fisher metrics need float32 or float64 (their sums of "
    "squared derivatives lose every digit in float16 / bfloat16, and torch has no half-precision "
    "eigensolver). Convert with model.float() and x.float() (or .double())."
)


def check_model_matches_x(model: nn.Module, names: list[str], x: torch.Tensor) -> None:
    """The selected parameters have ``x``'s dtype and device (float32 or float64)."""
    available = dict(model.named_parameters())
    for n in names:
        p = available[n]
        if p.is_floating_point() and p.dtype not in (torch.float32, torch.float64):
            raise TypeError(_HALF_UNSUPPORTED.format(what=f"parameter {n!r} is {p.dtype}"))
        if p.dtype != x.dtype or p.device != x.device:
            raise ValueError(
                f"x must have the model's dtype and device: parameter {n!r} is {p.dtype} on {p.device}, "
                f"x is {x.dtype} on {x.device}. Convert x (or the model) first."
            )


def check_fd_step(fd_step: object) -> float:
    """``fd_step`` is a finite number > 0."""
    return validation.check_real(fd_step, "fd_step", low=0.0, low_open=True)


def check_chunk_size(chunk_size: object, name: str = "chunk_size") -> int | None:
    """``chunk_size`` is None or an int >= 1 (``name``: the argument's name in the messages)."""
    return validation.check_int(chunk_size, name, low=1, optional=True)


def check_bool(name: str, value: object) -> bool:
    """``value`` is a bool."""
    return validation.check_bool(value, name)


def probe_output(
    model: nn.Module, x: torch.Tensor, output: str, *, single: Callable[[], object] | None = None, batch: bool = True
) -> int:
    """Run the model on the first samples and check its output; return the number of classes.

    Checked, each with a ValueError that says what to change:

    - the call changes none of the model's buffers (running statistics updated in ``forward``); any
      change is undone before the error;
    - the output has shape (N, C), C >= 2, and is what ``output`` says: with ``"logits"``, a row that is a
      probability vector (non-negative, summing to one: a softmax however written) is refused, since
      the metrics would take probabilities for logits;
    - with ``batch`` (:func:`check_first_row`): the first sample's output is the same alone and in a batch
      of up to four (batch statistics), and the same in two calls (a model with randomness that
      ``model.eval()`` does not switch off, e.g. ``F.dropout(..., training=True)`` inside ``forward``, is
      refused).

    ``single`` is the call that gives the first sample's output, ``model(x[:1])`` by default (the hook
    engine's probe pass gives it with its graph). Without ``batch`` the caller checks the first row later,
    on a batch it computes anyway (:class:`FirstRowCheck`). Two calls in the usual case (the first sample
    alone, then in a batch); the first sample alone again only when those two disagree, or when ``x``
    holds one sample.
    """
    with torch.no_grad():
        out = guarded_call(model, single if single is not None else lambda: model(x[:1]))
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != 1:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else _type_name(out)
        raise ValueError(
            f"model must map x of shape (N, ...) to a tensor of shape (N, C); for one sample it returned {shape}."
        )
    n_classes = out.shape[1]
    if n_classes < 2:
        raise ValueError(f"model must return at least 2 classes; got output shape {tuple(out.shape)}.")
    _check_output_matches(out.detach(), output)
    if batch:
        check_first_row(model, x, out.detach(), model)
    return n_classes


def guarded_call(model: nn.Module, call: Callable[[], object]) -> object:
    """``call()``, refused (ValueError, after undoing it) where it changed any of ``model``'s buffers."""
    buffers = {name: b.detach().clone() for name, b in model.named_buffers()}
    try:
        result = call()
    finally:
        changed = _restore_buffers(model, buffers)
    if changed:
        raise ValueError(
            f"model: calling it changed its buffers {changed[:5]} (e.g. running statistics updated in forward), "
            "so computing a metric would change the model and one input's output depends on the calls before "
            "it. Call model.eval() first, or keep forward free of side effects (the buffers were restored)."
        )
    return result


def check_first_row(
    model: nn.Module,
    x: torch.Tensor,
    single: torch.Tensor,
    call: Callable[[torch.Tensor], object],
    rows: torch.Tensor | None = None,
) -> None:
    """Check that the first sample's output ``single`` (1, C) is its row in a batch, and the same when called again.

    ``call`` maps inputs to the outputs ``single`` was read from (the model, or its logits); ``rows`` are
    the outputs of a batch that starts with ``x[0]`` and holds other samples too, else ``call(x[:4])`` runs
    here (nothing to compare when ``x`` holds one sample). Where the row differs, or with one sample, one
    more call of ``x[:1]`` tells randomness from batch statistics. ValueError for either.
    """
    with torch.no_grad():
        batch: object = rows
        if rows is None and x.shape[0] > 1:
            batch = guarded_call(model, lambda: call(x[:4]))
        if batch is not None and _same_first_row(single, batch):
            return
        again = guarded_call(model, lambda: call(x[:1]))
    if (
        isinstance(again, torch.Tensor)
        and again.shape == single.shape
        and not torch.allclose(single, again, rtol=1e-4, atol=1e-6, equal_nan=True)
    ):
        raise ValueError(
            "model: its output for the same input differs between two calls in eval mode (e.g. "
            "F.dropout(..., training=True) or other randomness inside forward), so the Fisher information "
            "of one input is not defined. Make forward deterministic in eval mode (F.dropout(..., "
            "training=self.training) or an nn.Dropout module)."
        )
    if batch is not None:
        raise ValueError(
            "model: the output for x[0] alone differs from its output in a batch with other samples (a layer "
            "that normalises by batch statistics, e.g. BatchNorm with track_running_stats=False, or a forward "
            "that mixes samples), so the Fisher information of one input is not defined and the results would "
            "depend on chunk_size."
        )


@dataclass
class FirstRowCheck:
    """:func:`check_first_row` held back until the first batch that the computation itself runs.

    Saves the probe's batch call: called with the outputs ``rows`` of the first chunk, it compares their
    first row (that chunk starts with ``x[0]``) with ``single``; a chunk of one sample has nothing to
    compare, and then the batch call runs after all. It runs once.

    Attributes
    ----------
    model : nn.Module
    x : Tensor (k, ...)
        The first samples (at most four).
    single : Tensor (1, C)
        What ``call(x[:1])`` gave in the probe.
    call : callable
        Inputs → the outputs the rows are compared in (the model's logits).
    done : bool
    """

    model: nn.Module
    x: torch.Tensor
    single: torch.Tensor
    call: Callable[[torch.Tensor], object]
    done: bool = False

    def __call__(self, rows: torch.Tensor) -> None:
        if self.done:
            return
        self.done = True
        check_first_row(self.model, self.x, self.single, self.call, rows.detach() if rows.shape[0] > 1 else None)


def _restore_buffers(model: nn.Module, saved: dict[str, torch.Tensor]) -> list[str]:
    """Put back every buffer of ``model`` that differs from ``saved``; the names of those that did."""
    changed = []
    with torch.no_grad():
        for name, buffer in model.named_buffers():
            before = saved.get(name)
            if before is None or before.shape != buffer.shape or not torch.equal(before, buffer):
                changed.append(name)
                if before is not None and before.shape == buffer.shape:
                    buffer.copy_(before)
    return changed


def _same_first_row(single: object, batch: object) -> bool:
    """Whether the first sample's output alone (``single``, (1, C)) equals its row of ``batch``.

    True where there is nothing to compare (no batch, or outputs that are not (k, C) tensors: their
    shape is checked on its own). Tolerances that allow for the different kernels a batch may take.
    """
    if (
        not isinstance(single, torch.Tensor)
        or not isinstance(batch, torch.Tensor)
        or batch.dim() != 2
        or single.dim() != 2
        or tuple(batch.shape[1:]) != tuple(single.shape[1:])
    ):
        return True
    scale = float(single.detach().abs().max()) if bool(torch.isfinite(single).all()) else 1.0
    return torch.allclose(batch[:1], single, rtol=1e-3, atol=1e-4 * max(scale, 1.0), equal_nan=True)


def _check_output_matches(out: torch.Tensor, output: str) -> None:
    """The output rows ``out`` (k, C) are what ``output`` says; ValueError naming the mismatch."""
    tol = 1e-3 if out.dtype != torch.float64 else 1e-6
    first = out[:1]
    if output == "probs":
        total = float(first.sum())
        if bool((first < 0).any()) or abs(total - 1.0) > tol:
            raise ValueError(
                f"output='probs' but the model's output for x[0] is not a probability vector "
                f"(sum {total:.6g}, min {float(first.min()):.6g}); use output='logits' for unnormalised scores."
            )
    elif output == "log_probs":
        lse = float(torch.logsumexp(first, dim=1))
        if abs(lse) > tol:
            raise ValueError(
                f"output='log_probs' but logsumexp of the model's output for x[0] is {lse:.6g}, not 0; "
                "use output='logits' for unnormalised scores."
            )
    elif looks_like_probabilities(out):
        raise ValueError(
            f"output='logits' but the model's outputs for the first {out.shape[0]} samples are probability "
            "vectors (non-negative rows summing to 1, a softmax), which the metrics would take for logits "
            "(a trace many times too small). Pass output='probs', or return logits (or log-probabilities)."
        )


def check_logits(out: torch.Tensor, what: str) -> None:
    """Raise ``ValueError`` when the model outputs ``out`` (k, C) that ``what`` takes for logits are probabilities.

    Used where model outputs must be logits (or log-probabilities): energy, softmax confidence, an
    attacker's logit margin.
    """
    if looks_like_probabilities(out):
        raise ValueError(
            f"{what} takes the model's outputs for logits, but they are probability vectors (non-negative rows "
            "summing to 1, a softmax); give it a model that returns logits or log-probabilities."
        )


def looks_like_probabilities(out: torch.Tensor) -> bool:
    """Whether every row of ``out`` (k, C), C >= 2, is a probability vector: non-negative, summing to one.

    The sum must be one to within the rounding of a softmax in ``out``'s dtype (64 C units in the last
    place), so that logits that happen to be small and positive are not mistaken for probabilities.
    """
    out = out.detach()
    if out.dim() != 2 or out.shape[1] < 2 or not out.is_floating_point() or not bool(torch.isfinite(out).all()):
        return False
    tol = 64 * out.shape[1] * torch.finfo(out.dtype).eps
    return bool((out >= 0).all()) and bool(((out.sum(1) - 1).abs() <= tol).all())


def check_y(y: object, n: int, n_classes: int, device: torch.device) -> torch.Tensor:
    """Labels of shape (n,) with values in [0, n_classes)."""
    if isinstance(y, torch.Tensor):
        yt = y
    else:
        try:
            yt = torch.as_tensor(y)
        except (TypeError, ValueError, RuntimeError) as err:
            raise TypeError(f"y must be a tensor or array of integer labels; got {_type_name(y)}.") from err
    if yt.is_floating_point() or yt.is_complex() or yt.dtype == torch.bool:
        raise TypeError(f"y must hold integer class labels; got dtype {yt.dtype}.")
    if yt.dim() != 1 or yt.shape[0] != n:
        raise ValueError(f"y must have shape ({n},) (one label per sample of x); got {tuple(yt.shape)}.")
    if bool(((yt < 0) | (yt >= n_classes)).any()):
        raise ValueError(
            f"y must hold labels in [0, {n_classes - 1}] for a model with {n_classes} classes; "
            f"got values in [{int(yt.min())}, {int(yt.max())}]."
        )
    return yt.to(device=device, dtype=torch.long)


def check_direction(
    direction: object, model: nn.Module, names: list[str], x: torch.Tensor, *, allow_top: bool
) -> str | list[torch.Tensor]:
    """A direction name or one finite tensor per selected parameter with its shape."""
    if isinstance(direction, str):
        choices = DIRECTIONS if allow_top else DIRECTIONS[:2]
        if direction not in choices:
            raise ValueError(
                f"direction must be one of {list(choices)} or a sequence of parameter-shaped tensors; "
                f"got {direction!r}."
            )
        return direction
    if not isinstance(direction, Sequence) or not all(isinstance(d, torch.Tensor) for d in direction):
        raise TypeError(
            "direction must be a name or a sequence of tensors, one per selected parameter; "
            f"got {_type_name(direction)}."
        )
    available = dict(model.named_parameters())
    if len(direction) != len(names):
        raise ValueError(
            f"direction must hold one tensor per selected parameter ({len(names)}: {names}); "
            f"got {len(direction)} tensors."
        )
    out = []
    for n, d in zip(names, direction, strict=True):
        if tuple(d.shape) != tuple(available[n].shape):
            raise ValueError(
                f"direction: the tensor for parameter {n!r} must have shape {tuple(available[n].shape)}; "
                f"got {tuple(d.shape)}."
            )
        if not d.is_floating_point() or not bool(torch.isfinite(d).all()):
            raise ValueError(f"direction: the tensor for parameter {n!r} must be finite floats.")
        out.append(d.detach().to(device=x.device, dtype=x.dtype))
    if all(float(d.abs().max()) == 0 for d in out):
        raise ValueError("direction must not be zero in every selected parameter.")
    return out


def non_finite_rows(z: torch.Tensor) -> torch.Tensor:
    """Rows of logits ``z`` (n, C) that define no distribution: a NaN or ``+∞``, or every class at ``−∞``.

    A ``−∞`` logit (an exact zero probability) is allowed: that class carries no probability mass.
    """
    z = z.detach()
    return torch.isnan(z).any(1) | (z == float("inf")).any(1) | (z == float("-inf")).all(1)


def check_finite_output(z: torch.Tensor, offset: int, net, x: torch.Tensor) -> None:
    """Raise ``ValueError`` naming every sample of ``x`` whose output is non-finite or too large.

    A sample fails if its output is not finite (when ``z`` has one), or if its logits are too large to
    resolve a unit (:func:`check_logit_scale`).

    ``z`` (n, C) are the logits of ``x[offset : offset + n]``; on failure all of ``x`` is scanned (one
    forward pass without gradients) so that the message lists every such sample.
    """
    if not bool(non_finite_rows(z).any()):
        check_logit_scale(z, offset)
        return
    bad = []
    with torch.no_grad():
        for start in range(0, x.shape[0], 256):
            rows = non_finite_rows(net.logits(net.selected(), x[start : start + 256]))
            bad += (torch.nonzero(rows).flatten() + start).tolist()
    if not bad:  # the chunked pass disagrees (a batch-dependent model): name what this chunk saw
        bad = (torch.nonzero(non_finite_rows(z)).flatten() + offset).tolist()
    raise ValueError(
        f"x: the model's output is not finite (NaN or +inf, or every class at -inf) for samples "
        f"{_shown(bad)}, so their Fisher information is not defined; check those inputs (e.g. overflow in "
        f"{x.dtype})."
    )


def check_logit_scale(z: torch.Tensor, offset: int) -> None:
    """Raise ``ValueError`` naming the samples whose top logit in ``z`` (n, C) is too large to resolve a unit.

    Where the largest logit's magnitude exceeds ``1 / eps`` of its dtype (2**23 ≈ 8.4e6 in float32,
    2**52 ≈ 4.5e15 in float64), neighbouring representable logits are more than 1 apart: the softmax is
    exactly one-hot and its derivatives are rounding noise (or overflow), so no Fisher metric there is a
    measurement. (Log-probabilities have a top value near 0 and never trip it; a very negative logit of
    another class is an exact zero probability, which is allowed.)
    """
    limit = 1.0 / torch.finfo(z.dtype).eps
    top = z.detach().max(1).values
    rows = (top.abs() > limit) & torch.isfinite(top)
    if bool(rows.any()):
        bad = (torch.nonzero(rows).flatten() + offset).tolist()
        raise ValueError(
            f"x: the model's logits exceed {limit:.3g} in magnitude for samples {_shown(bad)}, where {z.dtype} "
            "cannot resolve a difference of 1, so their Fisher information is not defined (its derivatives "
            "overflow or vanish in rounding); check those inputs or the model's scale."
        )


def check_finite_result(values: torch.Tensor, what: str) -> torch.Tensor:
    """Return ``values`` (N, ...) or raise ``ValueError`` naming the samples with a non-finite value."""
    bad = ~torch.isfinite(values.detach()).reshape(values.shape[0], -1).all(1)
    if bool(bad.any()):
        raise ValueError(
            f"{what} is not finite for samples {_shown(torch.nonzero(bad).flatten().tolist())} (the model's "
            "derivatives overflow there, or a zero probability meets a direction that needs its logarithm)."
        )
    return values


def _shown(indices: list[int], limit: int = 20) -> str:
    return str(indices[:limit])[:-1] + (f", ... ({len(indices)} in all)]" if len(indices) > limit else "]")


def check_label_probabilities(net, x: torch.Tensor, y: torch.Tensor) -> None:
    """Raise ``ValueError`` naming the samples whose label has probability exactly 0 (``∇θ log p_y`` undefined)."""
    bad = []
    with torch.no_grad():
        for start in range(0, x.shape[0], 256):
            z = net.logits(net.selected(), x[start : start + 256])
            zy = z.gather(1, y[start : start + 256].unsqueeze(1)).squeeze(1)
            bad += (torch.nonzero(zy == float("-inf")).flatten() + start).tolist()
    if bad:
        raise ValueError(
            f'y: direction="label" needs ∇θ log p_y, which is undefined where the label\'s probability is '
            f"exactly 0: samples {_shown(bad)}."
        )
