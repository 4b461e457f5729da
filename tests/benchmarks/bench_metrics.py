"""Benchmark: exact batched Fisher metrics vs the original per-sample algorithm.

For each model (digits SmallCNN 1×8×8, ~55k parameters; CifarCNN 3×32×32, ~0.5M parameters with
BatchNorm in eval mode) it measures, side by side in one run (median over repeats):

- the original algorithm (``tests/reference_fisher.py``), looped over samples, per sample (the
  quadratic form and the sensitivity include computing the predicted-class direction, as the
  original's usage does);
- the exact batched metrics (``art_fisher``) at batch 256 (sensitivity: ``--fis-batch`` / ``--fis-batch-cifar``,
  default 256 / 32), per sample, on the quantity the original computes (blockwise quadratic form and
  sensitivity);
- one batched forward+backward pass (``z.sum().backward()``) per sample: the "unit";
- on CifarCNN, measured lower bounds of any exact blockwise quadratic form (see
  :func:`quad_floor_per_sample`), next to the 10x target (original time / 10);
- peak memory of one exact call at batch 256 on each model, measured in a fresh subprocess as the
  peak resident set size during the call (Linux ``VmHWM``, reset just before it), in total and as
  growth over the resident size right before the call (model built, inputs made, all imported).

Prints a table and JSON (``--json PATH`` also writes it). ``--smoke`` runs tiny sizes (a narrow
SmallCNN and CifarCNN on 3×16×16 inputs, batch 4) in about half a minute.
Threads: ``--threads 1,2`` measures everything once per listed ``torch.set_num_threads`` setting
(default 1), one setting after the other in the same run. ``--device cuda`` (default: ``cuda`` when
available, in addition to the CPU) also times both algorithms with model and inputs on the GPU
(``torch.cuda.synchronize`` around each timing; memory = ``torch.cuda.max_memory_allocated``).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/ (reference_fisher)

from reference_fisher import OriginalFisher  # noqa: E402

from art_fisher import (  # noqa: E402
    fisher_max_eigenvalue,
    fisher_quadratic_form,
    fisher_sensitivity,
    fisher_trace,
)
from art_fisher.models import CifarCNN, SmallCNN  # noqa: E402


def build(name: str, smoke: bool) -> tuple[torch.nn.Module, tuple[int, ...]]:
    torch.manual_seed(0)
    if name == "small_cnn":
        model, shape = SmallCNN(1, 10, width=4 if smoke else 16), (1, 8, 8)
    else:
        model, shape = CifarCNN(3, 10), (3, 16, 16) if smoke else (3, 32, 32)
        with torch.no_grad():  # non-trivial BatchNorm statistics
            for m in model.modules():
                if isinstance(m, torch.nn.BatchNorm2d):
                    m.running_mean.uniform_(-0.2, 0.2)
                    m.running_var.uniform_(0.5, 1.5)
    return model.eval(), shape


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, *args, **kwargs) -> float:
    _sync(args[1].device)
    start = time.perf_counter()
    fn(*args, **kwargs)
    _sync(args[1].device)
    return time.perf_counter() - start


def original_per_sample(model, x, which: str) -> float:
    ref = OriginalFisher(model)
    _sync(x.device)
    start = time.perf_counter()
    for xi in x:
        xi = xi[None]
        if which == "trace":
            ref.trace(xi)
        else:
            vec = ref.predicted_direction(xi)
            (ref.quadratic_form if which == "quad" else ref.sensitivity)(xi, vec, 1e-3)
    _sync(x.device)
    return (time.perf_counter() - start) / len(x)


def unit_per_sample(model, x) -> float:
    params = list(model.parameters())
    _sync(x.device)
    start = time.perf_counter()
    z = model(x)
    grads = torch.autograd.grad(z.sum(), params)
    _sync(x.device)
    del grads
    return (time.perf_counter() - start) / len(x)


def quad_floor_per_sample(model, x, chunks=(4, 16, 64)) -> dict:
    """Measured lower bounds of any exact blockwise quadratic form on ``CifarCNN`` (ms per sample).

    Every exact method needs ``v = ∇θ log p_ŷ`` (one forward + backward: the unit) and, per parameter
    tensor ``k``, ``t_k = J_k v_k``: either one forward-mode push of a tangent from tensor ``k``'s layer
    to the logits (at least the forward cost of the layers after it; the first block has 3 tensors —
    conv weight, BatchNorm weight and bias — and so does the second), or ``C − 1`` reverse passes from the
    logits down to the first block's output. Only the first two blocks are counted and each piece is
    timed at its fastest chunk size among ``chunks``, so both figures are under-estimates.
    """
    feats, head = model.features, model.classifier
    with torch.no_grad():
        h1 = feats[:3](x)
        h2 = feats[3:7](h1)
        n_cls = head(feats[3:](h1[:1])).shape[1]

    def best(fn, inp) -> float:
        times = []
        for size in chunks:
            _sync(inp.device)
            start = time.perf_counter()
            for i in range(0, len(inp), size):
                fn(inp[i : i + size])
            _sync(inp.device)
            times.append((time.perf_counter() - start) / len(inp))
        return min(times)

    def unit(xb):
        torch.autograd.grad(model(xb).sum(), list(model.parameters()))

    def tail1(hb):
        with torch.no_grad():
            head(feats[3:](hb))

    def tail2(hb):
        with torch.no_grad():
            head(feats[7:](hb))

    def backward_only(hb):  # the backward pass alone, the forward excluded
        hg = hb.detach().requires_grad_(True)
        z = head(feats[3:](hg))
        _sync(hb.device)
        start = time.perf_counter()
        torch.autograd.grad(z.sum(), hg)
        _sync(hb.device)
        return time.perf_counter() - start

    u, t1, t2 = best(unit, x), best(tail1, h1), best(tail2, h2)
    bwd = min(sum(backward_only(h1[i : i + size]) for i in range(0, len(h1), size)) / len(h1) for size in chunks)
    return {
        "forward_mode_floor": 1e3 * (u + 3 * t1 + 3 * t2),
        "reverse_mode_floor": 1e3 * (u + (n_cls - 1) * bwd),
    }


EXACT = {
    "trace": lambda m, x: fisher_trace(m, x),
    "quad": lambda m, x: fisher_quadratic_form(m, x, blockwise=True),
    "fis": lambda m, x: fisher_sensitivity(m, x, blockwise=True),
    "max_eig": lambda m, x: fisher_max_eigenvalue(m, x),
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
    model, shape = build(model_name, smoke)
    x = torch.rand(batch, *shape)
    EXACT[metric](model, x[:2])  # warm up (lazy initialisations)
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:  # not resettable here: VmHWM is then this process's peak since it started
        pass
    rss_before = _status_kib("VmRSS")
    EXACT[metric](model, x)
    peak = _status_kib("VmHWM")
    return {"peak_rss_mib": peak / 1024, "growth_mib": (peak - rss_before) / 1024, "rss_before_mib": rss_before / 1024}


def cuda_memory(model, x, metric: str) -> dict:
    """Peak CUDA memory allocated during one exact call."""
    torch.cuda.synchronize(x.device)
    torch.cuda.reset_peak_memory_stats(x.device)
    before = torch.cuda.memory_allocated(x.device)
    EXACT[metric](model, x)
    torch.cuda.synchronize(x.device)
    peak = torch.cuda.max_memory_allocated(x.device)
    return {"peak_cuda_mib": peak / 2**20, "growth_mib": (peak - before) / 2**20}


def measure_model(args, name: str, device: torch.device) -> dict:
    """One model's row: medians over ``args.repeats`` of every timing, side by side."""
    model, shape = build(name, args.smoke)
    model = model.to(device)
    n_params = sum(p.numel() for p in model.parameters())
    gen = torch.Generator().manual_seed(1)
    batch = args.batch
    x = torch.rand(batch, *shape, generator=gen).to(device)
    x_orig = x[: args.n_orig]
    fis_batch = min(batch, args.fis_batch if name == "small_cnn" else args.fis_batch_cifar)
    samples = {k: [] for k in ("unit", "trace", "quad", "fis", "max_eig", "orig_trace", "orig_quad", "orig_fis")}
    floors: dict[str, list[float]] = {"forward_mode_floor": [], "reverse_mode_floor": []}
    for key in EXACT:  # warm up
        EXACT[key](model, x[:2])
    for rep in range(args.repeats):
        samples["unit"].append(unit_per_sample(model, x))
        samples["trace"].append(timed(EXACT["trace"], model, x) / batch)
        samples["max_eig"].append(timed(EXACT["max_eig"], model, x) / batch)
        samples["quad"].append(timed(EXACT["quad"], model, x) / batch)
        samples["fis"].append(timed(EXACT["fis"], model, x[:fis_batch]) / fis_batch)
        samples["orig_trace"].append(original_per_sample(model, x_orig, "trace"))
        samples["orig_quad"].append(original_per_sample(model, x_orig, "quad"))
        if rep < args.orig_fis_repeats:
            samples["orig_fis"].append(original_per_sample(model, x_orig, "fis"))
        if isinstance(model, CifarCNN):
            for key, value in quad_floor_per_sample(model, x[:64]).items():
                floors[key].append(value)
    med = {k: statistics.median(v) for k, v in samples.items()}
    unit = med["unit"]
    row = {
        "params": n_params,
        "input_shape": list(shape),
        "batch": batch,
        "fis_batch": fis_batch,
        "n_original_samples": len(x_orig),
        "repeats": args.repeats,
        "ms_per_sample": {k: 1e3 * v for k, v in med.items()},
        "speedup_vs_original": {
            "trace": med["orig_trace"] / med["trace"],
            "quad_blockwise": med["orig_quad"] / med["quad"],
            "fis_blockwise": med["orig_fis"] / med["fis"],
        },
        "units_per_sample": {
            "trace": med["trace"] / unit,
            "quad_blockwise": med["quad"] / unit,
            "trace_plus_quad": (med["trace"] + med["quad"]) / unit,
            "max_eig": med["max_eig"] / unit,
            "fis_blockwise": med["fis"] / unit,
        },
        "max_eig_over_trace": med["max_eig"] / med["trace"],
    }
    if floors["forward_mode_floor"]:
        row["quad_blockwise_floor_ms"] = {k: statistics.median(v) for k, v in floors.items()}
        row["quad_blockwise_target_ms"] = 1e3 * med["orig_quad"] / 10
    if args.no_memory:
        return row
    row["memory"] = {}
    for metric in ("trace", "quad", "max_eig", "fis"):
        b = batch if metric != "fis" else fis_batch
        if device.type == "cuda":
            row["memory"][metric] = {"batch": b, **cuda_memory(model, x[:b], metric)}
            continue
        cmd = [sys.executable, __file__, "--measure-memory", name, metric, str(b), "--threads", str(args.threads_now)]
        if args.smoke:
            cmd.append("--smoke")
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        row["memory"][metric] = {"batch": b, **json.loads(out.strip().splitlines()[-1])}
    return row


def run(args) -> dict:
    results = {"machine": {"cpu_count": __import__("os").cpu_count(), "platform": platform.platform(),
                           "torch": torch.__version__}, "runs": []}
    models = ["small_cnn", "cifar_cnn"]
    for threads in args.threads:
        torch.set_num_threads(threads)
        args.threads_now = threads
        run_ = {"device": "cpu", "threads": threads, "models": {}}
        for name in models:
            run_["models"][name] = measure_model(args, name, torch.device("cpu"))
        results["runs"].append(run_)
    for dev in args.devices:
        run_ = {"device": dev, "device_name": torch.cuda.get_device_name(dev), "models": {}}
        for name in models:
            run_["models"][name] = measure_model(args, name, torch.device(dev))
        results["runs"].append(run_)
    return results


def table(results: dict) -> str:
    lines = [
        "| device | model | params | metric | original ms/sample | exact ms/sample (batch) | speed-up "
        "| units/sample | peak MiB (growth) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for run_ in results["runs"]:
        where = f"cpu, {run_['threads']} thread(s)" if run_["device"] == "cpu" else run_["device_name"]
        for name, row in run_["models"].items():
            ms = row["ms_per_sample"]
            mem = row.get("memory", {})

            def memory(key: str) -> str:
                info = mem.get(key)
                if info is None:
                    return "-"
                peak = info.get("peak_rss_mib", info.get("peak_cuda_mib"))
                return f"{peak:.0f} ({info['growth_mib']:.0f})"

            for metric, orig, key, sp in (
                ("trace", "orig_trace", "trace", "trace"),
                ("quadratic form (blockwise)", "orig_quad", "quad", "quad_blockwise"),
                ("sensitivity (blockwise)", "orig_fis", "fis", "fis_blockwise"),
            ):
                b = row["fis_batch"] if key == "fis" else row["batch"]
                lines.append(
                    f"| {where} | {name} | {row['params']} | {metric} | {ms[orig]:.2f} | {ms[key]:.3f} ({b}) | "
                    f"{row['speedup_vs_original'][sp]:.1f}x | {row['units_per_sample'][sp]:.1f} | {memory(key)} |"
                )
            lines.append(
                f"| {where} | {name} | {row['params']} | max eigenvalue | - | {ms['max_eig']:.3f} ({row['batch']}) | "
                f"{row['max_eig_over_trace']:.2f}x trace | {row['units_per_sample']['max_eig']:.1f} | "
                f"{memory('max_eig')} |"
            )
            lines.append(
                f"| {where} | {name} | | trace + quadratic form | | {ms['trace'] + ms['quad']:.3f} | | "
                f"{row['units_per_sample']['trace_plus_quad']:.1f} | |"
            )
            lines.append(f"| {where} | {name} | | unit: batched forward+backward | | {ms['unit']:.3f} | | 1 | |")
            if "quad_blockwise_floor_ms" in row:
                fl = row["quad_blockwise_floor_ms"]
                lines.append(
                    f"| {where} | {name} | | quadratic form: lower bound of any exact method (forward / reverse "
                    f"mode), vs the 10x target | | {fl['forward_mode_floor']:.2f} / {fl['reverse_mode_floor']:.2f} "
                    f"vs {row['quad_blockwise_target_ms']:.2f} | | | |"
                )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, runs in seconds")
    parser.add_argument("--batch", type=int, default=None, help="batch of the exact metrics (default 256)")
    parser.add_argument("--fis-batch", type=int, default=None, help="batch of the exact sensitivity (SmallCNN)")
    parser.add_argument(
        "--fis-batch-cifar", type=int, default=None, help="batch of the exact sensitivity on CifarCNN (default 32)"
    )
    parser.add_argument("--n-orig", type=int, default=None, help="samples for the original (default 8)")
    parser.add_argument("--repeats", type=int, default=None, help="repeats, median reported (default 3)")
    parser.add_argument("--orig-fis-repeats", type=int, default=1, help="repeats of the (slow) original FIS")
    parser.add_argument("--threads", default="1", help="comma-separated torch thread counts, e.g. 1,2 (default 1)")
    parser.add_argument(
        "--device", action="append", default=None,
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
    args.n_orig = args.n_orig or (1 if args.smoke else 8)
    args.repeats = args.repeats or (1 if args.smoke else 3)
    results = run(args)
    print(table(results))
    text = json.dumps(results, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
