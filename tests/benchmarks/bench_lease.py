"""Benchmark: do LeaSE's explanations carry information, and LeaSE vs NNI's DARTS, measured in one run.

Part ``explanations`` (held-out explainers: a fixed architecture of :class:`LeaseCellSpace` trained on the
digits training split, one per seed; measured on the test split):

1. *stable*: per-sample cosine between the listener inputs from two random starts, and between their
   explanation parts (``z - x`` for the default reweighting ``z = x (1 - δ/max|δ|)``, ``z`` for the
   product ``δ x``);
2. *faithful*: deleting (zeroing) the ``k`` entries with the largest importance ``-δ x`` lowers the
   explainer's probability of its own prediction by ``drop_expl(k)``; the ratio ``drop_expl / drop_bright``
   to deleting the ``k`` brightest entries, for ``k`` in 1, 2, 4, 8 (ties broken at random), next to two
   references: gradient × input, and occlusion (each entry's own single-entry deletion effect, the best
   one-entry-at-a-time ranking);
3. *useful*: the default listener trained (15 epochs) and tested on explanations, on the random-mask
   control ``ε r x`` (``r`` = ±1 at random), on the same weighting with a random ``δ`` of the same L2
   norm, and on plain ``x``.

Each for the defaults of ``pgd_explain`` / ``LeaSE()`` and for the alternative settings the LeaSE paper's
formulas also allow (variant ``"earlier defaults"``: soft target, L∞ ball of 8/255, 3 sign steps from a
random start, product ``δ x``).

Part ``search`` (for each seed, digits, :class:`LeaseCellSpace`): NNI's ``DARTS``, ``LeaSE()`` at its
defaults and LeaSE with the random-mask control in place of the explanations; the time of every search
epoch (Lightning callback; the first epoch is warm-up), then each exported architecture retrained from
scratch and its test accuracy.

Prints tables and a JSON document (``--json PATH`` also writes it). ``--smoke`` runs a tiny version in
seconds (used by the test suite).

Usage::

    python tests/benchmarks/bench_lease.py                      # both parts (tens of minutes on 1 core)
    python tests/benchmarks/bench_lease.py --part explanations
    python tests/benchmarks/bench_lease.py --smoke
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from nni.nas.evaluator.pytorch import Classification, DataLoader
from nni.nas.execution import SequentialExecutionEngine
from nni.nas.space import RawFormatModelSpace
from nni.nas.strategy import DARTS

from art_fisher.models._architectures import train_model
from nni_lease._data import DigitsDataset
from nni_lease._spaces import LeaseCellSpace
from nni_lease.core._config import LeaseConfig
from nni_lease.core._explain import Explanation, listener_input, pgd_explain
from nni_lease.core._listener import default_listener
from nni_lease.core._step import LeaseStep
from nni_lease.oneshot._retrain import retrain
from nni_lease.oneshot._strategy import LeaSE

#: The explanation settings compared: the defaults and the alternatives (the key names the JSON entry).
VARIANTS: dict[str, dict[str, Any]] = {
    "defaults": LeaseConfig().explanation_kwargs(),
    "earlier defaults": {
        "epsilon": 8 / 255,
        "norm": "linf",
        "steps": 3,
        "step_size": 2.5 * 8 / 255 / 3,
        "random_start": 1.0,
        "objective": "soft_prediction",
        "weighting": "product",
    },
}
HELD_OUT_ARCHITECTURE = {"op0": "conv_3x3", "op1": "sep_conv_3x3", "op2": "dil_conv_3x3", "input1": [1], "input2": [2]}
DELETION_K = (1, 2, 4, 8)


# ----------------------------------------------------------------------------- part 1: explanations
def _explainer(cfg: dict[str, Any], seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = LeaseCellSpace(**cfg["space"]).freeze(HELD_OUT_ARCHITECTURE)
    train = DigitsDataset("train", seed=cfg["split_seed"], limit=cfg["limit"])
    train_model(model, train.x.numpy(), train.y.numpy(), epochs=cfg["explainer_epochs"], lr=3e-3, seed=seed)
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


def _cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return F.cosine_similarity(a.flatten(1), b.flatten(1), dim=1, eps=1e-12)


def _explanation_part(expl: Explanation, weighting: str) -> torch.Tensor:
    return expl.explained - expl.x if weighting == "reweight" else expl.explained


def _deletion_drops(model: torch.nn.Module, x: torch.Tensor, scores: torch.Tensor, seed: int) -> list[float]:
    """Mean drop of p(ŷ | x) when the k highest-scoring entries are set to 0, for k in DELETION_K."""
    with torch.no_grad():
        probs = F.softmax(model(x), -1)
        yhat = probs.argmax(-1, keepdim=True)
        p0 = probs.gather(1, yhat)[:, 0]
        jitter = torch.rand(x.shape, generator=torch.Generator().manual_seed(seed)) * 1e-9
        drops = []
        for k in DELETION_K:
            idx = (scores + jitter).flatten(1).topk(k, dim=1).indices
            deleted = x.flatten(1).clone().scatter_(1, idx, 0.0).view_as(x)
            drops.append(float((p0 - F.softmax(model(deleted), -1).gather(1, yhat)[:, 0]).mean()))
    return drops


def _reference_scores(model: torch.nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Gradient × input of log p(ŷ), and occlusion: each entry's own deletion effect on p(ŷ)."""
    xg = x.clone().requires_grad_(True)
    logits = model(xg)
    yhat = logits.argmax(-1, keepdim=True)
    (grad,) = torch.autograd.grad(F.log_softmax(logits, -1).gather(1, yhat).sum(), xg)
    with torch.no_grad():
        p0 = F.softmax(logits.detach(), -1).gather(1, yhat)[:, 0]
        flat = x.flatten(1)
        occlusion = torch.zeros_like(flat)
        for i in range(flat.shape[1]):
            deleted = flat.clone()
            deleted[:, i] = 0.0
            occlusion[:, i] = p0 - F.softmax(model(deleted.view_as(x)), -1).gather(1, yhat)[:, 0]
    return {"gradient x input": grad * x, "occlusion": occlusion.view_as(x)}


def _listener_accuracy(
    model: torch.nn.Module, make_input: Callable[[torch.Tensor], torch.Tensor], cfg: dict[str, Any], seed: int
) -> float:
    train = DigitsDataset("train", seed=cfg["split_seed"], limit=cfg["limit"])
    test = DigitsDataset("test", seed=cfg["split_seed"], limit=cfg["limit"])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        listener = default_listener(train.input_shape, train.n_classes)
    opt = torch.optim.Adam(listener.parameters(), lr=1e-3)
    order = torch.Generator().manual_seed(seed)
    for _ in range(cfg["listener_epochs"]):
        listener.train()
        perm = torch.randperm(len(train), generator=order)
        for start in range(0, len(train), 64):
            idx = perm[start : start + 64]
            opt.zero_grad()
            F.cross_entropy(listener(make_input(train.x[idx])), train.y[idx]).backward()
            opt.step()
    listener.eval()
    z = make_input(test.x)
    with torch.no_grad():
        return float((listener(z).argmax(-1) == test.y).float().mean())


def _random_sign(x: torch.Tensor, eps: float, gen: torch.Generator) -> torch.Tensor:
    return eps * (2.0 * torch.randint(0, 2, x.shape, generator=gen, dtype=x.dtype) - 1.0)


def _random_like_norm(delta: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    r = torch.randn(delta.shape, generator=gen, dtype=delta.dtype)
    norms = delta.flatten(1).norm(dim=1) / r.flatten(1).norm(dim=1).clamp_min(1e-12)
    return r * norms.view((-1,) + (1,) * (delta.dim() - 1))


def run_explanations(cfg: dict[str, Any]) -> dict[str, Any]:
    """Part 1: the three measures for each variant and seed."""
    test = DigitsDataset("test", seed=cfg["split_seed"], limit=cfg["limit"])
    x = test.x
    rows: list[dict[str, Any]] = []
    for seed in cfg["seeds"]:
        model = _explainer(cfg, seed)
        with torch.no_grad():
            explainer_acc = float((model(x).argmax(-1) == test.y).float().mean())
        refs = _reference_scores(model, x)
        bright = _deletion_drops(model, x, x, seed)
        ref_ratios = {
            name: [d / b for d, b in zip(_deletion_drops(model, x, s, seed), bright, strict=False)]
            for name, s in refs.items()
        }
        row: dict[str, Any] = {
            "seed": seed,
            "explainer_test_accuracy": explainer_acc,
            "bright_drops": bright,
            "reference_ratios": ref_ratios,
            "variants": {},
        }
        plain = _listener_accuracy(model, lambda xb: xb, cfg, seed)
        control_gen = torch.Generator().manual_seed(1000 + seed)
        control = _listener_accuracy(model, lambda xb: _random_sign(xb, 8 / 255, control_gen) * xb, cfg, seed)
        row["listener_plain"], row["listener_random_mask"] = plain, control
        for name, kwargs in VARIANTS.items():
            one = pgd_explain(model, x, generator=torch.Generator().manual_seed(1), **kwargs)
            two = pgd_explain(model, x, generator=torch.Generator().manual_seed(2), **kwargs)
            cos_input = _cosine(one.explained, two.explained)
            cos_part = _cosine(_explanation_part(one, kwargs["weighting"]), _explanation_part(two, kwargs["weighting"]))
            drops = _deletion_drops(model, x, one.importance, seed)
            abs_drops = _deletion_drops(
                model, x, one.explained.abs() if kwargs["weighting"] == "product" else (one.delta * x).abs(), seed
            )
            with torch.no_grad():
                flips = float((model(x + one.delta).argmax(-1) != model(x).argmax(-1)).float().mean())
            gen = torch.Generator().manual_seed(2000 + seed)
            explained = _listener_accuracy(
                model, lambda xb: pgd_explain(model, xb, generator=gen, **kwargs).explained, cfg, seed
            )
            rand_gen = torch.Generator().manual_seed(3000 + seed)
            matched = _listener_accuracy(
                model,
                lambda xb: listener_input(
                    _random_like_norm(pgd_explain(model, xb, generator=rand_gen, **kwargs).delta, rand_gen),
                    xb,
                    kwargs["weighting"],
                ),
                cfg,
                seed,
            )
            row["variants"][name] = {
                "cosine_listener_input_mean": float(cos_input.mean()),
                "cosine_explanation_part_mean": float(cos_part.mean()),
                "cosine_explanation_part_p10": float(cos_part.quantile(0.1)),
                "deletion_ratios": [d / b for d, b in zip(drops, bright, strict=False)],
                "deletion_ratios_abs_delta_x": [d / b for d, b in zip(abs_drops, bright, strict=False)],
                "saturated_fraction": float((one.delta.abs() >= 0.999 * kwargs["epsilon"]).float().mean()),
                "prediction_flips": flips,
                "listener_explanations": explained,
                "listener_random_delta_same_weighting": matched,
            }
            print(
                f"  seed {seed} {name:16s}: cosine {float(cos_part.mean()):.3f}, deletion ratios "
                + " ".join(f"{r:.2f}" for r in row["variants"][name]["deletion_ratios"])
                + f", listener {explained:.4f} (random mask {control:.4f}, plain {plain:.4f})",
                flush=True,
            )
        rows.append(row)
    return {"rows": rows, "summary": _summarise_explanations(rows)}


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    values = [float(v) for v in values]
    if any(v != v for v in values):  # NaN (a metric the strategy does not log, e.g. DARTS's listener)
        return float("nan"), float("nan")
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def _summarise_explanations(rows: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"deletion_k": list(DELETION_K)}
    for key in ("listener_plain", "listener_random_mask"):
        out[key] = _mean_std([r[key] for r in rows])
    for name in ("gradient x input", "occlusion"):
        out[f"deletion_ratios {name}"] = [
            statistics.fmean(r["reference_ratios"][name][i] for r in rows) for i in range(len(DELETION_K))
        ]
    for variant in VARIANTS:
        vs = [r["variants"][variant] for r in rows]
        ratios = [statistics.fmean(v["deletion_ratios"][i] for v in vs) for i in range(len(DELETION_K))]
        out[variant] = {
            "cosine_explanation_part": _mean_std([v["cosine_explanation_part_mean"] for v in vs]),
            "cosine_listener_input": _mean_std([v["cosine_listener_input_mean"] for v in vs]),
            "deletion_ratios": ratios,
            "deletion_ratio_mean_over_k": statistics.fmean(ratios),
            "deletion_ratios_abs_delta_x": [
                statistics.fmean(v["deletion_ratios_abs_delta_x"][i] for v in vs) for i in range(len(DELETION_K))
            ],
            "listener_explanations": _mean_std([v["listener_explanations"] for v in vs]),
            "listener_random_delta_same_weighting": _mean_std([v["listener_random_delta_same_weighting"] for v in vs]),
            "saturated_fraction": statistics.fmean(v["saturated_fraction"] for v in vs),
            "prediction_flips": statistics.fmean(v["prediction_flips"] for v in vs),
        }
    return out


# ----------------------------------------------------------------------------- part 2: search
class EpochTimer(pl.Callback):
    """Wall-clock and CPU seconds of every training epoch (CPU time is the steadier one on a shared machine)."""

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self.cpu_seconds: list[float] = []
        self._start = (0.0, 0.0)

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        self._start = (time.perf_counter(), time.process_time())

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        self.seconds.append(time.perf_counter() - self._start[0])
        self.cpu_seconds.append(time.process_time() - self._start[1])


@contextlib.contextmanager
def random_mask_explanations(epsilon: float = 8 / 255) -> Iterator[None]:
    """Inside the block LeaSE's explanations are the random-mask control ``ε r ⊙ x`` (no information)."""
    original = LeaseStep.explain

    def control(self: LeaseStep, explainer: Any, x: torch.Tensor, **kwargs: Any) -> Explanation:
        gen = kwargs.get("generator") or self.generator
        delta = _random_sign(x.detach().cpu(), epsilon, gen).to(x.device)
        return Explanation(delta=delta, explained=delta * x.detach(), x=x.detach())

    LeaseStep.explain = control  # type: ignore[method-assign]
    try:
        yield
    finally:
        LeaseStep.explain = original  # type: ignore[method-assign]


def _search(strategy: Any, cfg: dict[str, Any], seed: int) -> tuple[dict[str, Any], EpochTimer, dict[str, float]]:
    timer = EpochTimer()
    train = DigitsDataset("train", seed=cfg["split_seed"], limit=cfg["limit"])
    val = DigitsDataset("val", seed=cfg["split_seed"], limit=cfg["limit"])
    evaluator = Classification(
        learning_rate=cfg["learning_rate"],
        train_dataloaders=DataLoader(train, batch_size=cfg["batch_size"], shuffle=True),
        val_dataloaders=DataLoader(val, batch_size=cfg["batch_size"], shuffle=True),
        num_classes=10,
        max_epochs=cfg["epochs"],
        limit_train_batches=cfg["limit_batches"] or 1.0,
        callbacks=[timer],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    torch.manual_seed(seed)
    space = LeaseCellSpace(**cfg["space"])
    strategy.initialize(RawFormatModelSpace.from_model(space, evaluator), SequentialExecutionEngine())
    strategy.run()
    sample = next(strategy.list_models()).sample
    metrics = {
        k: float(v)
        for k, v in strategy.oneshot_module.trainer.callback_metrics.items()
        if "/" in k and not k.startswith("prob/")
    }
    return dict(sample), timer, metrics


def _retrain(sample: dict[str, Any], cfg: dict[str, Any], seed: int) -> float:
    torch.manual_seed(seed)
    space = LeaseCellSpace(**cfg["space"])
    result = retrain(
        space,
        sample,
        DigitsDataset("train", seed=cfg["split_seed"]),
        DigitsDataset("test", seed=cfg["split_seed"]),
        epochs=cfg["retrain_epochs"],
        learning_rate=cfg["learning_rate"],
        seed=seed,
    )
    return result.test_accuracy


STRATEGIES = ("darts", "lease", "lease random mask")


def run_search(cfg: dict[str, Any]) -> dict[str, Any]:
    """Part 2: DARTS, LeaSE and LeaSE with the random-mask control; time per epoch and retrained accuracy."""
    runs: list[dict[str, Any]] = []
    for seed in cfg["seeds"]:
        for name in STRATEGIES:
            arc_lr = cfg["arc_learning_rate"]
            strategy = (
                DARTS(arc_learning_rate=arc_lr) if name == "darts" else LeaSE(arc_learning_rate=arc_lr, seed=seed)
            )
            with random_mask_explanations() if name == "lease random mask" else contextlib.nullcontext():
                sample, timer, metrics = _search(strategy, cfg, seed)
            accuracy = _retrain(sample, cfg, seed)
            skip = 1 if len(timer.seconds) > 1 else 0  # first epoch: warm-up
            wall, cpu = statistics.fmean(timer.seconds[skip:]), statistics.fmean(timer.cpu_seconds[skip:])
            runs.append(
                {
                    "strategy": name,
                    "seed": seed,
                    "architecture": sample,
                    "epoch_seconds": timer.seconds,
                    "epoch_cpu_seconds": timer.cpu_seconds,
                    "mean_epoch_seconds": wall,
                    "mean_epoch_cpu_seconds": cpu,
                    "test_accuracy": accuracy,
                    "final_metrics": metrics,
                }
            )
            print(
                f"  seed {seed} {name:17s}: {wall:6.2f} s/epoch wall, {cpu:6.2f} s/epoch CPU, "
                f"retrained test accuracy {accuracy:.4f}, architecture {sample}",
                flush=True,
            )
    summary: dict[str, Any] = {}
    for name in STRATEGIES:
        mine = [r for r in runs if r["strategy"] == name]
        summary[name] = {
            "epoch_seconds": _mean_std([r["mean_epoch_seconds"] for r in mine]),
            "epoch_cpu_seconds": _mean_std([r["mean_epoch_cpu_seconds"] for r in mine]),
            "test_accuracy": _mean_std([r["test_accuracy"] for r in mine]),
            "listener_val_acc": _mean_std([r["final_metrics"].get("listener/val_acc", float("nan")) for r in mine]),
        }
    darts = [r for r in runs if r["strategy"] == "darts"]
    for name in STRATEGIES[1:]:
        mine = [r for r in runs if r["strategy"] == name]
        summary[name]["time_ratio_over_darts"] = statistics.fmean(
            a["mean_epoch_seconds"] / b["mean_epoch_seconds"] for a, b in zip(mine, darts, strict=False)
        )
        summary[name]["cpu_time_ratio_over_darts"] = statistics.fmean(
            a["mean_epoch_cpu_seconds"] / b["mean_epoch_cpu_seconds"] for a, b in zip(mine, darts, strict=False)
        )
    return {"runs": runs, "summary": summary}


# ----------------------------------------------------------------------------- output
def _pm(pair: Sequence[float], digits: int = 4) -> str:
    return f"{pair[0]:.{digits}f} ± {pair[1]:.{digits}f}"


def _tables(result: dict[str, Any]) -> str:
    lines: list[str] = []
    if "explanations" in result:
        s = result["explanations"]["summary"]
        ks = ", ".join(str(k) for k in s["deletion_k"])
        lines += [
            f"explanations (mean ± sd over seeds; deletion ratio vs brightest at k = {ks})",
            "",
            (
                "| explanation | restart cosine (explanation part) | restart cosine (listener input) | "
                "deletion ratio (mean over k) | per k | listener on explanations | same weighting, random δ |"
            ),
            "|---|---|---|---|---|---|---|",
        ]
        for variant in VARIANTS:
            v = s[variant]
            lines.append(
                f"| {variant} | {_pm(v['cosine_explanation_part'], 3)} | {_pm(v['cosine_listener_input'], 3)} | "
                f"{v['deletion_ratio_mean_over_k']:.2f} | "
                + " ".join(f"{r:.2f}" for r in v["deletion_ratios"])
                + f" | {_pm(v['listener_explanations'])} | {_pm(v['listener_random_delta_same_weighting'])} |"
            )
        lines += [
            "",
            (
                f"listener on the random-mask control ε·r⊙x: {_pm(s['listener_random_mask'])}; "
                f"on plain x: {_pm(s['listener_plain'])}"
            ),
            "references, deletion ratio per k: gradient x input "
            + " ".join(f"{r:.2f}" for r in s["deletion_ratios gradient x input"])
            + "; occlusion (best single-entry ranking) "
            + " ".join(f"{r:.2f}" for r in s["deletion_ratios occlusion"]),
            "",
        ]
    if "search" in result:
        s = result["search"]["summary"]
        lines += [
            (
                "| strategy | search s/epoch, wall | search s/epoch, CPU | ratio to DARTS (wall / CPU) | "
                "retrained test accuracy | listener val acc (last epoch) |"
            ),
            "|---|---|---|---|---|---|",
        ]
        for name in STRATEGIES:
            r = s[name]
            ratio = (
                "1" if name == "darts" else f"{r['time_ratio_over_darts']:.2f} / {r['cpu_time_ratio_over_darts']:.2f}"
            )
            lines.append(
                f"| {name} | {_pm(r['epoch_seconds'], 2)} | {_pm(r['epoch_cpu_seconds'], 2)} | {ratio} | "
                f"{_pm(r['test_accuracy'])} | {_pm(r['listener_val_acc'])} |"
            )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point; returns the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--part", choices=["all", "explanations", "search"], default="all")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, runs in seconds")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=8, help="search epochs")
    parser.add_argument("--retrain-epochs", type=int, default=15)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--json", default=None, help="also write the JSON result here")
    args = parser.parse_args(argv)
    cfg: dict[str, Any] = {
        "dataset": "digits",
        "split_seed": 0,
        "limit": None,
        "limit_batches": None,
        "batch_size": 64,
        "learning_rate": 3e-3,
        "arc_learning_rate": 3e-3,
        "epochs": args.epochs,
        "retrain_epochs": args.retrain_epochs,
        "explainer_epochs": 15,
        "listener_epochs": 15,
        "seeds": args.seeds,
        "threads": args.threads,
        "lease_settings": LeaseConfig().as_dict(),
        "space": {"in_channels": 1, "n_classes": 10, "width": 8, "cells": 2, "nodes": 3, "image_size": 8},
    }
    if args.smoke:
        cfg.update(
            limit=64,
            limit_batches=2,
            batch_size=16,
            epochs=2,
            retrain_epochs=1,
            explainer_epochs=1,
            listener_epochs=1,
            seeds=[0],
            space={**cfg["space"], "width": 4},
        )
    torch.set_num_threads(cfg["threads"])
    print(f"bench_lease ({args.part}): {len(cfg['seeds'])} seed(s)", flush=True)
    result: dict[str, Any] = {
        "benchmark": "bench_lease",
        "config": cfg,
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "torch": torch.__version__,
            "threads": cfg["threads"],
        },
    }
    if args.part in ("all", "explanations"):
        result["explanations"] = run_explanations(cfg)
    if args.part in ("all", "search"):
        result["search"] = run_search(cfg)
    print(_tables(result))
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        with open(args.json, "w") as fh:
            fh.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
