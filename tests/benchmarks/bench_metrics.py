"""Benchmark: exact batched Fisher metrics vs the original per-sample algorithm.

For each model (digits SmallCNN 1×8×8, ~55k parameters; CifarCNN 3×32×32, ~0.5M parameters with
BatchNorm in eval mode) it measures, side by side in one run (median over repeats):

- the original algorithm (``tests/reference_fisher.py``), looped over samples, per sample (the
  quadratic form and the sensitivity include computing the predicted-class direction, as the
  original's usage does);
- the exact batched metrics (``art_fisher``) at batch 256 (sensitivity: ``--fis-batch`` / ``--fis-batch-cifar``,
  default 256 / 8: on CifarCNN it costs seconds per sample), per sample,
  on the quantity the original computes (blockwise quadratic form and sensitivity);
- one batched forward+backward pass (``z.sum().backward()``) per sample: the "unit";
- peak memory of one exact call at batch 256 on each model, measured in a fresh subprocess as the
  growth of ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` (peak resident set size) over the
  resident size right before the call (model built, inputs made, everything imported).

Prints a table and JSON (``--json PATH`` also writes it). ``--smoke`` runs tiny sizes (a narrow
SmallCNN only) in seconds.
Threads: ``torch.set_num_threads(--threads)`` (default 1) for every measurement.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
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


def timed(fn, *args, **kwargs) -> float:
    start = time.perf_counter()
    fn(*args, **kwargs)
    return time.perf_counter() - start


def original_per_sample(model, x, which: str) -> float:
    ref = OriginalFisher(model)
    start = time.perf_counter()
    for xi in x:
        xi = xi[None]
        if which == "trace":
            ref.trace(xi)
        else:
            vec = ref.predicted_direction(xi)
            (ref.quadratic_form if which == "quad" else ref.sensitivity)(xi, vec, 1e-3)
    return (time.perf_counter() - start) / len(x)


def unit_per_sample(model, x) -> float:
    params = list(model.parameters())
    start = time.perf_counter()
    z = model(x)
    grads = torch.autograd.grad(z.sum(), params)
    del grads
    return (time.perf_counter() - start) / len(x)


EXACT = {
    "trace": lambda m, x: fisher_trace(m, x),
    "quad": lambda m, x: fisher_quadratic_form(m, x, blockwise=True),
    "fis": lambda m, x: fisher_sensitivity(m, x, blockwise=True),
    "max_eig": lambda m, x: fisher_max_eigenvalue(m, x),
}


def measure_memory(model_name: str, metric: str, batch: int, smoke: bool, threads: int) -> dict:
    """Run in a fresh process: peak-RSS growth of one exact call."""
    torch.set_num_threads(threads)
    model, shape = build(model_name, smoke)
    x = torch.rand(batch, *shape)
    EXACT[metric](model, x[:2])  # warm up (lazy initialisations)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with open("/proc/self/statm") as fh:
        rss_now = int(fh.read().split()[1]) * resource.getpagesize() // 1024
    EXACT[metric](model, x)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"peak_rss_mib": after / 1024, "growth_mib": (after - max(rss_now, 0)) / 1024, "peak_before_mib": before / 1024}


def run(args) -> dict:
    torch.set_num_threads(args.threads)
    results = {"machine": {"cpu_count": __import__("os").cpu_count(), "threads": args.threads,
                           "platform": platform.platform(), "torch": torch.__version__}, "models": {}}
    models = ["small_cnn"] if args.smoke else ["small_cnn", "cifar_cnn"]
    for name in models:
        model, shape = build(name, args.smoke)
        n_params = sum(p.numel() for p in model.parameters())
        gen = torch.Generator().manual_seed(1)
        batch = args.batch
        x = torch.rand(batch, *shape, generator=gen)
        x_orig = x[: args.n_orig]
        fis_batch = min(batch, args.fis_batch if name == "small_cnn" else args.fis_batch_cifar)
        samples = {k: [] for k in ("unit", "trace", "quad", "fis", "max_eig", "orig_trace", "orig_quad", "orig_fis")}
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
        if not args.no_memory:
            row["memory"] = {}
            for metric in ("trace", "quad", "max_eig", "fis"):
                b = batch if metric != "fis" else fis_batch
                cmd = [sys.executable, __file__, "--measure-memory", name, metric, str(b), "--threads", str(args.threads)]
                if args.smoke:
                    cmd.append("--smoke")
                out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
                row["memory"][metric] = {"batch": b, **json.loads(out.strip().splitlines()[-1])}
        results["models"][name] = row
    return results


def table(results: dict) -> str:
    lines = [
        "| model | params | metric | original ms/sample | exact ms/sample (batch) | speed-up | units/sample | peak RSS growth MiB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, row in results["models"].items():
        ms = row["ms_per_sample"]
        mem = row.get("memory", {})
        for metric, orig, sp, un in (
            ("trace", "orig_trace", "trace", "trace"),
            ("quadratic form (blockwise)", "orig_quad", "quad_blockwise", "quad_blockwise"),
            ("sensitivity (blockwise)", "orig_fis", "fis_blockwise", "fis_blockwise"),
            ("max eigenvalue", None, None, "max_eig"),
        ):
            key = {"trace": "trace", "quad_blockwise": "quad", "fis_blockwise": "fis", "max_eig": "max_eig"}[un]
            b = row["fis_batch"] if key == "fis" else row["batch"]
            growth = mem.get(key, {}).get("growth_mib")
            lines.append(
                f"| {name} | {row['params']} | {metric} | {ms[orig]:.2f} | {ms[key]:.3f} ({b}) | "
                + (f"{row['speedup_vs_original'][sp]:.1f}x" if sp else "-")
                + f" | {row['units_per_sample'][un]:.1f} | "
                + ("-" if growth is None else f"{growth:.0f}")
                + " |"
                if orig
                else f"| {name} | {row['params']} | {metric} | - | {ms[key]:.3f} ({b}) | "
                f"{row['max_eig_over_trace']:.2f}x trace | {row['units_per_sample'][un]:.1f} | "
                + ("-" if growth is None else f"{growth:.0f}")
                + " |"
            )
        lines.append(
            f"| {name} | | trace + quadratic form | | {ms['trace'] + ms['quad']:.3f} | | "
            f"{row['units_per_sample']['trace_plus_quad']:.1f} | |"
        )
        lines.append(f"| {name} | | unit: batched forward+backward | | {ms['unit']:.3f} | | 1 | |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, runs in seconds")
    parser.add_argument("--batch", type=int, default=None, help="batch of the exact metrics (default 256)")
    parser.add_argument("--fis-batch", type=int, default=None, help="batch of the exact sensitivity (SmallCNN)")
    parser.add_argument(
        "--fis-batch-cifar", type=int, default=None, help="batch of the exact sensitivity on CifarCNN (default 8)"
    )
    parser.add_argument("--n-orig", type=int, default=None, help="samples for the original (default 8)")
    parser.add_argument("--repeats", type=int, default=None, help="repeats, median reported (default 3)")
    parser.add_argument("--orig-fis-repeats", type=int, default=1, help="repeats of the (slow) original FIS")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    parser.add_argument("--json", type=Path, default=None, help="also write the JSON here")
    parser.add_argument("--measure-memory", nargs=3, metavar=("MODEL", "METRIC", "BATCH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure_memory:
        name, metric, batch = args.measure_memory
        print(json.dumps(measure_memory(name, metric, int(batch), args.smoke, args.threads)))
        return
    args.batch = args.batch or (4 if args.smoke else 256)
    args.fis_batch = args.fis_batch or (4 if args.smoke else 256)
    args.fis_batch_cifar = args.fis_batch_cifar or (2 if args.smoke else 8)
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
