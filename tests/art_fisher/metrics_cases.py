"""Tiny float64 models and a brute-force dense Fisher oracle for the metrics tests."""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, jacrev


class ScaledHead(nn.Module):
    """A module type the hook engine does not know (multiplies by a learned per-class scale)."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.linspace(0.5, 1.5, n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


class SharedMLP(nn.Module):
    """Weight sharing: one Linear layer applied twice."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(5, 6)
        self.shared = nn.Linear(6, 6)
        self.out = nn.Linear(6, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.inp(x))
        h = torch.tanh(self.shared(h))
        h = torch.tanh(self.shared(h))
        return self.out(h)


class Residual(nn.Module):
    """A residual block on a sequence input (Linear on 3-D tensors, LayerNorm)."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.norm = nn.LayerNorm(4)
        self.head = nn.Linear(12, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x (N, 12) viewed as (N, 3, 4)
        h = x.view(-1, 3, 4)
        h = self.norm(h + torch.relu(self.lin(h)))
        return self.head(h.flatten(1))


class TiedHead(nn.Module):
    """A Linear layer used as a module and its weight again directly, ``F.linear(h, self.mid.weight)``."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(5, 6)
        self.mid = nn.Linear(6, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.inp(x))
        return self.mid(h) + F.linear(torch.tanh(2 * h), self.mid.weight)


class TransposedTie(nn.Module):
    """An autoencoder-style tie: the input layer's weight, transposed, is the output head."""

    def __init__(self) -> None:
        super().__init__()
        self.enc = nn.Linear(4, 6)
        self.hidden = nn.Linear(6, 6)
        self.bias = nn.Parameter(torch.linspace(-0.2, 0.2, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.enc(x))
        h = torch.relu(self.hidden(h))
        return F.linear(h, self.enc.weight.t(), self.bias)


def gate(h: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """A custom function that reads a layer's weight."""
    return h * torch.sigmoid(w.sum(1))


class WeightInFunction(nn.Module):
    """A layer's weight read a second time inside a custom function."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(5, 6)
        self.out = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)
        return self.out(torch.tanh(gate(h, self.inp.weight)))


def _bn_eval(bn: nn.modules.batchnorm._BatchNorm, gen: torch.Generator) -> None:
    with torch.no_grad():
        bn.running_mean.copy_(0.3 * torch.randn(bn.num_features, generator=gen, dtype=torch.float64))
        bn.running_var.copy_(0.5 + torch.rand(bn.num_features, generator=gen, dtype=torch.float64))
        bn.weight.copy_(1 + 0.3 * torch.randn(bn.num_features, generator=gen, dtype=torch.float64))
        bn.bias.copy_(0.2 * torch.randn(bn.num_features, generator=gen, dtype=torch.float64))


def make_case(name: str, seed: int = 0) -> tuple[nn.Module, torch.Tensor]:
    """A tiny float64 model in eval mode and 4 inputs for it."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed + 1)
    if name == "mlp":
        model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 4))
        shape = (6,)
    elif name == "tanh":
        model = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 3))
        shape = (5,)
    elif name == "cnn":
        model = nn.Sequential(
            nn.Conv2d(1, 3, 3, padding=1),
            nn.BatchNorm2d(3),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(3, 4, 2, stride=1, bias=False),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(16, 4),
        )
        _bn_eval(model[1], gen)
        shape = (1, 6, 6)
    elif name == "unknown_module":
        model = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 3), ScaledHead(3))
        shape = (5,)
    elif name == "shared":
        model = SharedMLP()
        shape = (5,)
    elif name == "residual":
        model = Residual()
        shape = (12,)
    elif name == "tied_head":
        model = TiedHead()
        shape = (5,)
    elif name == "transposed_tie":
        model = TransposedTie()
        shape = (4,)
    elif name == "weight_in_function":
        model = WeightInFunction()
        shape = (5,)
    elif name == "inplace_cnn":  # ReLU(inplace=True) rewrites the convolution's output in place
        model = nn.Sequential(
            nn.Conv2d(1, 3, 3, padding=1),
            nn.BatchNorm2d(3),
            nn.ReLU(inplace=True),
            nn.Conv2d(3, 2, 3, stride=2),
            nn.ReLU(inplace=True),
            nn.Flatten(),
            nn.Linear(8, 4),
        )
        _bn_eval(model[1], gen)
        shape = (1, 6, 6)
    elif name in ("silu", "mish"):  # no forward-mode formula for reverse over forward
        act = nn.SiLU() if name == "silu" else nn.Mish()
        model = nn.Sequential(nn.Linear(5, 6), act, nn.Linear(6, 6), act, nn.Linear(6, 3))
        shape = (5,)
    elif name == "single_tensor":
        model = nn.Sequential(nn.Linear(5, 3, bias=False))
        shape = (5,)
    else:
        raise KeyError(name)
    model = model.double().eval()
    x = torch.randn(4, *shape, generator=gen, dtype=torch.float64)
    return model, x


EXACT_CASES = [
    "mlp",
    "tanh",
    "cnn",
    "unknown_module",
    "shared",
    "residual",
    "tied_head",
    "transposed_tie",
    "weight_in_function",
    "inplace_cnn",
    "silu",
    "mish",
]


class Dense:
    """Brute-force per-sample quantities from full Jacobians (float64 oracle).

    Parameters
    ----------
    model : nn.Module
    names : list of str, optional
        Selected parameters (default: all).
    output : str
        What the model returns.
    """

    def __init__(self, model: nn.Module, names: list[str] | None = None, output: str = "logits") -> None:
        self.model = model
        self.base = {n: p.detach() for n, p in model.named_parameters()}
        self.names = list(self.base) if names is None else list(names)
        self.output = output
        self.sizes = [self.base[n].numel() for n in self.names]

    def _logits_flat(self, flat: torch.Tensor, xi: torch.Tensor) -> torch.Tensor:
        parts = torch.split(flat, self.sizes)
        sel = {n: t.view_as(self.base[n]) for n, t in zip(self.names, parts, strict=True)}
        out = functional_call(self.model, {**self.base, **sel}, (xi.unsqueeze(0),))[0]
        return torch.log(out) if self.output == "probs" else out

    def flat(self) -> torch.Tensor:
        return torch.cat([self.base[n].flatten() for n in self.names])

    def jacobian(self, xi: torch.Tensor) -> torch.Tensor:
        """(C, P) Jacobian of the log-probabilities."""
        return jacrev(lambda f: torch.log_softmax(self._logits_flat(f, xi), -1))(self.flat())

    def probs(self, xi: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self._logits_flat(self.flat(), xi), -1)

    def fisher(self, xi: torch.Tensor) -> torch.Tensor:
        """Dense ``F = Σ_c p_c g_c g_cᵀ`` (P, P) from log-prob gradients."""
        g = self.jacobian(xi)
        p = self.probs(xi)
        return torch.einsum("c,cp,cq->pq", p, g, g)

    def block_masks(self) -> list[torch.Tensor]:
        masks, start = [], 0
        total = sum(self.sizes)
        for size in self.sizes:
            m = torch.zeros(total, dtype=torch.bool)
            m[start : start + size] = True
            masks.append(m)
            start += size
        return masks

    def quad(self, xi: torch.Tensor, v: torch.Tensor, blockwise: bool) -> torch.Tensor:
        f = self.fisher(xi)
        if not blockwise:
            return v @ f @ v
        return sum((v * m) @ f @ (v * m) for m in self.block_masks())

    def predicted_gradient(self, xi: torch.Tensor, label: int | None = None) -> torch.Tensor:
        g = self.jacobian(xi)
        c = int(self.probs(xi).argmax()) if label is None else label
        return g[c]

    def sensitivity(self, xi: torch.Tensor, v: torch.Tensor, blockwise: bool, reduce_classes: Callable | None = None):
        """``Σ_c ∂x(vᵀ∇θ p_c) ∂x(vᵀ∇θ log p_c)`` by plain autograd double backward, one class at a time.

        Independent of the library (and of ``torch.func``, whose mixed second derivatives through
        LayerNorm / InstanceNorm are wrong in torch 2.13). ``blockwise`` sums over parameter tensors
        with ``v`` restricted to each.
        """
        vs = [v * m for m in self.block_masks()] if blockwise else [v]
        total = torch.zeros_like(xi)
        xx = xi.detach().clone().requires_grad_(True)
        flat = self.flat().clone().requires_grad_(True)
        z = self._logits_flat(flat, xx)
        if reduce_classes is not None:
            z = reduce_classes(z)
        logp = torch.log_softmax(z, -1)
        for c in range(logp.shape[0]):
            (g_log,) = torch.autograd.grad(logp[c], flat, create_graph=True)
            (g_p,) = torch.autograd.grad(logp[c].exp(), flat, create_graph=True)
            for vk in vs:
                (dx_b,) = torch.autograd.grad(g_log @ vk, xx, retain_graph=True)
                (dx_a,) = torch.autograd.grad(g_p @ vk, xx, retain_graph=True)
                total = total + dx_a * dx_b
        return total


TOL = 1e-8


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-300))


@functools.cache
def cached_refs(name: str, names: tuple[str, ...] | None = None, label: tuple[int, ...] | None = None):
    model, x = make_case(name)
    return dense_refs(model, x, None if names is None else list(names), label=label)


def dense_refs(model, x, names=None, output="logits", label=None):
    d = Dense(model, names, output)
    out = {k: [] for k in ("trace", "lam", "full", "block", "full_raw", "fis", "fis_full")}
    for i, xi in enumerate(x):
        f = d.fisher(xi)
        out["trace"].append(f.trace())
        out["lam"].append(torch.linalg.eigvalsh(f)[-1])
        g = d.predicted_gradient(xi, None if label is None else int(label[i]))
        v = g / g.norm()
        out["full"].append(d.quad(xi, v, False))
        out["block"].append(d.quad(xi, v, True))
        out["full_raw"].append(d.quad(xi, g, False))
        out["fis"].append(d.sensitivity(xi, v, True))
        out["fis_full"].append(d.sensitivity(xi, v, False))
    return {k: torch.stack(v) for k, v in out.items()}


def per_class_reference(model: nn.Module, x: torch.Tensor, names: list[str] | None = None) -> dict[str, torch.Tensor]:
    """Trace, λ_max and the quadratic form along the predicted class's gradient, one backward pass per class."""
    params = dict(model.named_parameters())
    chosen = [params[n] for n in (names or list(params))]
    out = {"trace": [], "lam": [], "quad": [], "quad_blockwise": []}
    for i in range(x.shape[0]):
        logp = torch.log_softmax(model(x[i : i + 1]), -1)[0]
        p = logp.detach().exp()
        grads = [torch.autograd.grad(logp[c], chosen, retain_graph=True) for c in range(len(p))]
        flat = torch.stack([torch.cat([g.flatten() for g in gs]) for gs in grads])  # (C, P)
        gram = flat @ flat.T
        sp = p.sqrt()
        out["trace"].append((p * gram.diagonal()).sum())
        out["lam"].append(torch.linalg.eigvalsh(sp[:, None] * gram * sp[None, :])[-1])
        y = int(p.argmax())
        out["quad"].append((p * gram[y] ** 2).sum() / gram[y, y])
        blockwise = sum(
            (p * torch.stack([(gs[k] * grads[y][k]).sum() for gs in grads]) ** 2).sum() for k in range(len(chosen))
        )
        out["quad_blockwise"].append(blockwise / gram[y, y])
    return {k: torch.stack(v).detach() for k, v in out.items()}
