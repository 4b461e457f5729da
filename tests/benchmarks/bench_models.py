"""Benchmark: the Fisher metrics on the common model families at CIFAR size, and the many-class option.

Models (:data:`FAMILIES`): one of each common family — torchvision's ResNet-18, MobileNetV2,
EfficientNet-B0 and RegNetX-400MF, timm's ConvNeXt-atto and ViT-Tiny (patch 4) — at 32×32 inputs, random
weights with random norm statistics, 10 classes, float32 (``pip install -e ".[models]"``, in an
environment of its own: see ``pyproject.toml``). ``--smoke`` uses the in-repo equivalents of
``tests/art_fisher/model_families.py`` at 16×16 and needs neither package.

Per model, side by side in one run, the timed calls interleaved (one round runs each once, ``--repeats``
rounds), each figure the fastest round with the spread of the rounds (per sample):

- exactness: the trace, λ_max and both quadratic forms of two inputs against a per-class autograd
  reference in float64 (largest relative difference, float32 results);
- ``fisher_trace``, ``fisher_quadratic_form``, ``fisher_max_eigenvalue`` at batch ``--batch``, and
  ``fisher_sensitivity`` of one image (or why it is not supported);
- the trace over the hook-covered parameters only, so that what goes through ``torch.func`` (ViT's class
  token and position embedding) shows as the difference;
- the floor: one forward pass and C − 1 backward passes down to the outputs of the layers the hook
  engine records, the model's own operations, at the trace's own chunk size, with nothing else computed;
- BackPACK's ``BatchDiagGGNExact`` (``extend(..., use_converter=True)``, CrossEntropyLoss with sum
  reduction; its per-sample GGN diagonals sum to the trace), or the error it raises on the model;
- peak memory of one ``fisher_trace`` call in a fresh process (Linux ``VmHWM`` growth over the resident
  size before the call), at 1, 4 and 8 times ``--batch`` samples: bounded by the chunking when it stops
  growing with the batch.

Many classes (ResNet-18, or the in-repo ResNet with ``--smoke``): the exact trace and its floor at each
of ``--classes``, with the head scaled so that the mean top-1 probability is ``--confidence`` (random
weights give an almost flat distribution over 1,000 classes, which no trained model has); at the largest
count, ``fisher_trace(tau=...)`` for each of ``--taus`` (time, relative error against the exact trace,
classes kept, dropped mass) and ``fisher_trace_estimate`` (``--samples`` draws: time, error, and the
ratio of the root-mean-square error to the root-mean-square stated standard error), also with at most
``--caps`` classes kept (a fixed budget of backward passes), with the ratio of each time to the exact
10-class trace.

Times are CPU seconds of this process at one thread (the default; wall-clock otherwise; both kept in
the JSON); the machine's load (``uptime``) before and after is recorded. Prints a table and the JSON;
``--json PATH`` writes it (default
``tests/benchmarks/results/bench_models.json`` unless ``--smoke``).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
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

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # the repository root (tests.art_fisher.model_families)

from art_fisher import metrics  # noqa: E402 - after the sys.path insert above
from art_fisher.metrics._engine import _chunking as chunking  # noqa: E402 - after the sys.path insert above
from art_fisher.metrics._engine._network import FunctionalNet  # noqa: E402 - after the sys.path insert above
from art_fisher.metrics._engine._recorder import find_coverage, recording  # noqa: E402 - after the sys.path insert above
from tests.art_fisher import model_families  # noqa: E402 - after the sys.path insert above
from tests.art_fisher.metrics_cases import per_class_reference  # noqa: E402 - after the sys.path insert above

#: name → (library, the library's model name).
FAMILIES = {
    "resnet18": ("torchvision", "resnet18"),
    "mobilenet_v2": ("torchvision", "mobilenet_v2"),
    "efficientnet_b0": ("torchvision", "efficientnet_b0"),
    "regnet_x_400mf": ("torchvision", "regnet_x_400mf"),
    "convnext_atto": ("timm", "convnext_atto"),
    "vit_tiny": ("timm", "vit_tiny_patch16_224"),
}
MODELS = tuple(FAMILIES)
#: The families with an in-repo equivalent (``--smoke``).
SMOKE = ("resnet18", "mobilenet_v2", "vit_tiny")
DEFAULT_JSON = ROOT / "tests" / "benchmarks" / "results" / "bench_models.json"


def build(name: str, n_classes: int, smoke: bool) -> tuple[nn.Module, tuple[int, ...]]:
    """The model (eval mode, random norms) and its input shape."""
    torch.manual_seed(0)
    if smoke:
        tiny = {"resnet18": model_families.TinyResNet, "mobilenet_v2": model_families.TinyMobileNetV2}
        if name in tiny:
            model = tiny[name](width=8, n_classes=n_classes)
        elif name == "vit_tiny":
            model = model_families.TinyViT(dim=16, depth=2, heads=2, patch=4, image=16, n_classes=n_classes)
        else:
            raise SystemExit(f"bench_models: no in-repo equivalent of {name!r} for --smoke")
        return model_families.randomise_norms(model), (3, 16, 16)
    library, model_name = FAMILIES[name]
    model = model_families.build_library_model(library, model_name, n_classes)
    if model is None:
        raise SystemExit(f'bench_models: {library} is missing: pip install -e ".[models]" (or use --smoke)')
    return model, (3, 32, 32)


def load() -> list[float]:
    """The machine's 1, 5 and 15 minute load averages (what ``uptime`` shows)."""
    return [round(v, 2) for v in os.getloadavg()]


def timed(fn) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one call of ``fn``."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def median_time(fn, n: int, repeats: int, clock: int) -> dict:
    """Per-sample seconds of ``fn`` (which processes ``n`` samples), median over ``repeats``."""
    fn()  # warm up
    runs = [timed(fn) for _ in range(repeats)]
    wall = statistics.median(r[0] for r in runs) / n
    cpu = statistics.median(r[1] for r in runs) / n
    return {"seconds": (wall, cpu)[clock], "wall": wall, "cpu": cpu}


def interleaved(fns: dict, n: int, repeats: int, clock: int) -> dict:
    """Per-sample seconds of each of ``fns`` (each processes ``n`` samples), the calls interleaved.

    One round calls every function once; each figure is the fastest of ``repeats`` rounds, with the
    spread (slowest over fastest) and every round kept.
    """
    for fn in fns.values():
        fn()  # warm up
    runs: dict = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            runs[k].append(timed(fn)[clock] / n)
    return {
        k: {"seconds": min(r), "spread": max(r) / min(r), "runs": r, "clock": ("wall", "cpu")[clock]}
        for k, r in runs.items()
    }


def exactness(model: nn.Module, x: torch.Tensor) -> dict:
    """Largest relative difference of each metric (float32) from a per-class float64 autograd reference."""
    ref = per_class_reference(copy.deepcopy(model).double(), x.double())
    got = {
        "trace": metrics.fisher_trace(model, x),
        "lam": metrics.fisher_max_eigenvalue(model, x),
        "quad": metrics.fisher_quadratic_form(model, x),
        "quad_blockwise": metrics.fisher_quadratic_form(model, x, blockwise=True),
    }
    return {k: float(((v.double() - ref[k]).abs() / ref[k].abs()).max()) for k, v in got.items()}


def floor_fn(model: nn.Module, x: torch.Tensor):
    """Forward + (C − 1) backward passes to the covered layers' outputs at the trace's chunk size.

    The model runs as written (the hook engine's own passes give eval-mode batch norms a cheaper backward,
    which the floor does not get).
    """
    net = FunctionalNet(model, [n for n, _ in model.named_parameters()], "logits")
    coverage = find_coverage(net, x)
    size = chunking.hook_chunk(coverage.out_numel, chunking.STREAMED_COPIES, x.element_size())
    modules = dict(model.named_modules())
    hooked = {m: modules[m] for m in coverage.rules if m in modules}

    def run():
        for sl in chunking.chunks(x.shape[0], size):
            xr = x[sl].detach().requires_grad_(True)
            with torch.enable_grad(), recording(hooked) as records:
                z = net.logits(net.selected(), xr)
            edges = [calls[0][2] for calls in records.values() if len(calls) == 1 and calls[0][2] is not None]
            n_cols = z.shape[1] - 1
            cot = torch.randn(z.shape[0], z.shape[1], n_cols)
            for j in range(n_cols):
                torch.autograd.grad(z, edges, cot[:, :, j], retain_graph=j < n_cols - 1)

    return run, coverage


def backpack_trace(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Per-sample ``tr F`` from BackPACK's ``BatchDiagGGNExact`` on a converted copy of ``model``."""
    from backpack import backpack, extend
    from backpack.extensions import BatchDiagGGNExact

    loss_fn = extend(nn.CrossEntropyLoss(reduction="sum"))
    out = model(x)
    loss = loss_fn(out, out.argmax(1))  # the exact GGN does not depend on the labels
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with backpack(BatchDiagGGNExact()):
            loss.backward()
    values = sum(p.diag_ggn_exact_batch.flatten(1).sum(1) for p in model.parameters())
    for p in model.parameters():
        p.grad = None
        del p.diag_ggn_exact_batch
    return values.detach()


def prepare_backpack(model: nn.Module, x: torch.Tensor, exact: torch.Tensor) -> tuple[dict, object]:
    """BackPACK's status on ``model`` (with its largest relative difference from ``exact``) and the call to time."""
    try:
        from backpack import extend

        twin = extend(copy.deepcopy(model), use_converter=True).eval()
        values = backpack_trace(twin, x)
    except ImportError:
        return {"status": "not installed (pip install -e '.[bench]')"}, None
    except Exception as exc:  # noqa: BLE001  (BackPACK refuses the model in many ways: record why)
        why = str(exc).splitlines()[0][:160] if str(exc) else ""
        return {"status": f"unsupported: {type(exc).__name__}: {why}"}, None
    rel = float(((values - exact).abs() / exact.abs()).max())
    return {"status": "ok", "max_rel_diff": rel}, lambda: backpack_trace(twin, x)


def measure_sensitivity(model: nn.Module, x: torch.Tensor, clock: int) -> dict:
    """Seconds per image of ``fisher_sensitivity`` (one call, after a first call that also tells whether it runs)."""
    try:
        first = timed(lambda: metrics.fisher_sensitivity(model, x))
    except NotImplementedError as exc:
        return {"status": f"unsupported: {str(exc).splitlines()[0][:200]}"}
    except RuntimeError as exc:
        return {"status": f"unsupported: {str(exc).splitlines()[0][:200]}"}
    second = timed(lambda: metrics.fisher_sensitivity(model, x))
    best = min(first[clock], second[clock]) / len(x)
    return {"status": "ok", "seconds": best, "runs": [first[clock] / len(x), second[clock] / len(x)]}


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def child_memory(name: str, batch: int, smoke: bool, threads: int) -> dict:
    """In a fresh process: peak resident memory growth during one ``fisher_trace`` call."""
    torch.set_num_threads(threads)
    model, shape = build(name, 10, smoke)
    x = torch.randn(batch, *shape)
    metrics.fisher_trace(model, x[:2])  # warm up
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        pass
    before = _status_kib("VmRSS")
    metrics.fisher_trace(model, x)
    peak = _status_kib("VmHWM")
    return {"batch": batch, "peak_rss_mib": peak / 1024, "growth_mib": (peak - before) / 1024}


def measure_memory(name: str, batch: int, smoke: bool, threads: int) -> dict:
    cmd = [sys.executable, __file__, "--child-memory", name, "--batch", str(batch), "--threads", str(threads)]
    proc = subprocess.run(
        cmd + (["--smoke"] if smoke else []), capture_output=True, text=True, timeout=900, check=False
    )
    if proc.returncode != 0:
        return {
            "batch": batch,
            "error": proc.stderr.strip().splitlines()[-1][:200] if proc.stderr.strip() else "failed",
        }
    return json.loads(proc.stdout.strip().splitlines()[-1])


def measure_model(args, name: str, clock: int) -> dict:
    model, shape = build(name, 10, args.smoke)
    x = torch.randn(args.batch, *shape)
    floor, coverage = floor_fn(model, x)
    row: dict = {
        "model": name,
        "library": "in-repo" if args.smoke else FAMILIES[name][0],
        "params": sum(p.numel() for p in model.parameters()),
        "input": list(shape),
        "classes": 10,
        "batch": args.batch,
        "torch_func_params": coverage.rest,
        "load_before": load(),
    }
    row["max_rel_error"] = exactness(model, x[:2])
    fns = {
        "trace": lambda: metrics.fisher_trace(model, x),
        "floor": floor,
        "quadratic_form": lambda: metrics.fisher_quadratic_form(model, x),
        "max_eigenvalue": lambda: metrics.fisher_max_eigenvalue(model, x),
    }
    hooked = [n for n, _ in model.named_parameters() if n not in coverage.rest]
    if coverage.rest and hooked:
        fns["trace_hook_params_only"] = lambda: metrics.fisher_trace(model, x, params=hooked)
    row["backpack"], bp = (
        ({"status": "skipped (--no-backpack)"}, None)
        if args.no_backpack
        else prepare_backpack(model, x, metrics.fisher_trace(model, x))
    )
    if bp is not None:
        fns["backpack_time"] = bp
    row.update(interleaved(fns, len(x), args.repeats, clock))
    if bp is not None:
        row["backpack"].update(row.pop("backpack_time"))
    row["sensitivity"] = measure_sensitivity(model, x[: args.sens_batch], clock)
    row["memory"] = (
        [measure_memory(name, b, args.smoke, args.threads) for b in (args.batch, 4 * args.batch, 8 * args.batch)]
        if args.memory
        else []
    )
    t, f = row["trace"]["seconds"], row["floor"]["seconds"]
    row["trace_over_floor"] = t / f
    if row["backpack"].get("status") == "ok":
        row["backpack_over_trace"] = row["backpack"]["seconds"] / t
    row["load_after"] = load()
    return row


def set_confidence(model: nn.Module, x: torch.Tensor, target: float) -> float:
    """Scale the last Linear layer so that the mean top-1 probability on ``x`` is ``target``; the scale."""
    head = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    w0, b0 = head.weight.detach().clone(), head.bias.detach().clone()
    lo, hi = 0.0, 1.0
    with torch.no_grad():

        def conf(s: float) -> float:
            head.weight.copy_(w0 * s)
            head.bias.copy_(b0 * s)
            return float(torch.softmax(model(x), -1).amax(-1).mean())

        while conf(hi) < target and hi < 1e6:
            hi *= 2
        for _ in range(40):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if conf(mid) < target else (lo, mid)
        conf(hi)
    return hi


def measure_classes(args, clock: int) -> dict:
    out: dict = {
        "model": "resnet18",
        "confidence": args.confidence,
        "rows": [],
        "tau": [],
        "estimate": [],
        "capped_estimate": [],
    }
    exact_big = None
    for n_classes in args.classes:
        model, shape = build("resnet18", n_classes, args.smoke)
        x = torch.randn(args.class_batch, *shape)
        scale = set_confidence(model, x, args.confidence)
        floor, _coverage = floor_fn(model, x)
        row = {
            "classes": n_classes,
            "head_scale": scale,
            "trace": median_time(lambda model=model, x=x: metrics.fisher_trace(model, x), len(x), 1, clock),
            "floor": median_time(floor, len(x), 1, clock),
        }
        out["rows"].append(row)
        if n_classes == max(args.classes):
            exact_big = metrics.fisher_trace(model, x)
            big_model, big_x = model, x
    base = out["rows"][0]["trace"]["seconds"]
    for row in out["rows"]:
        row["over_first"] = row["trace"]["seconds"] / base
    for cap in args.caps:  # a fixed budget of passes: kept classes capped, the rest sampled
        tau = min(args.taus)
        est = metrics.fisher_trace_estimate(big_model, big_x, tau=tau, samples=args.samples, max_kept=cap, seed=0)
        err = est.estimate - exact_big
        timing = median_time(
            lambda cap=cap, tau=tau: metrics.fisher_trace_estimate(
                big_model, big_x, tau=tau, samples=args.samples, max_kept=cap
            ),
            len(big_x),
            1,
            clock,
        )
        out["capped_estimate"].append(
            {
                "tau": tau,
                "max_kept": cap,
                "samples": args.samples,
                **timing,
                "over_first": timing["seconds"] / base,
                "mean_dropped_mass": float(est.dropped_mass.mean()),
                "max_rel_error": float((err / exact_big).abs().max()),
                "mean_rel_stderr": float((est.stderr / exact_big).mean()),
                "max_rel_gap_of_lower_bound": float(((exact_big - est.lower) / exact_big).max()),
                "rms_error_over_rms_stderr": float(err.pow(2).mean().sqrt() / est.stderr.pow(2).mean().sqrt()),
            }
        )
    for tau in args.taus:
        approx = metrics.fisher_trace(big_model, big_x, tau=tau)
        from art_fisher.metrics._top_mass import kept_classes

        _o, kept, q = kept_classes(big_model(big_x).detach(), tau)
        rel = (exact_big - approx) / exact_big
        timing = median_time(lambda tau=tau: metrics.fisher_trace(big_model, big_x, tau=tau), len(big_x), 1, clock)
        out["tau"].append(
            {
                "tau": tau,
                **timing,
                "over_first": timing["seconds"] / base,
                "max_rel_error": float(rel.max()),
                "mean_rel_error": float(rel.mean()),
                "min_rel_error": float(rel.min()),
                "mean_kept": float(kept.float().mean()),
                "max_kept": int(kept.max()),
                "mean_dropped_mass": float(q.mean()),
            }
        )
        est = metrics.fisher_trace_estimate(big_model, big_x, tau=tau, samples=args.samples, seed=0)
        err = est.estimate - exact_big
        timing = median_time(
            lambda tau=tau: metrics.fisher_trace_estimate(big_model, big_x, tau=tau, samples=args.samples),
            len(big_x),
            1,
            clock,
        )
        out["estimate"].append(
            {
                "tau": tau,
                "samples": args.samples,
                **timing,
                "over_first": timing["seconds"] / base,
                "max_rel_error": float(((est.estimate - exact_big) / exact_big).abs().max()),
                "mean_rel_stderr": float((est.stderr / exact_big).mean()),
                # near 1 when the stated standard errors have the size of the errors (over the samples)
                "rms_error_over_rms_stderr": float(err.pow(2).mean().sqrt() / est.stderr.pow(2).mean().sqrt()),
            }
        )
    return out


def table(results: dict) -> str:
    lines = [f"per sample, {results['clock']} seconds, {results['threads']} thread(s)"]
    lines.append(
        f"{'model':<16}{'trace':>9}{'floor':>9}{'tr/floor':>9}{'quad':>9}{'lam':>9}{'sens':>10}"
        f"{'backpack':>10}{'bp/tr':>7}{'MiB@B':>8}{'MiB@4B':>8}{'MiB@8B':>8}{'max rel err':>12}"
    )
    for row in results["models"]:
        sens = row["sensitivity"]
        bp = row["backpack"]
        mem = [m.get("growth_mib", float("nan")) for m in row["memory"]] or [float("nan")] * 3
        lines.append(
            f"{row['model']:<16}{row['trace']['seconds']:9.4f}{row['floor']['seconds']:9.4f}"
            f"{row['trace_over_floor']:9.2f}{row['quadratic_form']['seconds']:9.4f}{row['max_eigenvalue']['seconds']:9.4f}"
            f"{sens['seconds'] if sens['status'] == 'ok' else float('nan'):10.3f}"
            f"{bp['seconds'] if bp.get('status') == 'ok' else float('nan'):10.4f}"
            f"{row.get('backpack_over_trace', float('nan')):7.2f}{mem[0]:8.0f}{mem[1]:8.0f}{mem[2]:8.0f}"
            f"{max(row['max_rel_error'].values()):12.1e}"
        )
        if sens["status"] != "ok":
            lines.append(f"    sensitivity {sens['status']}")
        if bp.get("status") != "ok":
            lines.append(f"    backpack {bp.get('status')}")
        if "trace_hook_params_only" in row:
            lines.append(
                f"    trace without the torch.func parameters {row['torch_func_params']}: "
                f"{row['trace_hook_params_only']['seconds']:.4f}"
            )
    many = results.get("many_classes")
    if many:
        lines.append(f"many classes ({many['model']}, mean top-1 probability {many['confidence']}):")
        lines.extend(
            f"  C={row['classes']:<5} exact trace {row['trace']['seconds']:.4f}  floor "
            f"{row['floor']['seconds']:.4f}  x{row['over_first']:.1f} of C={many['rows'][0]['classes']}"
            for row in many["rows"]
        )
        lines.extend(
            f"  tau={row['tau']:<7g} {row['seconds']:.4f}  x{row['over_first']:.2f} of the first  "
            f"rel. error max {row['max_rel_error']:.2e} mean {row['mean_rel_error']:.2e}  "
            f"kept {row['mean_kept']:.1f} (max {row['max_kept']})  q {row['mean_dropped_mass']:.2e}"
            for row in many["tau"]
        )
        lines.extend(
            f"  estimate tau={row['tau']:<7g} max_kept={row['max_kept']} m={row['samples']} "
            f"{row['seconds']:.4f}  x{row['over_first']:.2f}  q {row['mean_dropped_mass']:.2f}  "
            f"rel. error max {row['max_rel_error']:.2e}  rel. stderr {row['mean_rel_stderr']:.2e}  "
            f"rms err / rms stderr {row['rms_error_over_rms_stderr']:.2f}"
            for row in many["capped_estimate"]
        )
        lines.extend(
            f"  estimate tau={row['tau']:<7g} m={row['samples']} {row['seconds']:.4f}  "
            f"x{row['over_first']:.2f}  rel. error max {row['max_rel_error']:.2e}  "
            f"rel. stderr {row['mean_rel_stderr']:.2e}  rms err / rms stderr {row['rms_error_over_rms_stderr']:.2f}"
            for row in many["estimate"]
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="in-repo small models, seconds")
    parser.add_argument("--models", default=None, help=f"default {','.join(MODELS)} ({','.join(SMOKE)} with --smoke)")
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--sens-batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--classes", default="10,100,1000")
    parser.add_argument("--class-batch", type=int, default=None)
    parser.add_argument("--taus", default="1e-2,1e-3")
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--caps", default="16", help="max_kept values of the capped estimate")
    parser.add_argument("--confidence", type=float, default=0.7)
    parser.add_argument("--no-backpack", action="store_true")
    parser.add_argument("--memory", action="store_true", help="peak memory at 1, 4 and 8 times --batch")
    parser.add_argument("--no-classes", action="store_true")
    parser.add_argument("--json", default=None)
    parser.add_argument("--child-memory", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.batch = args.batch or (4 if args.smoke else 8)
    args.models = args.models or ",".join(SMOKE if args.smoke else MODELS)
    args.repeats = args.repeats or (1 if args.smoke else 5)
    args.class_batch = args.class_batch or 4
    torch.set_num_threads(args.threads)
    if args.child_memory:
        print(json.dumps(child_memory(args.child_memory, args.batch, args.smoke, args.threads)))
        return
    args.classes = [int(c) for c in args.classes.split(",")]
    args.taus = [float(t) for t in args.taus.split(",")]
    args.caps = [int(c) for c in args.caps.split(",") if c]
    if args.smoke:
        args.classes = [10, 100]
        args.caps = [4]
    clock = 1 if args.threads == 1 else 0
    results = {
        "benchmark": "bench_models",
        "smoke": args.smoke,
        "threads": args.threads,
        "clock": "cpu" if clock else "wall",
        "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
        "load_before": load(),
        "models": [measure_model(args, name, clock) for name in args.models.split(",") if name],
    }
    if not args.no_classes:
        results["many_classes"] = measure_classes(args, clock)
    results["load_after"] = load()
    print(table(results))
    text = json.dumps(results, indent=2, default=lambda o: None if isinstance(o, float) and math.isnan(o) else str(o))
    print(text)
    path = args.json or (None if args.smoke else DEFAULT_JSON)
    if path:
        Path(path).write_text(text + "\n")


if __name__ == "__main__":
    main()
