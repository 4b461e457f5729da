"""Detection as the field judges it: every detector of the registry over several seeds, at one operating point.

Runs :func:`art_fisher.evaluation.evaluate_seeds` (the full protocol: FGSM, PGD, DeepFool, C&W L2; every
default detector, the stacked detector's leave-one-out ablation, the detection-aware security curve and,
unless ``--no-adaptive``, the adaptive attacks on every differentiable detector) and reports, as mean ±
sd over the seeds:

- the unseen-attack and clean-only summary (ROC-AUC, TPR at the target FPR, achieved FPR), the
  deployment cases, first;
- the goals of the detection work: the best Fisher-based detector's unseen-attack ROC-AUC margin over
  every baseline (goal: >= 0.03) and its TPR at the target FPR against every baseline's (goal: not
  below); adaptive evasion at the target FPR for every differentiable detector;
- each ``fisher_input*`` detector's unseen-attack ROC-AUC minus ``max_softmax_clean``'s, per seed (goal:
  >= +0.02 for the best), and every detector's unseen-attack ROC-AUC per seed (``per_seed_unseen_auc``);
- the ablation: unseen-attack ROC-AUC and TPR of ``stacked`` minus ``stacked_without_<part>`` (and of
  ``stacked_clean`` minus ``stacked_clean_without_<part>``) per seed
  (what each part adds), mean ± sd.

Writes JSON to ``tests/benchmarks/results/bench_detection.json`` (``bench_detection_mnist.json`` for
MNIST) and the reports to ``--output``. Not collected by pytest; ``--smoke`` runs a tiny configuration.

    python tests/benchmarks/bench_detection.py                      # digits, seeds 0,1,2
    python tests/benchmarks/bench_detection.py --dataset mnist --data-dir /work/data
    python tests/benchmarks/bench_detection.py --smoke
    python tests/benchmarks/bench_detection.py --data /work/data/lfw_faces/lfw_faces.npz --n-samples 100 --epochs 30

MNIST is read from ``--data-dir`` (idx files or ``mnist.npz``); nothing is downloaded at run time. To
get it: ``python /work/shared/data/fetch_mnist.py DIR``. scikit-image's LFW face / non-face subset:
``python tests/benchmarks/fetch_lfw_faces.py DIR``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).parent / "results"


#: The detectors built on Fisher features (the others are the baselines).
FISHER_PREFIXES = ("fisher_", "stacked")


def _fmt(mean: float, sd: float, n: int) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "n/a"
    return f"{mean:.3f}" if n < 2 else f"{mean:.3f} ± {sd:.3f}"


def _mean_sd(values: list[float]) -> dict:
    v = np.array([x for x in values if x is not None and not math.isnan(x)], dtype=float)
    return {
        "mean": float(v.mean()) if len(v) else float("nan"),
        "sd": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
        "n": len(v),
    }


def goals(result, target_fpr: float) -> dict:
    """Best Fisher-based detector (by mean unseen AUC) against every baseline, per seed and over seeds."""
    from art_fisher.evaluation import DETECTORS

    summary = {r["detector"]: r for r in result.summary}
    fisher = [d for d in summary if d.startswith(FISHER_PREFIXES) and DETECTORS[d].in_default]
    baselines = [d for d in summary if not d.startswith(FISHER_PREFIXES)]
    if not fisher or not baselines:
        return {}
    best = max(fisher, key=lambda d: summary[d]["unseen_auc_mean"])
    per_seed = [{r["detector"]: r for r in run.unseen_summary()} for run in result.runs]
    rows = []
    for b in baselines:
        auc_margin = _mean_sd([s[best]["unseen_auc"] - s[b]["unseen_auc"] for s in per_seed if b in s])
        tpr_margin = _mean_sd([s[best]["unseen_tpr"] - s[b]["unseen_tpr"] for s in per_seed if b in s])
        rows.append(
            {
                "baseline": b,
                "auc_margin": auc_margin,
                "tpr_margin": tpr_margin,
                "auc_goal_met": auc_margin["mean"] >= 0.03,
                "tpr_goal_met": tpr_margin["mean"] >= 0.0,
            }
        )
    adaptive = [
        {
            "detector": r["detector"],
            "attack": r["attack"],
            "evasion_rate": _pick(r, "evasion_rate"),
            "clean_fpr": _pick(r, "clean_fpr"),
        }
        for r in result.adaptive
    ]
    return {
        "best_fisher": best,
        "target_fpr": target_fpr,
        "against_baselines": rows,
        "auc_goal_met": all(r["auc_goal_met"] for r in rows),
        "tpr_goal_met": all(r["tpr_goal_met"] for r in rows),
        "adaptive_at_target_fpr": adaptive,
    }


def _pick(row: dict, metric: str) -> dict:
    return {"mean": row[f"{metric}_mean"], "sd": row[f"{metric}_sd"], "n": row[f"{metric}_n"]}


def ablation(result) -> list[dict]:
    """Per variant and part: stacked(_clean) minus stacked(_clean)_without_<part>, per seed then mean ± sd.

    Unseen-attack ROC-AUC and TPR, and (supervised only) same-attack ROC-AUC.
    """
    from art_fisher.detection._stacked import PARTS

    per_seed = [{r["detector"]: r for r in run.unseen_summary()} for run in result.runs]
    out = []
    for variant in ("stacked", "stacked_clean"):
        for part in PARTS:
            name = f"{variant}_without_{part}"
            if not all(variant in s and name in s for s in per_seed):
                continue

            def added(key: str) -> dict:
                return _mean_sd([s[variant][key] - s[name][key] for s in per_seed])

            row = {
                "variant": variant,
                "part": part,
                "unseen_auc_added": added("unseen_auc"),
                "unseen_tpr_added": added("unseen_tpr"),
            }
            if variant == "stacked":
                row["same_attack_auc_added"] = added("same_attack_auc")
            out.append(row)
    return out


def input_fisher_vs_confidence(result) -> dict:
    """Each input-Fisher detector's unseen ROC-AUC minus ``max_softmax_clean``'s, per seed; the best by mean."""
    per_seed = [{r["detector"]: r for r in run.unseen_summary()} for run in result.runs]
    names = [d for d in per_seed[0] if d.startswith("fisher_input")]
    if "max_softmax_clean" not in per_seed[0] or not names:
        return {}
    rows = []
    for d in names:
        diffs = [s[d]["unseen_auc"] - s["max_softmax_clean"]["unseen_auc"] for s in per_seed]
        rows.append(
            {
                "detector": d,
                "unseen_auc": _mean_sd([s[d]["unseen_auc"] for s in per_seed]),
                "minus_max_softmax_clean": _mean_sd(diffs),
                "per_seed_difference": diffs,
            }
        )
    best = max(rows, key=lambda r: r["unseen_auc"]["mean"])
    return {
        "rows": rows,
        "best": best["detector"],
        "goal_met": best["minus_max_softmax_clean"]["mean"] >= 0.02,
        "max_softmax_clean": _mean_sd([s["max_softmax_clean"]["unseen_auc"] for s in per_seed]),
    }


def per_seed_unseen(result) -> dict:
    """Every detector's unseen-attack ROC-AUC, one value per seed."""
    per_seed = [{r["detector"]: r["unseen_auc"] for r in run.unseen_summary()} for run in result.runs]
    return {d: [s.get(d) for s in per_seed] for d in per_seed[0]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=("digits", "mnist"), default="digits")
    parser.add_argument("--data-dir", default=None, help="MNIST folder (idx files or mnist.npz)")
    parser.add_argument("--data", default=None, help="an .npz (x_train, y_train, x_test, y_test) instead of --dataset")
    parser.add_argument("--eps", type=float, default=None, help="FGSM / PGD budget (default: per data set)")
    parser.add_argument("--no-ablation", action="store_true", help="skip the stacked detector's ablation variants")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default: %(default)s)")
    parser.add_argument("--n-samples", type=int, default=300, help="images attacked per seed (default: %(default)s)")
    parser.add_argument("--attacks", default="fgsm,pgd,deepfool,cw_l2")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--target-fpr", type=float, default=0.05)
    parser.add_argument("--no-adaptive", action="store_true", help="skip the adaptive attacks")
    parser.add_argument("--detectors", default=None, help="comma-separated registry names (default: the default set)")
    parser.add_argument("--output", default=None, help="report folder (default: a temporary one)")
    parser.add_argument("--json", default=None, help="JSON path (default: tests/benchmarks/results/...)")
    parser.add_argument("--smoke", action="store_true", help="tiny configuration (under a minute); writes no results")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    from art_fisher.detection._stacked import PARTS
    from art_fisher.evaluation import evaluate_seeds

    if args.dataset == "mnist" and (args.data_dir is None or not Path(args.data_dir).exists()):
        print(
            "MNIST needs --data-dir DIR with the idx files or mnist.npz; get it with "
            "`python /work/shared/data/fetch_mnist.py DIR`.",
            file=sys.stderr,
        )
        return 2
    kwargs = {
        "dataset": args.dataset,
        "data_dir": args.data_dir,
        "attacks": args.attacks.split(","),
        "n_samples": args.n_samples,
        "epochs": args.epochs,
        "target_fpr": args.target_fpr,
        "adaptive": not args.no_adaptive,
        "eps": args.eps,
    }
    name = args.dataset
    if args.data is not None:
        kwargs.update(data=args.data, dataset="digits", data_dir=None)
        name = Path(args.data).stem
    extra = [f"{variant}_without_{p}" for variant in ("stacked", "stacked_clean") for p in PARTS]
    extra += ["fisher_input_top", "fisher_input_top_clean"]  # the paper's score alone: the trace's ablation
    if args.detectors:  # adaptive attacks refuse named detectors without gradients: those run as extras
        from art_fisher.evaluation import DETECTORS

        named = args.detectors.split(",")
        kwargs["detectors"] = [d for d in named if DETECTORS[d].no_gradient is None]
        extra = [d for d in named if DETECTORS[d].no_gradient is not None] + extra
    if args.no_ablation:
        extra = []
    seeds = args.seeds
    if args.smoke:  # differentiable named detectors (adaptive refuses others by name); the stacked ones as extras
        seeds = "0"
        kwargs.update(
            attacks=["fgsm", "pgd"],
            n_samples=24,
            epochs=2,
            adaptive=True,
            detectors=["fisher_combined", "fisher_input_clean", "max_softmax", "max_softmax_clean", "mahalanobis"],
        )
        extra = [
            "stacked",
            "stacked_clean",
            "stacked_without_fisher",
            "stacked_without_sensitivity",
            "stacked_clean_without_fisher",
            "stacked_without_input_fisher",
            "kd_bu",
            "feature_squeezing",
        ]
    output = Path(args.output) if args.output else Path(tempfile.mkdtemp(prefix="bench_detection_"))
    start = time.perf_counter()
    result = evaluate_seeds(
        seeds=seeds,
        output_dir=output,
        extra_detectors=extra,
        **kwargs,
    )
    seconds = time.perf_counter() - start
    settings = result.runs[0].settings
    payload = {
        "benchmark": "bench_detection",
        "dataset": name,
        "seeds": list(result.seeds),
        "command": " ".join(["python", "tests/benchmarks/bench_detection.py", *(argv or sys.argv[1:])]),
        "settings": {
            k: settings[k]
            for k in (
                "arch",
                "attacks",
                "eps",
                "n_samples",
                "epochs",
                "target_fpr",
                "n_detector_train_images",
                "n_detector_test_images",
            )
        },
        "clean_test_accuracy": _mean_sd([r.settings["clean_test_accuracy"] for r in result.runs]),
        "goals": goals(result, args.target_fpr),
        "ablation": ablation(result),
        "input_fisher_vs_confidence": input_fisher_vs_confidence(result),
        "per_seed_unseen_auc": per_seed_unseen(result),
        "unseen_summary": result.summary,
        "table": result.table,
        "adaptive": result.adaptive,
        "security_curve": result.security_curve,
        "seconds": seconds,
        "machine": {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "torch_threads": settings.get("torch_threads"),
        },
        "versions": settings.get("versions", {}),
    }
    print(f"{name}, seeds {list(result.seeds)}, {seconds:.0f} s; mean ± sd over seeds")
    print(result.format_table())
    g = payload["goals"]
    if g:
        print(f"\nbest Fisher-based detector on unseen attacks: {g['best_fisher']}")
        for r in g["against_baselines"]:
            a, t = r["auc_margin"], r["tpr_margin"]
            print(
                f"  vs {r['baseline']:<20} AUC {_fmt(a['mean'], a['sd'], a['n']):>15}  "
                f"TPR@{args.target_fpr:g} {_fmt(t['mean'], t['sd'], t['n']):>15}"
            )
        print(f"  goal AUC margin >= 0.03 over every baseline: {g['auc_goal_met']}; TPR not below: {g['tpr_goal_met']}")
    for r in payload["input_fisher_vs_confidence"].get("rows", []):
        a = r["minus_max_softmax_clean"]
        print(f"{r['detector']:<24} unseen AUC minus max_softmax_clean {_fmt(a['mean'], a['sd'], a['n'])}")
    for r in payload["ablation"]:
        a = r["unseen_auc_added"]
        print(f"ablation: {r['variant']:<13} {r['part']:<12} adds unseen AUC {_fmt(a['mean'], a['sd'], a['n'])}")
    if not args.smoke:
        path = (
            Path(args.json) if args.json else RESULTS / f"bench_detection{'' if name == 'digits' else '_' + name}.json"
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(_clean(payload), indent=1) + "\n")
        print(f"JSON: {path}; reports: {output}")
    else:
        print(json.dumps(_clean({"goals": payload["goals"], "ablation": payload["ablation"]}))[:2000])
    return 0


def _clean(obj):
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, np.generic):
        return _clean(obj.item())
    return obj


if __name__ == "__main__":
    sys.exit(main())
