"""The forward-hook recorder of the hook engine, and the hook coverage: which parameters it handles.

:func:`recorded_forward` runs the model once with forward hooks on the covered layers and keeps each
layer's input ``a`` and the gradient edge of its output ``o`` (taken before any in-place operation
rewrites ``o``'s history), so that backward passes can stop at ``o``.

:func:`find_coverage` decides from one probe forward pass of one sample which parameters the hooks
compute: a parameter whose layer has a rule (:mod:`art_fisher.metrics._engine._layers`), carries no user
hooks, ran exactly once with an output that reaches the logits, and which enters the autograd graph
through exactly one edge; or a parameter used directly once, added to or expanded over the samples
(:mod:`~art_fisher.metrics._engine._layers._direct`). Every other parameter goes to ``torch.func``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import cast

import torch
from torch import nn
from torch.autograd.graph import GradientEdge, Node, get_gradient_edge
from torch.nn.modules.batchnorm import _BatchNorm

from art_fisher.metrics._engine._eval_batch_norm import cheaper_batch_norms
from art_fisher.metrics._engine._layers import LayerRule, is_candidate, rule_for
from art_fisher.metrics._engine._layers._direct import DirectRule, ScaleRule, broadcast_shape, direct_node_ok, scale_use
from art_fisher.metrics._engine._network import FunctionalNet


@contextmanager
def recording(modules: dict[str, nn.Module]) -> Iterator[dict[str, list[tuple[object, object, GradientEdge | None]]]]:
    """Forward hooks that append ``(first input, output, output's gradient edge)`` of every call of ``modules``."""
    records: dict[str, list[tuple[object, object, GradientEdge | None]]] = {m: [] for m in modules}

    def make_hook(store: list):
        def hook(_module, inputs, output):
            edge = get_gradient_edge(output) if isinstance(output, torch.Tensor) and output.requires_grad else None
            store.append((inputs[0] if inputs else None, output, edge))

        return hook

    handles = [module.register_forward_hook(make_hook(records[m])) for m, module in modules.items()]
    try:
        yield records
    finally:
        for h in handles:
            h.remove()


@dataclass
class HookCoverage:
    """Which selected parameters the hook engine computes, from a probe pass of one sample.

    Attributes
    ----------
    covered : dict of str to (str, str)
        Parameter name → (module name, ``"weight"`` | ``"bias"``).
    rules : dict of str to LayerRule subclass
        Module name → its rule, for the modules of ``covered``.
    rest : list of str
        Selected parameters for ``torch.func``.
    out_numel : int
        Output entries per sample of the covered modules together (sizes the hook engine's chunks).
    n_classes : int
    probe : tuple of (Tensor, Tensor)
        The probe's logits (with their graph; parameters are leaves) and its input leaf.
    sample_shapes : dict of str to (torch.Size, torch.Size)
        Module name → the per-sample shapes of its input and output in the probe.
    first_row_check : callable, optional
        Run by :func:`recorded_forward` on the logits of its first pass
        (:class:`~art_fisher._checks.FirstRowCheck`).
    """

    covered: dict[str, tuple[str, str]]
    rules: dict[str, type[LayerRule]]
    rest: list[str]
    out_numel: int
    n_classes: int
    probe: tuple[torch.Tensor, torch.Tensor] = field(repr=False)
    sample_shapes: dict[str, tuple[torch.Size, torch.Size]] = field(default_factory=dict)
    first_row_check: Callable[[torch.Tensor], None] | None = field(default=None, repr=False)

    def without_hooks(self) -> HookCoverage:
        """The same coverage with every parameter sent to ``torch.func`` (tests compare the two)."""
        names = list(self.covered) + self.rest
        return HookCoverage({}, {}, names, 0, self.n_classes, self.probe)

    def batched_like_probe(self, module: str, a: torch.Tensor, out: torch.Tensor, n: int) -> bool:
        """Whether a call on ``n`` samples has the probe's per-sample shapes with the samples first.

        A layer whose first dimension is not the sample (tokens first, samples folded into another
        dimension) has shapes that do not scale this way, and is left to ``torch.func``.
        """
        want = self.sample_shapes.get(module)
        if want is None:
            return False
        return tuple(a.shape) == (n, *want[0]) and tuple(out.shape) == (n, *want[1])


#: Prefix of the coverage's module keys for directly used parameters (no module name starts with a NUL character).
DIRECT = "\x00direct:"


def _has_user_hooks(module: nn.Module) -> bool:
    return bool(module._forward_hooks or module._forward_pre_hooks or module._backward_hooks)


def graph_nodes(z: torch.Tensor) -> list:
    """Every autograd node reachable from ``z`` (depth first, each once)."""
    seen: set[int] = set()
    nodes = []
    stack = [z.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        nodes.append(node)
        stack.extend(fn for fn, _i in node.next_functions)
    return nodes


@dataclass
class Probe:
    """The probe forward pass of one sample ``x[:1]``, with hooks on every candidate layer.

    Attributes
    ----------
    out : object
        What the model returned (checked by the caller before :func:`find_coverage` reads the rest).
    z : Tensor (1, C)
        The logits read from it, with their graph.
    xr : Tensor (1, ...)
        The input leaf.
    leaves : dict of str to Tensor
        The selected parameters as leaves of the graph.
    modules : dict of str to nn.Module
        Every module of the model by name.
    records : dict of str to list
        Candidate module → its calls (first input, output, output's gradient edge).
    """

    out: object
    z: torch.Tensor
    xr: torch.Tensor
    leaves: dict[str, torch.Tensor]
    modules: dict[str, nn.Module]
    records: dict[str, list[tuple[object, object, GradientEdge | None]]]


def probe_forward(net: FunctionalNet, x: torch.Tensor) -> Probe:
    """Run the model on ``x[:1]`` with the selected parameters as leaves, recording every candidate layer."""
    modules = dict(net.model.named_modules())
    candidates = {m: mod for m, mod in modules.items() if is_candidate(mod) and not _has_user_hooks(mod)}
    leaves = {n: net.base[n].detach().requires_grad_(True) for n in net.names}
    xr = x[:1].detach().requires_grad_(True)
    with torch.enable_grad(), recording(candidates) as records:
        out, z = net.outputs(leaves, xr)
    return Probe(out, z, xr, leaves, modules, records)


def find_coverage(net: FunctionalNet, x: torch.Tensor, probe: Probe | None = None) -> HookCoverage:
    """Split the selected parameters between hooks and ``torch.func`` from a probe pass of ``x[:1]``.

    ``probe`` is that pass where the caller has run it already (:func:`probe_forward`, whose output it has
    checked); otherwise it runs here.
    """
    if probe is None:
        probe = probe_forward(net, x)
    z, xr, leaves, modules, records = probe.z, probe.xr, probe.leaves, probe.modules, probe.records
    nodes = graph_nodes(z)
    node_ids = {id(node) for node in nodes}
    name_of_leaf = {id(t): n for n, t in leaves.items()}
    uses: Counter[str] = Counter()
    for node in nodes:
        for child, _i in node.next_functions:
            if child is not None and type(child).__name__ == "AccumulateGrad" and id(child.variable) in name_of_leaf:
                uses[name_of_leaf[id(child.variable)]] += 1
    selected = set(net.names)
    covered: dict[str, tuple[str, str]] = {}
    rules: dict[str, type[LayerRule]] = {}
    shapes: dict[str, tuple[torch.Size, torch.Size]] = {}
    out_numel = 0
    for m, recs in records.items():
        if len(recs) != 1:
            continue
        a, out, edge = recs[0]
        if not isinstance(a, torch.Tensor) or not isinstance(out, torch.Tensor) or edge is None:
            continue
        if id(edge.node) not in node_ids or a.dim() == 0 or a.shape[0] != 1 or out.dim() == 0 or out.shape[0] != 1:
            continue
        rule = rule_for(modules[m], a, out)
        if rule is None:
            continue
        shapes[m] = (a.shape[1:], out.shape[1:])
        for role in rule.roles:
            full = f"{m}.{role}" if m else role
            if modules[m]._parameters.get(role) is not None and full in selected and uses[full] == 1:
                covered[full] = (m, role)
                rules[m] = rule
        if m in rules:
            out_numel += out[0].numel()
    for name, (direct_rule, out_shape) in _direct_uses(nodes, leaves, uses, covered).items():
        key = DIRECT + name
        covered[name] = (key, "param")
        rules[key] = direct_rule
        shapes[key] = (leaves[name].shape, torch.Size(out_shape[1:]))
        out_numel += torch.Size(out_shape[1:]).numel()
    rest = [n for n in net.names if n not in covered]
    return HookCoverage(covered, rules, rest, out_numel, z.shape[1], (z, xr), shapes)


def _node_output_shape(node: object) -> tuple[int, ...] | None:
    """The shape of the (first) output of an autograd node, or None where the node does not tell it."""
    meta = getattr(node, "_input_metadata", None)
    if not meta:
        return None
    shape = getattr(meta[0], "shape", None)
    return tuple(shape) if shape is not None else None


def _consumers(nodes: list, leaves: dict[str, torch.Tensor]) -> dict[str, object]:
    """Parameter name → the autograd node that takes its leaf as an input (the last one found)."""
    name_of_leaf = {id(t): n for n, t in leaves.items()}
    found: dict[str, object] = {}
    for node in nodes:
        for child, _i in node.next_functions:
            if child is not None and type(child).__name__ == "AccumulateGrad" and id(child.variable) in name_of_leaf:
                found[name_of_leaf[id(child.variable)]] = node
    return found


def _parents(nodes: list) -> dict[int, list]:
    """Node id → the nodes that take its output."""
    out: dict[int, list] = {}
    for node in nodes:
        for child, _i in node.next_functions:
            if child is not None:
                out.setdefault(id(child), []).append(node)
    return out


def _direct_node(
    consumer: object, leaf: torch.Tensor, parents: dict[int, list]
) -> tuple[object, torch.Tensor | None, tuple[int, ...]]:
    """The node that plays a directly used parameter's layer, a product's other factor, and the parameter's shape there.

    An addition or expansion is its own node (no factor); a layer scale is its product node and factor;
    anything else gives ``(None, None, ())``.
    """
    if direct_node_ok(consumer):
        return consumer, None, tuple(leaf.shape)
    found = scale_use(consumer, leaf, parents)
    return found if found is not None else (None, None, ())


def _direct_uses(
    nodes: list, leaves: dict[str, torch.Tensor], uses: Counter[str], covered: dict[str, tuple[str, str]]
) -> dict[str, tuple[type[DirectRule], tuple[int, ...]]]:
    """Parameters used once, added, expanded or multiplied over the samples: name → (their rule, output shape)."""
    out: dict[str, tuple[type[DirectRule], tuple[int, ...]]] = {}
    parents = _parents(nodes)
    for name, consumer in _consumers(nodes, leaves).items():
        if name in covered or uses[name] != 1:
            continue
        node, h, used = _direct_node(consumer, leaves[name], parents)
        shape = None if node is None else _node_output_shape(node)
        if shape is None or len(shape) == 0 or shape[0] != 1 or (h is not None and tuple(h.shape) != shape):
            continue
        if broadcast_shape(used, shape) is not None:
            out[name] = (DirectRule if h is None else ScaleRule, shape)
    return out


@dataclass
class Recorded:
    """One recorded forward pass of a chunk.

    Attributes
    ----------
    z : Tensor (n, C)
        Logits, with their graph.
    x : Tensor (n, ...)
        The input the graph starts from (requires grad).
    rules : dict of str to LayerRule
        Covered module → its rule instance on the recorded input (modules that ran exactly once).
    edges : dict of str to GradientEdge
        Covered module → the gradient edge of its output.
    shapes : dict of str to torch.Size
        Covered module → its output shape.
    missing : list of str
        Covered parameters whose module did not run exactly once here (computed with ``torch.func``).
    """

    z: torch.Tensor
    x: torch.Tensor
    rules: dict[str, LayerRule]
    edges: dict[str, GradientEdge]
    shapes: dict[str, torch.Size]
    missing: list[str]

    @property
    def modules(self) -> list[str]:
        return list(self.rules)


def recorded_forward(
    net: FunctionalNet, coverage: HookCoverage, x: torch.Tensor, *, create_graph: bool = False
) -> Recorded:
    """One forward pass of ``x`` with hooks on the covered modules.

    With ``create_graph`` the layer inputs keep their graph (and ``x`` is used as given when it
    requires grad), so that everything computed from them is differentiable in ``x``. The coverage's
    ``first_row_check`` (if any) sees the logits. Eval-mode batch norms run with the backward of their
    affine map (:mod:`~art_fisher.metrics._engine._eval_batch_norm`).
    """
    modules = dict(net.model.named_modules())
    hooked = {m: modules[m] for m in coverage.rules if not m.startswith(DIRECT)}
    direct = {
        n: net.base[n].detach().requires_grad_(True) for n, (m, _k) in coverage.covered.items() if m.startswith(DIRECT)
    }
    xr = x if create_graph and x.requires_grad else x.detach().requires_grad_(True)
    batch_norms = [m for m in modules.values() if isinstance(m, _BatchNorm)]
    with torch.enable_grad(), recording(hooked) as records, cheaper_batch_norms(batch_norms):
        z = net.logits({**net.selected(), **direct}, xr)
    if coverage.first_row_check is not None:
        coverage.first_row_check(z)
    rules: dict[str, LayerRule] = {}
    edges: dict[str, GradientEdge] = {}
    shapes: dict[str, torch.Size] = {}
    if direct:
        _record_direct(coverage, z, direct, xr.shape[0], rules, edges, shapes, create_graph=create_graph)
    for m, recs in records.items():
        if len(recs) != 1:
            continue
        a, out, edge = recs[0]
        if (
            isinstance(a, torch.Tensor)
            and isinstance(out, torch.Tensor)
            and edge is not None
            and coverage.batched_like_probe(m, a, out, xr.shape[0])
        ):
            rule_edge = coverage.rules[m].output_edge(modules[m], a, edge)
            if rule_edge is None:
                continue
            rules[m] = coverage.rules[m](modules[m], a if create_graph else a.detach())
            edges[m] = rule_edge
            shapes[m] = out.shape
    missing = [p for p, (m, _k) in coverage.covered.items() if m not in rules]
    return Recorded(z, xr, rules, edges, shapes, missing)


def _record_direct(
    coverage: HookCoverage,
    z: torch.Tensor,
    leaves: dict[str, torch.Tensor],
    n: int,
    rules: dict[str, LayerRule],
    edges: dict[str, GradientEdge],
    shapes: dict[str, torch.Size],
    *,
    create_graph: bool,
) -> None:
    """Rules, edges and output shapes of the directly used parameters of one recorded pass (as in the probe)."""
    nodes = graph_nodes(z)
    parents = _parents(nodes)
    for name, consumer in _consumers(nodes, leaves).items():
        key = DIRECT + name
        node, h, used = _direct_node(consumer, leaves[name], parents)
        shape = None if node is None else _node_output_shape(node)
        want = coverage.rules.get(key)
        if (
            shape is None
            or shape != (n, *coverage.sample_shapes[key][1])
            or want is not (DirectRule if h is None else ScaleRule)
        ):
            continue
        if h is None:
            rules[key] = DirectRule(nn.Identity(), leaves[name].detach(), shape)
        elif tuple(h.shape) == shape:
            rules[key] = ScaleRule(
                nn.Identity(), leaves[name].detach(), shape, h=h if create_graph else h.detach(), used_shape=used
            )
        else:
            continue
        edges[key] = GradientEdge(cast("Node", node), 0)
        shapes[key] = torch.Size(shape)
