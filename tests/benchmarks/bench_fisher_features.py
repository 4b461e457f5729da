"""Which Fisher features earn their cost over the classifier's confidence, on the unseen-attack protocol.

Not collected by pytest. For each seed this script repeats the default ``art-fisher evaluate`` run's
stages 1–3 with the library's own functions (the digits SmallCNN trained for 30 epochs with that seed,
300 correctly classified test digits, the detector-train / detector-test split, FGSM, PGD, DeepFool and
C&W L2 at the default settings), then fits and scores every candidate feature set with the evaluation's
own protocol (:func:`art_fisher.evaluation._protocol.score_detectors`: fitted on each attack, scored on
every attack; same-attack = the diagonal, unseen = the 12 off-diagonal cells). Seed 0 is the default run.

Every candidate is a logistic regression on standardised features (``StandardScaler`` +
``LogisticRegression``, the logs below taken first) on:

- ``max_softmax``, ``fisher_combined``: the evaluation's own registry entries, run through their real
  adapters (the baseline, and the combined Fisher detector of the code under test);
- ``raw_scalars``: trace, quadratic form and λ_max, not logged (the combined detector before the
  per-tensor traces replaced it);
- ``log_scalars``: log trace, log quadratic form, log λ_max;
- ``block_traces``: log of each parameter tensor's trace (``fisher_block_traces``); ``block_traces_raw``
  the same not logged; ``block_profile`` with the log trace as one more column;
- ``eig_ratio``: log trace and log(λ_max / trace);
- ``class_contrast``: the Fisher information along the predicted class's and the runner-up class's
  log-probability gradients (Rayleigh quotients ``v̄ᵀFv̄`` and squared gradient norms ``‖v‖²``, logs);
- ``sens_stats``: the sensitivity map's log l1, log l2, log max, top-10 % mass, entropy of ``|s|/Σ|s|``
  (divided by log D) and spatial spread (the ``|s|``-weighted standard deviation of pixel coordinates);
- combinations of these, with each other and with the two confidence features (``sm+…``), and
  ``sm+margin`` (confidence plus the logit margin between the two top classes: a non-Fisher control);
- ``signed:…``: the same logistic regression with each weight held to the sign of its column's prior
  direction (higher Fisher information, lower confidence = adversarial; shape statistics free).

Each feature is computed once per input (a per-seed bank); the protocol's fits look them up.
Reports per candidate the mean ± sd over seeds of the mean same-attack and mean unseen ROC-AUC, and of
their paired difference to ``max_softmax``. Prints a table; writes JSON (default
``tests/benchmarks/results/bench_fisher_features.json``). ``--smoke`` runs one tiny seed in seconds.

    python tests/benchmarks/bench_fisher_features.py --seeds 0 1 2 3 4
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import tempfile
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

RESULTS = Path(__file__).parent / "results" / "bench_fisher_features.json"
_TINY = 1e-30


# ------------------------------------------------------------------------------------------ features
def _sens_stats(maps: np.ndarray) -> np.ndarray:
    """(N, 6): log l1, log l2, log max, top-10 % mass, normalised entropy, spatial spread of |s|."""
    a = np.abs(maps.reshape(len(maps), -1)).astype(np.float64)
    d = a.shape[1]
    l1 = a.sum(1)
    q = a / np.maximum(l1, _TINY)[:, None]
    k = max(1, math.ceil(0.1 * d))
    top = -np.sort(-a, axis=1)[:, :k].sum(1) / np.maximum(l1, _TINY)
    ent = -(q * np.log(np.maximum(q, _TINY))).sum(1) / math.log(d)
    h, w = maps.shape[-2:]
    q_img = q.reshape(len(q), -1, h, w).sum(1)  # channels summed: weight of each pixel position
    rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    mr = (q_img * rows).sum((1, 2))
    mc = (q_img * cols).sum((1, 2))
    var = (q_img * ((rows - mr[:, None, None]) ** 2 + (cols - mc[:, None, None]) ** 2)).sum((1, 2))
    return np.column_stack(
        [np.log(l1 + _TINY), np.log(np.sqrt((a**2).sum(1)) + _TINY), np.log(a.max(1) + _TINY), top, ent, np.sqrt(var)]
    )


def feature_bank(model: torch.nn.Module, x: np.ndarray, batch_size: int) -> dict[str, np.ndarray]:
    """Every candidate's raw columns for inputs ``x`` (no preprocessing: the evaluation's classifier has none)."""
    from scipy.special import entr, softmax

    from art_fisher.metrics import (
        fisher_block_traces,
        fisher_max_eigenvalue,
        fisher_quadratic_form,
        fisher_sensitivity,
    )

    parts: dict[str, list[np.ndarray]] = {}
    model.eval()
    for start in range(0, len(x), batch_size):
        xt = torch.as_tensor(x[start : start + batch_size]).clone(memory_format=torch.contiguous_format)
        with torch.no_grad():
            z = model(xt).double().numpy()
        order = np.argsort(-z, axis=1)
        p = softmax(z, axis=1)
        runner = torch.as_tensor(order[:, 1])
        blocks = fisher_block_traces(model, xt).values.double().numpy()
        qf_pred = fisher_quadratic_form(model, xt).double().numpy()
        qf_pred_raw = fisher_quadratic_form(model, xt, normalize=False).double().numpy()
        qf_ru = fisher_quadratic_form(model, xt, direction="label", y=runner).double().numpy()
        qf_ru_raw = fisher_quadratic_form(model, xt, direction="label", y=runner, normalize=False).double().numpy()
        cols = {
            "softmax": np.column_stack([p.max(1), entr(p).sum(1)]),
            "margin": (np.take_along_axis(z, order[:, :1], 1) - np.take_along_axis(z, order[:, 1:2], 1)),
            "blocks": blocks,
            "trace": blocks.sum(1, keepdims=True),
            "qf": qf_pred[:, None],
            "lmax": fisher_max_eigenvalue(model, xt).double().numpy()[:, None],
            # ‖v‖² = raw / normalised quadratic form (0/0 -> 0 for a vanishing gradient)
            "contrast": np.column_stack(
                [
                    qf_pred,
                    qf_ru,
                    np.divide(qf_pred_raw, qf_pred, out=np.zeros_like(qf_pred), where=qf_pred > 0),
                    np.divide(qf_ru_raw, qf_ru, out=np.zeros_like(qf_ru), where=qf_ru > 0),
                ]
            ),
            "sens": _sens_stats(fisher_sensitivity(model, xt).double().numpy()),
        }
        for key, value in cols.items():
            parts.setdefault(key, []).append(value)
    return {key: np.concatenate(v) for key, v in parts.items()}


def _log(v: np.ndarray) -> np.ndarray:
    return np.log(np.maximum(v, _TINY))


#: Feature groups: name -> (columns from a bank, prior direction per column: +1 higher = adversarial,
#: -1 lower = adversarial, 0 no prior). The priors are used only by the sign-constrained estimator.
GROUPS: dict[str, tuple[Callable[[dict[str, np.ndarray]], np.ndarray], tuple[int, ...]]] = {
    "softmax": (lambda b: b["softmax"], (-1, +1)),
    "margin": (lambda b: b["margin"], (-1,)),
    "log_scalars": (lambda b: _log(np.column_stack([b["trace"], b["qf"], b["lmax"]])), (+1, +1, +1)),
    "raw_scalars": (lambda b: np.column_stack([b["trace"], b["qf"], b["lmax"]]), (+1, +1, +1)),
    "block_profile": (lambda b: _log(np.column_stack([b["blocks"], b["trace"]])), None),  # +1 each
    "block_traces": (lambda b: _log(b["blocks"]), None),
    "block_traces_raw": (lambda b: b["blocks"], None),
    "eig_ratio": (lambda b: _log(b["lmax"]) - _log(b["trace"]), (0,)),
    "log_trace": (lambda b: _log(b["trace"]), (+1,)),
    "class_contrast": (lambda b: _log(b["contrast"]), (+1, 0, +1, 0)),
    "sens_stats": (lambda b: b["sens"], (+1, +1, +1, 0, 0, 0)),
}


def _columns(groups: tuple[str, ...], bank: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    cols, signs = [], []
    for g in groups:
        fn, sg = GROUPS[g]
        c = fn(bank)
        c = c.reshape(len(c), -1)
        cols.append(c)
        signs.extend(sg if sg is not None else (+1,) * c.shape[1])
    return np.column_stack(cols), np.asarray(signs)


#: Candidate name -> (feature groups, estimator): "lr" the detector's default (standardised logistic
#: regression), "signed" the same with each weight held to its column's prior direction.
CANDIDATES: dict[str, tuple[tuple[str, ...], str]] = {
    "raw_scalars": (("raw_scalars",), "lr"),
    "log_scalars": (("log_scalars",), "lr"),
    "block_profile": (("block_profile",), "lr"),
    "block_traces": (("block_traces",), "lr"),
    "block_traces_raw": (("block_traces_raw",), "lr"),
    "eig_ratio": (("log_trace", "eig_ratio"), "lr"),
    "class_contrast": (("class_contrast",), "lr"),
    "sens_stats": (("sens_stats",), "lr"),
    "block_profile+eig_ratio": (("block_profile", "eig_ratio"), "lr"),
    "block_profile+class_contrast": (("block_profile", "class_contrast"), "lr"),
    "block_profile+sens_stats": (("block_profile", "sens_stats"), "lr"),
    "fisher_all": (("block_profile", "eig_ratio", "class_contrast", "sens_stats"), "lr"),
    "sm+margin": (("softmax", "margin"), "lr"),
    "sm+log_scalars": (("softmax", "log_scalars"), "lr"),
    "sm+block_profile": (("softmax", "block_profile"), "lr"),
    "sm+eig_ratio": (("softmax", "log_trace", "eig_ratio"), "lr"),
    "sm+class_contrast": (("softmax", "class_contrast"), "lr"),
    "sm+sens_stats": (("softmax", "sens_stats"), "lr"),
    "sm+all": (("softmax", "block_profile", "eig_ratio", "class_contrast", "sens_stats"), "lr"),
    "signed:block_profile": (("block_profile",), "signed"),
    "signed:sm+log_scalars": (("softmax", "log_scalars"), "signed"),
    "signed:sm+block_profile": (("softmax", "block_profile"), "signed"),
    "signed:sm+sens_stats": (("softmax", "sens_stats"), "signed"),
    "signed:sm+all": (("softmax", "block_profile", "eig_ratio", "class_contrast", "sens_stats"), "signed"),
}


class SignedLogistic:
    """Standardised L2 logistic regression (C = 1, as scikit-learn's default) whose weights keep the sign
    of their column's prior direction (0: free), fitted with L-BFGS-B."""

    def __init__(self, signs: np.ndarray) -> None:
        self.signs = np.asarray(signs, dtype=float)

    def fit(self, X: np.ndarray, y: np.ndarray) -> SignedLogistic:
        from scipy.optimize import minimize
        from scipy.special import expit

        self.mean_, self.scale_ = X.mean(0), X.std(0)
        self.scale_[self.scale_ == 0] = 1.0
        Z = (X - self.mean_) / self.scale_
        s = 2.0 * np.asarray(y, float) - 1.0

        def loss(w):
            m = s * (Z @ w[:-1] + w[-1])
            g = -s * expit(-m)
            return np.logaddexp(0, -m).sum() + 0.5 * w[:-1] @ w[:-1], np.r_[Z.T @ g + w[:-1], g.sum()]

        bounds = [(0, None) if v > 0 else (None, 0) if v < 0 else (None, None) for v in self.signs] + [(None, None)]
        res = minimize(loss, np.zeros(Z.shape[1] + 1), jac=True, method="L-BFGS-B", bounds=bounds)
        self.coef_, self.intercept_ = res.x[:-1], res.x[-1]
        return self

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        return ((X - self.mean_) / self.scale_) @ self.coef_ + self.intercept_

    def predict(self, X: np.ndarray) -> np.ndarray:
        return (self.decision_function(X) > 0).astype(int)


# ------------------------------------------------------------------------------------------ protocol
class _Bank:
    """Feature rows keyed by the bytes of their input (so the protocol's arrays can be looked up)."""

    def __init__(self) -> None:
        self.rows: dict[bytes, int] = {}
        self.values: dict[str, np.ndarray] = {}

    def add(self, model: torch.nn.Module, x: np.ndarray, batch_size: int) -> None:
        new = [i for i, row in enumerate(x) if self._key(row) not in self.rows]
        if not new:
            return
        bank = feature_bank(model, x[new], batch_size)
        offset = len(self.rows)
        for j, i in enumerate(new):
            self.rows.setdefault(self._key(x[i]), offset + j)
        self.values = bank if not self.values else {k: np.concatenate([self.values[k], bank[k]]) for k in bank}

    def get(self, x: np.ndarray) -> dict[str, np.ndarray]:
        idx = np.array([self.rows[self._key(row)] for row in x])
        return {k: v[idx] for k, v in self.values.items()}

    @staticmethod
    def _key(row: np.ndarray) -> bytes:
        return hashlib.blake2b(np.ascontiguousarray(row).tobytes(), digest_size=16).digest()


def _candidate_spec(name: str, bank: _Bank):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from art_fisher.evaluation.detectors._base import DetectorRun, DetectorSpec, Scored

    groups, kind = CANDIDATES[name]

    class CandidateRun(DetectorRun):
        def fit(self, x, y):
            f, signs = _columns(groups, bank.get(x))
            lr = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))  # the logs are taken above
            self.est = (lr if kind == "lr" else SignedLogistic(signs)).fit(f, y)

        def detect(self, x):
            f, _ = _columns(groups, bank.get(x))
            return Scored(score=self.est.decision_function(f), is_adversarial=self.est.predict(f) == 1)

    return DetectorSpec(name, lambda ctx: CandidateRun())


@contextmanager
def _registered(specs: dict):
    from art_fisher.evaluation.detectors._registry import DETECTORS

    DETECTORS.update(specs)
    try:
        yield
    finally:
        for name in specs:
            DETECTORS.pop(name, None)


def run_seed(seed: int, *, n_samples: int, epochs: int, cache: Path, batch_size: int = 128) -> dict:
    """One evaluation seed: the default run's model, draw, split and attacks; every candidate scored."""
    from art.estimators.classification import PyTorchClassifier

    from art_fisher.data._loaders import load_dataset
    from art_fisher.evaluation._attacks import DEFAULT_ATTACKS, DEFAULT_EPS, run_attack
    from art_fisher.evaluation._model import cached_model, predict_labels, seed_everything
    from art_fisher.evaluation._protocol import score_detectors, split_sources
    from art_fisher.evaluation.detectors._base import RunContext

    t0 = time.perf_counter()
    train, test = load_dataset("digits", split="train"), load_dataset("digits", split="test")
    source = cached_model(
        arch="small_cnn",
        data=train,
        epochs=epochs,
        seed=seed,
        device=torch.device("cpu"),
        output_dir=cache,
        progress=False,
    )
    model = source.model
    classifier = PyTorchClassifier(
        model,
        loss=torch.nn.CrossEntropyLoss(),
        input_shape=train.input_shape,
        nb_classes=train.n_classes,
        clip_values=(0.0, 1.0),
        device_type="cpu",
    )
    # The draw and split exactly as art_fisher.evaluation._workflow.run does them.
    pred = predict_labels(classifier, test.x, batch_size)
    rng = np.random.default_rng(seed)
    correct = np.flatnonzero(pred == test.y)
    chosen = np.sort(rng.permutation(correct)[: min(n_samples, len(correct))])
    x_src, y_src = test.x[chosen], test.y[chosen]
    side = split_sources(len(chosen), rng)
    x_background = train.x[rng.permutation(len(train.y))[: min(200, len(train.y))]]
    ctx = RunContext(
        classifier=classifier,
        model=model,
        x_background=x_background,
        seed=seed,
        device=torch.device("cpu"),
        batch_size=batch_size,
        target_fpr=0.05,
        progress=False,
    )
    outcomes = []
    for a_i, name in enumerate(DEFAULT_ATTACKS):
        seed_everything(seed + 1000 * (a_i + 1))
        outcomes.append(
            run_attack(name, classifier, x_src, y_src, eps=DEFAULT_EPS["digits"], batch_size=batch_size, progress=False)
        )
    t_attacks = time.perf_counter() - t0
    bank = _Bank()
    t1 = time.perf_counter()
    bank.add(model, x_src, batch_size)
    for o in outcomes:
        bank.add(model, o.x_adv[o.success], batch_size)
    t_features = time.perf_counter() - t1
    n_bank = len(bank.rows)
    specs = {name: _candidate_spec(name, bank) for name in CANDIDATES}
    names = ["max_softmax", "fisher_combined", *CANDIDATES]
    with _registered(specs):
        result = score_detectors(ctx, x_src, side, outcomes, names)
    out = {"seed": seed, "attacks": {o.name: o.stats["success_rate"] for o in outcomes}, "detectors": {}}
    for name in names:
        rows = [r for r in result.rows if r["detector"] == name]
        same = [r["roc_auc"] for r in rows if r["fit_attack"] == r["attack"]]
        unseen = [r["roc_auc"] for r in rows if r["fit_attack"] != r["attack"]]
        out["detectors"][name] = {
            "same_attack_auc": float(np.nanmean(same)),
            "unseen_auc": float(np.nanmean(unseen)),
            "same_by_attack": {r["attack"]: r["roc_auc"] for r in rows if r["fit_attack"] == r["attack"]},
            "matrix": {f"{r['fit_attack']}->{r['attack']}": r["roc_auc"] for r in rows},
        }
    out["seconds"] = {
        "model_and_attacks": t_attacks,
        "feature_bank": t_features,
        "n_bank_inputs": n_bank,
        "bank_ms_per_input": 1e3 * t_features / max(n_bank, 1),
        "total": time.perf_counter() - t0,
    }
    return out


def summarise(results: list[dict]) -> dict:
    names = list(results[0]["detectors"])
    summary = {}
    for name in names:
        s = np.array([r["detectors"][name]["same_attack_auc"] for r in results])
        u = np.array([r["detectors"][name]["unseen_auc"] for r in results])
        s0 = np.array([r["detectors"]["max_softmax"]["same_attack_auc"] for r in results])
        u0 = np.array([r["detectors"]["max_softmax"]["unseen_auc"] for r in results])
        sd = lambda v: float(np.std(v, ddof=1)) if len(v) > 1 else 0.0  # noqa: E731
        attacks = results[0]["detectors"][name]["same_by_attack"]
        summary[name] = {
            "same_mean": float(s.mean()),
            "same_sd": sd(s),
            "unseen_mean": float(u.mean()),
            "unseen_sd": sd(u),
            "same_minus_softmax_mean": float((s - s0).mean()),
            "same_minus_softmax_sd": sd(s - s0),
            "unseen_minus_softmax_mean": float((u - u0).mean()),
            "unseen_minus_softmax_sd": sd(u - u0),
            "same_by_attack_mean": {
                a: float(np.mean([r["detectors"][name]["same_by_attack"][a] for r in results])) for a in attacks
            },
        }
    return summary


def table(summary: dict, n_seeds: int) -> str:
    head = (
        f"{'candidate':<26} {'same-attack AUC':>16} {'Δ vs max_softmax':>17} {'unseen AUC':>14} "
        f"{'Δ vs max_softmax':>17}  same-attack by attack (FGSM PGD DF CW)"
    )
    lines = [f"mean ± sd over {n_seeds} seed(s)", head, "-" * len(head)]
    for name, s in summary.items():
        by = " ".join(f"{v:.3f}" for v in s["same_by_attack_mean"].values())
        lines.append(
            f"{name:<26} {s['same_mean']:>8.3f} ± {s['same_sd']:.3f} {s['same_minus_softmax_mean']:>+8.3f} ± "
            f"{s['same_minus_softmax_sd']:.3f} {s['unseen_mean']:>6.3f} ± {s['unseen_sd']:.3f} "
            f"{s['unseen_minus_softmax_mean']:>+8.3f} ± {s['unseen_minus_softmax_sd']:.3f}  {by}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--n-samples", type=int, default=300, help="correctly classified test digits attacked")
    parser.add_argument("--epochs", type=int, default=30, help="training epochs of the SmallCNN (the default run's)")
    parser.add_argument("--cache", type=Path, default=Path("art_fisher_results"), help="model cache folder")
    parser.add_argument("--smoke", action="store_true", help="one tiny seed (seconds)")
    parser.add_argument("--json", type=Path, default=None, help=f"where the JSON goes (default {RESULTS})")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if args.smoke:
        args.seeds, args.n_samples, args.epochs = args.seeds[:1], 24, 2
        args.cache = Path(tempfile.mkdtemp(prefix="bench_fisher_features_"))
        args.json = args.json or Path("bench_fisher_features.smoke.json")
    results = []
    for seed in args.seeds:
        results.append(run_seed(seed, n_samples=args.n_samples, epochs=args.epochs, cache=args.cache))
        print(f"seed {seed}: {results[-1]['seconds']['total']:.1f} s", flush=True)
    summary = summarise(results)
    print(table(summary, len(results)))
    payload = {
        "settings": vars(args) | {"cache": str(args.cache), "json": None},
        "results": results,
        "summary": summary,
    }
    path = args.json or RESULTS
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=1))
    tmp.replace(path)
    print(f"JSON: {path}")


if __name__ == "__main__":
    main()
