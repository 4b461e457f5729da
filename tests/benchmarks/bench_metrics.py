"""Benchmark: exact batched Fisher metrics vs the original per-sample algorithm and vs BackPACK (and opacus).

Models (``build``): the digits SmallCNN (1×8×8, ~55k parameters); an MNIST-size CNN (1×28×28, ~47k
parameters, two 5×5 convolutions, max pooling, two linear layers) whose forward ends in
``log_softmax``, measured with that head (``output="log_probs"``) and, with the same weights, without it
(logits); and the CIFAR-size CifarCNN (3×32×32, ~0.5M parameters, BatchNorm in eval mode) with a logits
head and with a ``log_softmax`` head. For each, side by side in one run:

- the original algorithm (``tests/art_fisher/reference_fisher.py``), looped over samples, per sample (the
  quadratic form and the sensitivity include computing the predicted-class direction, as the
  original's usage does);
- the exact batched metrics (``art_fisher``) at batch 256 (sensitivity: ``--fis-batch`` /
  ``--fis-batch-cifar``, default 256 / 32), on the quantity the original computes (blockwise quadratic
  form and sensitivity), and λ_max;
- peers for the per-sample trace, interleaved with ``fisher_trace`` at ``--peer-batch`` (default 64)
  and compared with it: BackPACK's ``BatchDiagGGNExact`` with ``CrossEntropyLoss(reduction="sum")``
  (its per-sample GGN diagonal sums to ``tr F``) on a twin of the model that BackPACK supports (a
  terminal ``LogSoftmax`` dropped, which ``CrossEntropyLoss`` applies itself; ``AdaptiveMaxPool2d``
  replaced by the equal ``MaxPool2d``), and opacus' ghost-clipping per-sample gradient norms, one
  forward + backward per column of a factor of ``S`` (models without BatchNorm; opacus records
  activations in training mode only). Each peer's largest relative difference from ``fisher_trace``
  is recorded. Installed with ``pip install -e ".[bench]"``; skipped when missing;
- the floor of any exact per-sample trace that, like every method here, needs each layer's
  output-gradients for the C − 1 directions of ``S``: one forward pass and C − 1 backward passes down to
  the first layer's output, with nothing else computed (each at its fastest chunk of ``--floor-chunks``);
- one batched forward+backward pass (``z.sum().backward()``) per sample: the "unit";
- with the logits heads, measured lower bounds of any exact blockwise quadratic form
  (:func:`quad_floor_per_sample`), next to the 10x target (original time / 10);
- peak memory of one exact call at batch 256 (digits and CIFAR models), in a fresh subprocess: the peak
  resident set size during the call (Linux ``VmHWM``, reset just before it), in total and as growth
  over the resident size right before the call.

Times: every timing is taken both as wall-clock and as the CPU time of this process (``process_time``).
Each row reports one clock (``"clock"`` in the JSON, in brackets in the table): the CPU time on the CPU
at one thread (equal to the wall-clock on an idle machine and far less disturbed by other jobs on a
shared one) and the wall-clock otherwise (CPU time then also counts the threads' waiting); the other
clock is kept in the JSON. Each figure is the median over ``--repeats``; a ratio is the median over the
repeats of the ratio of the two timings taken next to each other. The speed-ups against the original and
the peers are also given from the fastest run of each side, with the range of the side-by-side ratios
(``*_fastest``, ``*_range``): on a shared machine the fastest run is the least disturbed.

Prints a table and JSON (``--json PATH`` also writes it). ``--smoke`` runs tiny sizes of three rows in about
a minute and exits with an error if a peer disagrees with ``fisher_trace``. ``--threads 1,2`` measures everything once
per listed ``torch.set_num_threads`` setting, one after the other in the same run. ``--device cuda``
(default: ``cuda`` when available, in addition to the CPU) also times everything on the GPU
(``torch.cuda.synchronize`` around each timing; memory = ``torch.cuda.max_memory_allocated``).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root (tests.art_fisher.reference_fisher)

from art_fisher import (
    fisher_max_eigenvalue,
    fisher_quadratic_form,
    fisher_sensitivity,
    fisher_trace,
)
from art_fisher.models._architectures import CifarCNN, SmallCNN
from tests.art_fisher.reference_fisher import OriginalFisher

# (model, head): the rows of the benchmark.
ROWS = [
    ("digits_cnn", "logits"),
    ("mnist_cnn", "log_softmax"),
    ("mnist_cnn", "logits"),
    ("cifar_cnn", "logits"),
    ("cifar_cnn", "log_softmax"),
]
SMOKE_ROWS = [("digits_cnn", "logits"), ("mnist_cnn", "log_softmax"), ("cifar_cnn", "logits")]


def mnist_cnn(width: int = 16) -> nn.Sequential:
    """An MNIST-style classifier ending in ``LogSoftmax`` (the usual PyTorch MNIST example's shape)."""
    return nn.Sequential(
        nn.Conv2d(1, width, 5),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(width, 2 * width, 5),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(2 * width * 16, 64),
        nn.ReLU(),
        nn.Linear(64, 10),
        nn.LogSoftmax(dim=1),
    )


def build(name: str, head: str, smoke: bool) -> tuple[nn.Module, tuple[int, ...]]:
    """The model (eval mode, fixed weights) with the given head, and its input shape."""
    torch.manual_seed(0)
    if name == "digits_cnn":
        model, shape = SmallCNN(1, 10, width=4 if smoke else 16), (1, 8, 8)
    elif name == "mnist_cnn":
        model, shape = mnist_cnn(4 if smoke else 16), (1, 28, 28)
        if head == "logits":
            model = model[:-1]
        return model.eval(), shape
    else:
        model, shape = CifarCNN(3, 10), (3, 16, 16) if smoke else (3, 32, 32)
        with torch.no_grad():  # non-trivial BatchNorm statistics
            for m in model.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.running_mean.uniform_(-0.2, 0.2)
                    m.running_var.uniform_(0.5, 1.5)
    if head == "log_softmax":
        model = nn.Sequential(model, nn.LogSoftmax(dim=1))
    return model.eval(), shape


def output_of(head: str) -> str:
    return "log_probs" if head == "log_softmax" else "logits"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of one call of ``fn``."""
    _sync(device)
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    _sync(device)
    return time.perf_counter() - wall, time.process_time() - cpu


def original_per_sample(model, x, which: str, output: str) -> tuple[float, float]:
    ref = OriginalFisher(model, output=output)

    def run():
        for xi in x:
            xi = xi[None]
            if which == "trace":
                ref.trace(xi)
            else:
                vec = ref.predicted_direction(xi)
                (ref.quadratic_form if which == "quad" else ref.sensitivity)(xi, vec, 1e-3)

    wall, cpu = timed(run, x.device)
    return wall / len(x), cpu / len(x)


def unit_per_sample(model, x) -> tuple[float, float]:
    params = list(model.parameters())

    def run():
        torch.autograd.grad(model(x).sum(), params)

    wall, cpu = timed(run, x.device)
    return wall / len(x), cpu / len(x)


def _layers(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear, nn.BatchNorm2d))]


def trace_floor(model, x, clock: int, chunks=(16, 64, 256)) -> tuple[float, float]:
    """Forward + (C − 1) backward passes to every layer's output, per sample, at the fastest chunk (wall, CPU)."""
    model = copy.deepcopy(model).requires_grad_(False)
    layers = _layers(model)
    best = None
    for size in chunks:

        def run(size=size):
            for start in range(0, len(x), size):
                outs = []
                hooks = [layer.register_forward_hook(lambda _m, _i, o: outs.append(o)) for layer in layers]
                z = model(x[start : start + size].detach().requires_grad_(True))
                for h in hooks:
                    h.remove()
                n_cols = z.shape[1] - 1
                cot = torch.randn(len(z), z.shape[1], n_cols, device=x.device)
                for j in range(n_cols):
                    torch.autograd.grad(z, outs, cot[:, :, j], retain_graph=j < n_cols - 1)

        wall, cpu = timed(run, x.device)
        if best is None or (wall, cpu)[clock] < best[clock] * len(x):
            best = (wall / len(x), cpu / len(x))
    return best


def quad_floor_per_sample(model, shape, x, clock: int, chunks=(4, 16, 64)) -> dict:
    """Measured lower bounds of any exact blockwise quadratic form (ms per sample), for Sequential-like models.

    Every exact method needs ``v = ∇θ log p_ŷ`` (one forward + backward: the unit) and, per parameter
    tensor ``k``, ``t_k = J_k v_k``: either one forward-mode push of a tangent from tensor ``k``'s layer
    to the logits (counted as the plain forward of the layers after it, tangent arithmetic not
    counted), or ``C − 1`` reverse passes from the logits down to the first parameterised layer's output
    (counted as the backward passes alone, without the forward). Every tensor is counted; each piece
    is timed at its fastest chunk size among ``chunks``, so both figures are under-estimates.
    ``clock`` indexes :func:`timed`'s result (0 wall, 1 CPU). The model is flattened into its
    sequence of layers (:func:`backpack_twin`).
    """
    layers = list(backpack_twin(model, shape))
    with torch.no_grad():
        inputs = [x]
        for layer in layers:
            inputs.append(layer(inputs[-1]))
    n_cls = inputs[-1].shape[1]
    owners = [i for i, layer in enumerate(layers) for _p in layer.parameters(recurse=False)]  # one per tensor

    def best(fn, inp) -> float:
        return min(
            timed(lambda s=size: [fn(inp[i : i + s]) for i in range(0, len(inp), s)], inp.device)[clock]
            for size in chunks
        ) / len(inp)

    def unit(xb):
        torch.autograd.grad(model(xb).sum(), list(model.parameters()))

    tails: dict[int, float] = {}
    for i in set(owners):
        tail = nn.Sequential(*layers[i + 1 :])

        def run(hb, tail=tail):
            with torch.no_grad():
                tail(hb)

        tails[i] = best(run, inputs[i + 1]) if i + 1 < len(layers) else 0.0
    first = min(owners)
    rest = nn.Sequential(*layers[first + 1 :])

    def backward_only(hb) -> float:  # the backward passes alone, the forward excluded
        hg = hb.detach().requires_grad_(True)
        z = rest(hg)
        cot = torch.randn(z.shape[0], n_cls, n_cls - 1, device=z.device)

        def passes():
            for j in range(n_cls - 1):
                torch.autograd.grad(z, hg, cot[:, :, j], retain_graph=True)

        return timed(passes, hb.device)[clock]

    h = inputs[first + 1]
    bwd = min(sum(backward_only(h[i : i + size]) for i in range(0, len(h), size)) for size in chunks) / len(h)
    u = best(unit, x)
    return {"forward_mode_floor": 1e3 * (u + sum(tails[i] for i in owners)), "reverse_mode_floor": 1e3 * (u + bwd)}


# --- peers ---------------------------------------------------------------------------------------------


def backpack_twin(model: nn.Module, shape: tuple[int, ...]) -> nn.Module:
    """A copy BackPACK can extend: one flat Sequential (``features`` then ``classifier`` for the project's
    CNNs), the terminal LogSoftmax dropped, AdaptiveMaxPool2d as the equal MaxPool2d."""
    twin = copy.deepcopy(model)
    if isinstance(twin, nn.Sequential) and isinstance(twin[-1], nn.LogSoftmax):
        twin = twin[:-1]
    if isinstance(twin, nn.Sequential) and len(twin) == 1:
        twin = twin[0]
    if isinstance(twin, (SmallCNN, CifarCNN)):
        twin = nn.Sequential(*twin.features, *twin.classifier)
    sizes = {}

    def remember(module, inputs, _output) -> None:
        sizes[module] = inputs[0].shape[-2:]

    hooks = [m.register_forward_hook(remember) for m in twin.modules() if isinstance(m, nn.AdaptiveMaxPool2d)]
    with torch.no_grad():
        twin(torch.zeros(1, *shape))
    for h in hooks:
        h.remove()

    def replace(parent: nn.Module) -> None:
        for name, child in parent.named_children():
            if isinstance(child, nn.AdaptiveMaxPool2d):
                out = child.output_size if isinstance(child.output_size, tuple) else (child.output_size,) * 2
                h, w = sizes[child]
                if h % out[0] or w % out[1]:
                    raise ValueError("AdaptiveMaxPool2d with uneven windows has no MaxPool2d twin")
                setattr(parent, name, nn.MaxPool2d((h // out[0], w // out[1])))
            else:
                replace(child)

    replace(twin)
    return twin.eval()


def backpack_trace(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Per-sample ``tr F`` from BackPACK's ``BatchDiagGGNExact`` (CrossEntropyLoss, sum reduction)."""
    from backpack import backpack, extend
    from backpack.extensions import BatchDiagGGNExact

    model = extend(model)
    loss_fn = extend(nn.CrossEntropyLoss(reduction="sum"))
    out = model(x)
    loss = loss_fn(out, out.argmax(1))  # the exact GGN does not depend on the labels
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # full backward hooks fire on outputs only (inputs need no grad)
        with backpack(BatchDiagGGNExact()):
            loss.backward()
    values = sum(p.diag_ggn_exact_batch.flatten(1).sum(1) for p in model.parameters())
    for p in model.parameters():
        p.grad = None
        del p.diag_ggn_exact_batch
    return values.detach()


def opacus_trace(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Per-sample ``tr F`` from opacus' ghost-clipping per-sample gradient norms, one pass per column of ``L``.

    ``L = (I − p 1ᵀ) diag(√p)`` has ``L Lᵀ = S``; ``tr F = Σ_j ‖∇θ (L[:, j]ᵀ z)‖²`` per sample.
    """
    from opacus.grad_sample.grad_sample_module_fast_gradient_clipping import GradSampleModuleFastGradientClipping

    model = copy.deepcopy(model).train()  # opacus records activations in training mode (no BatchNorm here)
    gsm = GradSampleModuleFastGradientClipping(model, batch_first=True, loss_reduction="sum", use_ghost_clipping=True)
    with torch.no_grad():
        p = torch.softmax(model(x), -1)
    n_cls = p.shape[1]
    factor = (torch.eye(n_cls, dtype=p.dtype, device=p.device) - p.unsqueeze(-1)) * p.sqrt().unsqueeze(-2)
    total = torch.zeros(len(x), dtype=x.dtype, device=x.device)
    for j in range(n_cls):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # full backward hooks fire on outputs only (inputs need no grad)
            (gsm(x) * factor[:, :, j]).sum().backward()
        total += gsm.get_norm_sample().detach() ** 2
        for q in model.parameters():
            q.grad = None
    gsm._close()
    return total


def available_peers(model: nn.Module) -> dict:
    peers = {}
    try:
        import backpack  # noqa: F401

        peers["backpack"] = backpack_trace
    except ImportError:
        pass
    try:
        import opacus  # noqa: F401

        if not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
            peers["opacus"] = opacus_trace
    except ImportError:
        pass
    return peers


def measure_peers(model, shape, x, output: str, repeats: int, clock: int) -> dict:
    """Peers' per-sample trace next to ``fisher_trace`` on the same inputs (ms per sample, ratios, agreement)."""
    twin = backpack_twin(model, shape).to(x.device)
    ours = fisher_trace(model, x, output=output)
    out = {}
    for name, fn in available_peers(twin).items():
        theirs = fn(copy.deepcopy(twin), x)  # warm up; agreement
        rows = []
        for _ in range(repeats):
            peer_model = copy.deepcopy(twin)
            mine = timed(lambda: fisher_trace(model, x, output=output), x.device)
            peer = timed(lambda m=peer_model: fn(m, x), x.device)
            rows.append((mine, peer))
        other = 1 - clock
        out[name] = {
            "batch": len(x),
            "ms_per_sample": {
                "art_fisher": 1e3 * statistics.median(r[0][clock] for r in rows) / len(x),
                name: 1e3 * statistics.median(r[1][clock] for r in rows) / len(x),
            },
            "other_clock_ms_per_sample": {
                "art_fisher": 1e3 * statistics.median(r[0][other] for r in rows) / len(x),
                name: 1e3 * statistics.median(r[1][other] for r in rows) / len(x),
            },
            "speedup": statistics.median(r[1][clock] / r[0][clock] for r in rows),
            # fastest of the interleaved runs of each, and the range of the runs' ratios
            "fastest_ms_per_sample": {
                "art_fisher": 1e3 * min(r[0][clock] for r in rows) / len(x),
                name: 1e3 * min(r[1][clock] for r in rows) / len(x),
            },
            "speedup_fastest": min(r[1][clock] for r in rows) / min(r[0][clock] for r in rows),
            "speedup_range": [
                min(r[1][clock] / r[0][clock] for r in rows),
                max(r[1][clock] / r[0][clock] for r in rows),
            ],
            "max_rel_diff": float(((theirs - ours).abs() / ours.abs().clamp_min(1e-30)).max()),
        }
    return out


# --- the exact metrics -----------------------------------------------------------------------------------

EXACT = {
    "trace": lambda m, x, o: fisher_trace(m, x, output=o),
    "quad": lambda m, x, o: fisher_quadratic_form(m, x, blockwise=True, output=o),
    "fis": lambda m, x, o: fisher_sensitivity(m, x, blockwise=True, output=o),
    "max_eig": lambda m, x, o: fisher_max_eigenvalue(m, x, output=o),
}


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def measure_memory(model_name: str, metric: str, batch: int, smoke: bool, threads: int) -> dict:
    """Run in a fresh process: peak resident set size during one exact call.

    The peak is Linux's ``VmHWM`` of this process, reset right before the call by writing ``5`` to
    ``/proc/self/clear_refs`` (``ru_maxrss`` is not used: it keeps the parent's peak across exec).
    """
    torch.set_num_threads(threads)
    model, shape = build(model_name, "logits", smoke)
    x = torch.rand(batch, *shape)
    EXACT[metric](model, x[:2], "logits")  # warm up (lazy initialisations)
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:  # not resettable here: VmHWM is then this process's peak since it started
        pass
    rss_before = _status_kib("VmRSS")
    EXACT[metric](model, x, "logits")
    peak = _status_kib("VmHWM")
    return {"peak_rss_mib": peak / 1024, "growth_mib": (peak - rss_before) / 1024, "rss_before_mib": rss_before / 1024}


def cuda_memory(model, x, metric: str, output: str) -> dict:
    """Peak CUDA memory allocated during one exact call."""
    torch.cuda.synchronize(x.device)
    torch.cuda.reset_peak_memory_stats(x.device)
    before = torch.cuda.memory_allocated(x.device)
    EXACT[metric](model, x, output)
    torch.cuda.synchronize(x.device)
    peak = torch.cuda.max_memory_allocated(x.device)
    return {"peak_cuda_mib": peak / 2**20, "growth_mib": (peak - before) / 2**20}


def _median_pair(rows: list[tuple[float, float]]) -> tuple[float, float]:
    return statistics.median(r[0] for r in rows), statistics.median(r[1] for r in rows)


def measure_row(args, name: str, head: str, device: torch.device) -> dict:
    """One (model, head) row: medians over ``args.repeats`` of every timing, side by side.

    The clock is the process's CPU time on the CPU at one thread (other jobs on a shared machine barely
    change it) and the wall-clock otherwise (CPU time then also counts the threads' waiting).
    """
    clock = 1 if device.type == "cpu" and torch.get_num_threads() == 1 else 0
    other = 1 - clock
    model, shape = build(name, head, args.smoke)
    model = model.to(device)
    output = output_of(head)
    gen = torch.Generator().manual_seed(1)
    batch = args.batch
    x = torch.rand(batch, *shape, generator=gen).to(device)
    n_orig = args.n_orig_cifar if name == "cifar_cnn" else args.n_orig
    x_orig = x[:n_orig]
    fis_batch = min(batch, args.fis_batch_cifar if name == "cifar_cnn" else args.fis_batch)
    keys = ("unit", "trace", "quad", "fis", "max_eig", "orig_trace", "orig_quad", "orig_fis")
    samples: dict[str, list[tuple[float, float]]] = {k: [] for k in keys}
    ratios: dict[str, list[tuple[float, float]]] = {k: [] for k in ("trace", "quad", "fis")}
    floors: dict[str, list[float]] = {"forward_mode_floor": [], "reverse_mode_floor": []}
    for key in EXACT:  # warm up
        EXACT[key](model, x[:2], output)
    for rep in range(args.repeats):
        wall, cpu = unit_per_sample(model, x)
        samples["unit"].append((wall, cpu))
        for key in ("trace", "quad", "max_eig", "fis"):
            xb = x[:fis_batch] if key == "fis" else x
            wall, cpu = timed(lambda key=key, xb=xb: EXACT[key](model, xb, output), device)
            samples[key].append((wall / len(xb), cpu / len(xb)))
            if key == "max_eig" or (key == "fis" and rep >= args.orig_fis_repeats):
                continue
            orig = original_per_sample(model, x_orig, key, output)
            samples[f"orig_{key}"].append(orig)
            ratios[key].append(orig[clock] / samples[key][-1][clock])
        if head == "logits":
            for k, value in quad_floor_per_sample(model, shape, x[:64], clock).items():
                floors[k].append(value)
    med = {k: _median_pair(v) for k, v in samples.items()}
    unit = med["unit"][clock]
    row = {
        "model": name,
        "head": head,
        "output": output,
        "params": sum(p.numel() for p in model.parameters()),
        "input_shape": list(shape),
        "batch": batch,
        "fis_batch": fis_batch,
        "n_original_samples": n_orig,
        "repeats": args.repeats,
        "clock": "cpu" if clock else "wall",
        "ms_per_sample": {k: 1e3 * v[clock] for k, v in med.items()},
        "other_clock_ms_per_sample": {k: 1e3 * v[other] for k, v in med.items()},
        "speedup_vs_original": {
            f"{k}{'' if k == 'trace' else '_blockwise'}": statistics.median(v) for k, v in ratios.items()
        },
        # the fastest run of each side, and the range of the side-by-side ratios
        "speedup_vs_original_fastest": {
            f"{k}{'' if k == 'trace' else '_blockwise'}": min(o[clock] for o in samples[f"orig_{k}"])
            / min(s[clock] for s in samples[k])
            for k, v in ratios.items()
            if v
        },
        "speedup_vs_original_range": {
            f"{k}{'' if k == 'trace' else '_blockwise'}": [min(v), max(v)] for k, v in ratios.items() if v
        },
        "units_per_sample": {
            "trace": med["trace"][clock] / unit,
            "quad_blockwise": med["quad"][clock] / unit,
            "trace_plus_quad": (med["trace"][clock] + med["quad"][clock]) / unit,
            "max_eig": med["max_eig"][clock] / unit,
            "fis_blockwise": med["fis"][clock] / unit,
        },
        "max_eig_over_trace": med["max_eig"][clock] / med["trace"][clock],
    }
    if floors["forward_mode_floor"]:
        row["quad_blockwise_floor_ms"] = {k: statistics.median(v) for k, v in floors.items()}
        row["quad_blockwise_target_ms"] = 1e3 * med["orig_quad"][clock] / 10
    xp = x[: args.peer_batch]
    row["peers"] = measure_peers(model, shape, xp, output, args.repeats, clock)
    floor = trace_floor(model, xp, clock)
    row["trace_floor_ms_per_sample"] = {"value": 1e3 * floor[clock], "batch": len(xp)}
    if not args.no_memory and head == "logits" and name != "mnist_cnn" and not (args.smoke and name == "cifar_cnn"):
        row["memory"] = {}
        for metric in ("trace", "quad", "max_eig", "fis"):
            b = batch if metric != "fis" else fis_batch
            if device.type == "cuda":
                row["memory"][metric] = {"batch": b, **cuda_memory(model, x[:b], metric, output)}
                continue
            cmd = [
                sys.executable,
                __file__,
                "--measure-memory",
                name,
                metric,
                str(b),
                "--threads",
                str(args.threads_now),
            ]
            if args.smoke:
                cmd.append("--smoke")
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            row["memory"][metric] = {"batch": b, **json.loads(out.strip().splitlines()[-1])}
    return row


def run(args) -> dict:
    results = {
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__},
        "timing": "ms_per_sample: medians by each row's clock (CPU time of the process on the CPU at one thread, "
        "wall-clock otherwise); other_clock_ms_per_sample: the other clock",
        "runs": [],
    }
    for threads in args.threads:
        torch.set_num_threads(threads)
        args.threads_now = threads
        run_ = {"device": "cpu", "threads": threads, "rows": []}
        for name, head in SMOKE_ROWS if args.smoke else ROWS:
            run_["rows"].append(measure_row(args, name, head, torch.device("cpu")))
        results["runs"].append(run_)
    for dev in args.devices:
        run_ = {"device": dev, "device_name": torch.cuda.get_device_name(dev), "rows": []}
        for name, head in SMOKE_ROWS if args.smoke else ROWS:
            run_["rows"].append(measure_row(args, name, head, torch.device(dev)))
        results["runs"].append(run_)
    return results


def table(results: dict) -> str:
    lines = [
        (
            "| device | model (head) | params | metric | original ms/sample | exact ms/sample (batch) | speed-up "
            "| units/sample | peak MiB (growth) |"
        ),
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for run_ in results["runs"]:
        where = f"cpu, {run_['threads']} thread(s)" if run_["device"] == "cpu" else run_["device_name"]
        clock = run_["rows"][0]["clock"] if run_["rows"] else ""
        where = f"{where} [{clock}]"
        for row in run_["rows"]:
            ms = row["ms_per_sample"]
            mem = row.get("memory", {})
            label = f"{row['model']} ({row['head']})"

            def memory(key: str, mem=mem) -> str:
                info = mem.get(key)
                if info is None:
                    return "-"
                peak = info.get("peak_rss_mib", info.get("peak_cuda_mib"))
                return f"{peak:.0f} ({info['growth_mib']:.0f})"

            for metric, key, sp in (
                ("trace", "trace", "trace"),
                ("quadratic form (blockwise)", "quad", "quad_blockwise"),
                ("sensitivity (blockwise)", "fis", "fis_blockwise"),
            ):
                b = row["fis_batch"] if key == "fis" else row["batch"]
                lines.append(
                    f"| {where} | {label} | {row['params']} | {metric} | {ms['orig_' + key]:.2f} | {ms[key]:.3f} ({b}) "
                    f"| {row['speedup_vs_original'][sp]:.1f}x | {row['units_per_sample'][sp]:.1f} | {memory(key)} |"
                )
            lines.append(
                f"| {where} | {label} | | max eigenvalue | - | {ms['max_eig']:.3f} ({row['batch']}) | "
                f"{row['max_eig_over_trace']:.2f}x trace | {row['units_per_sample']['max_eig']:.1f} | "
                f"{memory('max_eig')} |"
            )
            lines.append(f"| {where} | {label} | | unit: batched forward+backward | | {ms['unit']:.3f} | | 1 | |")
            for peer, info in row["peers"].items():
                lines.append(
                    f"| {where} | {label} | | trace: {peer} vs art_fisher (batch {info['batch']}; max rel. diff "
                    f"{info['max_rel_diff']:.1e}) | {info['ms_per_sample'][peer]:.3f} | "
                    f"{info['ms_per_sample']['art_fisher']:.3f} | {info['speedup']:.2f}x | | |"
                )
            fl = row["trace_floor_ms_per_sample"]
            lines.append(
                f"| {where} | {label} | | trace floor: forward + C−1 backward passes (batch {fl['batch']}) | | "
                f"{fl['value']:.3f} | | | |"
            )
            if "quad_blockwise_floor_ms" in row:
                fq = row["quad_blockwise_floor_ms"]
                lines.append(
                    f"| {where} | {label} | | quadratic form: lower bound of any exact method (forward / reverse "
                    f"mode), vs the 10x target | | {fq['forward_mode_floor']:.2f} / {fq['reverse_mode_floor']:.2f} "
                    f"vs {row['quad_blockwise_target_ms']:.2f} | | | |"
                )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, runs in under a minute")
    parser.add_argument("--batch", type=int, default=None, help="batch of the exact metrics (default 256)")
    parser.add_argument("--fis-batch", type=int, default=None, help="batch of the exact sensitivity (default 256)")
    parser.add_argument("--fis-batch-cifar", type=int, default=None, help="... on CifarCNN (default 32)")
    parser.add_argument("--peer-batch", type=int, default=None, help="batch of the peer comparison (default 64)")
    parser.add_argument("--n-orig", type=int, default=None, help="samples for the original (default 8)")
    parser.add_argument("--n-orig-cifar", type=int, default=None, help="... on CifarCNN (default 4)")
    parser.add_argument("--repeats", type=int, default=None, help="repeats, median reported (default 3)")
    parser.add_argument("--orig-fis-repeats", type=int, default=1, help="repeats of the (slow) original FIS")
    parser.add_argument("--threads", default="1", help="comma-separated torch thread counts, e.g. 1,2 (default 1)")
    parser.add_argument(
        "--device",
        action="append",
        default=None,
        help="also run on this CUDA device (repeatable; default: cuda when available; 'none' for CPU only)",
    )
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    parser.add_argument("--json", type=Path, default=None, help="also write the JSON here")
    parser.add_argument("--measure-memory", nargs=3, metavar=("MODEL", "METRIC", "BATCH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure_memory:
        name, metric, batch = args.measure_memory
        print(json.dumps(measure_memory(name, metric, int(batch), args.smoke, int(args.threads))))
        return
    args.threads = [int(t) for t in str(args.threads).split(",")]
    if args.device is None:
        args.devices = ["cuda"] if torch.cuda.is_available() and not args.smoke else []
    else:
        args.devices = [d for d in args.device if d != "none"]
    args.batch = args.batch or (4 if args.smoke else 256)
    args.fis_batch = args.fis_batch or (4 if args.smoke else 256)
    args.fis_batch_cifar = args.fis_batch_cifar or (2 if args.smoke else 32)
    args.peer_batch = args.peer_batch or (4 if args.smoke else 64)
    args.n_orig = args.n_orig or (1 if args.smoke else 8)
    args.n_orig_cifar = args.n_orig_cifar or (1 if args.smoke else 4)
    args.repeats = args.repeats or (1 if args.smoke else 3)
    results = run(args)
    print(table(results))
    text = json.dumps(results, indent=2)
    print(text)
    if args.json:
        tmp = args.json.with_suffix(args.json.suffix + ".tmp")
        tmp.write_text(text + "\n")
        tmp.replace(args.json)
    disagree = [
        (row["model"], row["head"], peer, info["max_rel_diff"])
        for run_ in results["runs"]
        for row in run_["rows"]
        for peer, info in row["peers"].items()
        if info["max_rel_diff"] > 1e-3
    ]
    if disagree:
        sys.exit(f"peers disagree with fisher_trace (max relative difference > 1e-3): {disagree}")


if __name__ == "__main__":
    main()
