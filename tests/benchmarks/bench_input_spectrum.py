"""Cost of ``fisher_input_spectrum`` against its floor, a naive per-class loop and power iteration.

On the evaluation's MNIST CNN (trained for one epoch on 10,000 MNIST images when ``--data-dir`` holds
MNIST, else on scikit-learn's digits upsampled to 28 × 28), for a batch of test images, each fastest of
``--repeats`` in one run:

- ``floor``: one batched forward pass and ``C − 1`` batched backward passes to the input, nothing else
  (the work every exact method needs);
- ``fisher_input_spectrum``: all ``C − 1`` eigenpairs (eigenvectors included);
- ``batched_grads``: the same rows ``Wᵀ Jₓ`` from one vmapped backward (``is_grads_batched=True``);
- ``per_class_loop``: the naive algorithm: per sample, one backward pass per class for ``Jₓ`` (C × D),
  then the same C × C eigensolve;
- ``dense``: per sample, ``G = Jₓᵀ S Jₓ`` formed (D × D) and ``eigh`` (on a few samples, per sample);
- ``power_iteration``: the paper's method for the top eigenpair, one JVP and one VJP per iteration
  (``G v = Jₓᵀ S (Jₓ v)``), run until every sample's eigenvalue is within ``1e-4`` (relative) of the
  exact one in the same dtype (float32): the number of iterations that takes, and its time (NaN if 300
  iterations do not get there).

Writes ``tests/benchmarks/results/bench_input_spectrum.json``; ``--smoke`` runs 8 images on digits.

    python tests/benchmarks/bench_input_spectrum.py --data-dir /work/data/mnist
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results"


def _best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def _model(data_dir: str | None):
    from art_fisher.data import load_dataset
    from art_fisher.models import build_model, train_model

    torch.manual_seed(0)
    model = build_model("mnist_cnn", in_channels=1, n_classes=10)
    if data_dir and Path(data_dir).exists():
        train, test = (
            load_dataset("mnist", data_dir=data_dir, split="train"),
            load_dataset("mnist", data_dir=data_dir, split="test"),
        )
        source = "mnist"
        x_train, y_train, x_test = train.x[:10000], train.y[:10000], test.x
    else:
        digits = load_dataset("digits")
        up = torch.nn.functional.interpolate(torch.as_tensor(digits.x, dtype=torch.float32), size=28).numpy()
        source = "digits upsampled"
        x_train, y_train, x_test = up[:1400], digits.y[:1400], up[1400:]
    train_model(model, x_train, y_train, epochs=1, seed=0)
    return model.eval(), torch.as_tensor(x_test, dtype=torch.float32), source


def _floor(model, x: torch.Tensor) -> None:
    from art_fisher.metrics._basis import factor

    xr = x.detach().requires_grad_(True)
    z = model(xr)
    w = factor(torch.softmax(z, -1).detach())
    for j in range(w.shape[-1]):
        torch.autograd.grad(z, xr, grad_outputs=w[..., j], retain_graph=True)


def _batched(model, x: torch.Tensor) -> torch.Tensor:
    from art_fisher.metrics._basis import factor

    xr = x.detach().requires_grad_(True)
    z = model(xr)
    w = factor(torch.softmax(z, -1).detach())  # (N, C, C - 1)
    rows = torch.autograd.grad(z, xr, grad_outputs=w.permute(2, 0, 1), is_grads_batched=True)[0]
    r = rows.transpose(0, 1).flatten(2)
    return torch.linalg.eigvalsh(r @ r.transpose(1, 2)).flip(-1)


def _per_class_loop(model, x: torch.Tensor) -> torch.Tensor:
    from art_fisher.metrics._basis import factor

    out = []
    for xi in x:
        xr = xi.unsqueeze(0).requires_grad_(True)
        z = model(xr)
        jac = torch.stack([torch.autograd.grad(z[0, c], xr, retain_graph=True)[0].flatten() for c in range(z.shape[1])])
        w = factor(torch.softmax(z, -1).detach())[0]
        m = w.T @ jac @ jac.T @ w
        out.append(torch.linalg.eigvalsh(m).flip(-1))
    return torch.stack(out)


def _dense(model, x: torch.Tensor) -> torch.Tensor:
    out = []
    for xi in x:
        jac = torch.func.jacrev(lambda t: model(t.unsqueeze(0))[0])(xi).flatten(1)  # (C, D)
        p = torch.softmax(model(xi.unsqueeze(0))[0], -1).detach()
        s = torch.diag(p) - torch.outer(p, p)
        out.append(torch.linalg.eigvalsh(jac.T @ s @ jac).flip(-1))
    return torch.stack(out)


def _power_iteration(model, x: torch.Tensor, exact: torch.Tensor, tol: float, max_iter: int) -> tuple[int, float]:
    """Iterations until every sample's top eigenvalue is within ``tol`` of ``exact``; (iterations, seconds)."""
    start = time.perf_counter()
    with torch.no_grad():
        p = torch.softmax(model(x), -1)
    v = torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
    v = v / v.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    for it in range(1, max_iter + 1):
        _, ju = torch.func.jvp(model, (x,), (v,))  # Jₓ v (N, C)
        su = p * ju - p * (p * ju).sum(1, keepdim=True)  # S Jₓ v
        _, vjp = torch.func.vjp(model, x)
        gv = vjp(su)[0]
        lam = (gv * v).flatten(1).sum(1)
        v = gv / gv.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
        if bool(((lam - exact).abs() <= tol * exact).all()):
            return it, time.perf_counter() - start
    return max_iter, float("nan")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--n", type=int, default=32, help="images per batch (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", default=str(RESULTS / "bench_input_spectrum.json"))
    parser.add_argument("--smoke", action="store_true", help="8 images, one repeat, digits; writes no results")
    args = parser.parse_args(argv)
    if args.smoke:
        args.n, args.repeats, args.data_dir = 8, 1, None
    torch.set_num_threads(1)
    from art_fisher import fisher_input_spectrum

    model, x_test, source = _model(args.data_dir)
    x = x_test[: args.n].contiguous()
    exact = fisher_input_spectrum(model.double(), x.double(), k=9, vectors=False).values
    model.float()
    ours = fisher_input_spectrum(model, x, k=9).values
    times = {
        "floor": _best(lambda: _floor(model, x), args.repeats),
        "fisher_input_spectrum": _best(lambda: fisher_input_spectrum(model, x, k=9), args.repeats),
        "batched_grads": _best(lambda: _batched(model, x), args.repeats),
        "per_class_loop": _best(lambda: _per_class_loop(model, x), max(1, args.repeats // 2)),
    }
    n_dense = 4
    times["dense_per_sample"] = _best(lambda: _dense(model, x[:n_dense]), 1) / n_dense * len(x)
    iterations, power_seconds = _power_iteration(model, x, ours[:, 0], 1e-4, 300)
    times["power_iteration_top1"] = power_seconds

    def rel(values: torch.Tensor, n: int) -> float:
        return float(((values - exact[:n].float()).abs() / exact[:n, :1].float()).max())

    errors = {
        "float32_vs_float64_rel": rel(ours, len(x)),
        "batched_grads_vs_float64_rel": rel(_batched(model, x), len(x)),
        "per_class_loop_vs_float64_rel": rel(_per_class_loop(model, x[:16]), 16),
    }
    floor = times["floor"]
    payload = {
        "benchmark": "bench_input_spectrum", "model": "mnist_cnn (1 epoch)", "data": source, "n": len(x),
        "seconds": times, "per_sample_ms": {k: 1e3 * v / len(x) for k, v in times.items()},
        "ratio_to_floor": {k: v / floor for k, v in times.items()},
        "power_iteration_iterations_to_1e-4": iterations, "max_relative_errors": errors,
        "machine": {"python": platform.python_version(), "platform": platform.platform(), "torch": torch.__version__,
                    "threads": torch.get_num_threads(), "load": os.getloadavg()},
    }  # fmt: skip
    print(f"{source}, batch {len(x)}, 1 thread, load {os.getloadavg()[0]:.1f}; fastest of {args.repeats}")
    for k, v in times.items():
        print(f"  {k:<24} {1e3 * v / len(x):9.3f} ms/sample  {v / floor:7.2f} x floor")
    print(f"  power iteration: {iterations} iterations to 1e-4 on every sample; errors {errors}")
    if args.smoke:
        print(json.dumps(payload)[:2000])
        return 0
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(payload, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
