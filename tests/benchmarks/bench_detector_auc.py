"""Held-out ROC-AUC of each Fisher metric and of the default detector against ART attacks, over seeds.

Not collected by pytest. For each seed: split the digits (1000 train / rest held out), train a SmallCNN,
attack correctly classified held-out digits with FGSM (eps 0.15), PGD (eps 0.15, 10 steps) and DeepFool,
keep successful attacks only, split the (clean, adversarial) pairs in halves (a digit and its
adversarial twin stay in the same half), fit on one half and report ROC-AUC on the other:

- one row per scalar metric (a ThresholdClassifier on that metric; its AUC is the raw metric's AUC with
  the direction learned on the fit half);
- ``sensitivity``: StandardScaler + LogisticRegression on its four map reductions (fewer pairs: slow);
- ``default``: the detector's default, StandardScaler + LogisticRegression on (trace, quadratic_form);
- ``default_log``: the same on log-features (for comparison only);
- ``max_softmax``: the free baseline, StandardScaler + LogisticRegression on the classifier's maximum
  softmax probability and prediction entropy (Hendrycks & Gimpel 2017).

Prints a table and a JSON line. ``--smoke`` runs a tiny configuration in seconds.

    python tests/benchmarks/bench_detector_auc.py --seeds 0 1 2 3 4
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler


def _auc(f_clean, f_adv, fit, test, estimator) -> float:
    X = np.concatenate([f_clean[fit], f_adv[fit]])
    y = np.r_[np.zeros(len(fit)), np.ones(len(fit))]
    est = clone(estimator).fit(X, y)
    Xt = np.concatenate([f_clean[test], f_adv[test]])
    yt = np.r_[np.zeros(len(test)), np.ones(len(test))]
    return float(roc_auc_score(yt, est.decision_function(Xt)))


def run_seed(seed: int, *, n_attack: int, sens_pairs: int, epochs: int, n_train: int) -> dict:
    from art.attacks.evasion import DeepFool, FastGradientMethod, ProjectedGradientDescent
    from art.estimators.classification import PyTorchClassifier

    from art_fisher.data._loaders import load_digits
    from art_fisher.detection._decision import default_estimator
    from art_fisher.detection._estimators import FisherFeatures, ThresholdClassifier
    from art_fisher.evaluation.detectors._baselines import softmax_features
    from art_fisher.models._architectures import SmallCNN, train_model

    data = load_digits()
    perm = np.random.default_rng(seed).permutation(len(data.x))
    train, held = perm[:n_train], perm[n_train:]
    torch.manual_seed(seed)
    model = train_model(SmallCNN(), data.x[train], data.y[train], epochs=epochs, seed=seed)
    clf = PyTorchClassifier(
        model, torch.nn.CrossEntropyLoss(), (1, 8, 8), 10, clip_values=(0.0, 1.0), device_type="cpu"
    )
    x, y = data.x[held][:n_attack], data.y[held][:n_attack]
    acc = float(np.mean(clf.predict(data.x[held]).argmax(1) == data.y[held]))
    ok = clf.predict(x).argmax(1) == y
    x, y = x[ok], y[ok]
    scalars = ["trace", "quadratic_form", "max_eigenvalue"]
    features = FisherFeatures(clf, metrics=scalars)
    sens = FisherFeatures(clf, metrics=("sensitivity",))
    f_clean = features.transform(x)
    p_clean = softmax_features(clf, x, 128)
    attacks = {
        "fgsm": FastGradientMethod(clf, eps=0.15),
        "pgd": ProjectedGradientDescent(clf, eps=0.15, eps_step=0.03, max_iter=10, verbose=False),
        "deepfool": DeepFool(clf, max_iter=50, batch_size=128, verbose=False),
    }
    out = {"seed": seed, "test_accuracy": acc, "attacks": {}}
    log_lr = make_pipeline(FunctionTransformer(np.log), StandardScaler(), LogisticRegression(max_iter=1000))
    for name, attack in attacks.items():
        x_adv = attack.generate(x).astype(np.float32)
        success = clf.predict(x_adv).argmax(1) != y
        idx = np.flatnonzero(success)
        pairs = np.random.default_rng(seed + 100).permutation(len(idx))
        fit, test = idx[pairs[: len(idx) // 2]], idx[pairs[len(idx) // 2 :]]
        f_adv = np.full_like(f_clean, np.nan)
        f_adv[idx] = features.transform(x_adv[idx])
        row = {"n_pairs": len(idx)}
        for j, metric in enumerate(scalars):
            row[metric] = _auc(f_clean[:, [j]], f_adv[:, [j]], fit, test, ThresholdClassifier())
        cols = [scalars.index("trace"), scalars.index("quadratic_form")]
        row["default"] = _auc(f_clean[:, cols], f_adv[:, cols], fit, test, default_estimator(2))
        row["default_log"] = _auc(
            np.maximum(f_clean[:, cols], 1e-30), np.maximum(f_adv[:, cols], 1e-30), fit, test, log_lr
        )
        p_adv = np.full_like(p_clean, np.nan)
        p_adv[idx] = softmax_features(clf, x_adv[idx], 128)
        # the baseline's own estimator (as the evaluation's MaxSoftmaxRun), not the Fisher default with its log step
        row["max_softmax"] = _auc(
            p_clean, p_adv, fit, test, make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
        )
        if sens_pairs > 0:
            sub = np.random.default_rng(seed + 200).permutation(len(idx))[:sens_pairs]
            sel = idx[sub]
            s_clean = np.full((len(x), 4), np.nan)
            s_adv = np.full((len(x), 4), np.nan)
            s_clean[sel] = sens.transform(x[sel])
            s_adv[sel] = sens.transform(x_adv[sel])
            half = len(sel) // 2
            row["sensitivity"] = _auc(s_clean, s_adv, sel[:half], sel[half:], default_estimator(4))
            row["sensitivity_pairs"] = len(sel)
        out["attacks"][name] = row
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--n-attack", type=int, default=300, help="held-out digits attacked per seed")
    parser.add_argument("--sens-pairs", type=int, default=80, help="pairs used for the sensitivity row")
    parser.add_argument("--smoke", action="store_true", help="tiny configuration (seconds)")
    parser.add_argument("--json", type=str, default=None, help="also write the JSON here")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    kw = dict(n_attack=args.n_attack, sens_pairs=args.sens_pairs, epochs=8, n_train=1000)
    if args.smoke:
        args.seeds = args.seeds[:1]
        kw = dict(n_attack=40, sens_pairs=8, epochs=2, n_train=300)
    results = []
    for seed in args.seeds:
        t0 = time.perf_counter()
        res = run_seed(seed, **kw)
        res["seconds"] = round(time.perf_counter() - t0, 1)
        results.append(res)
    cols = ["trace", "quadratic_form", "max_eigenvalue", "sensitivity", "default", "default_log", "max_softmax"]
    print(f"{'seed':>4} {'attack':>8} {'pairs':>5} " + " ".join(f"{c:>14}" for c in cols))
    for res in results:
        for attack, row in res["attacks"].items():
            vals = " ".join(f"{row[c]:14.3f}" if c in row else f"{'-':>14}" for c in cols)
            print(f"{res['seed']:>4} {attack:>8} {row['n_pairs']:>5} {vals}")
    summary = {}
    for attack in ("fgsm", "pgd", "deepfool"):
        summary[attack] = {
            c: [
                min(r["attacks"][attack][c] for r in results),
                float(np.mean([r["attacks"][attack][c] for r in results])),
            ]
            for c in cols
            if all(c in r["attacks"][attack] for r in results)
        }
    print("min / mean over seeds:")
    for attack, row in summary.items():
        print(f"{attack:>8} " + "  ".join(f"{c} {v[0]:.3f}/{v[1]:.3f}" for c, v in row.items()))
    payload = {"results": results, "summary_min_mean": summary}
    print(json.dumps(payload))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(payload, fh, indent=1)


if __name__ == "__main__":
    main()
