"""Evaluate the Fisher-information detectors on scikit-learn's digits from Python.

The same workflow as ``art-fisher evaluate``, through :func:`art_fisher.evaluation.evaluate`, reduced to
two attacks and a few detectors so that it runs in well under a minute on a laptop CPU:

    python examples/evaluate_digits.py [--output DIR]

It trains (or reloads from ``DIR/models``) a small CNN, attacks 200 test digits with FGSM and PGD
(L∞, ε = 0.2), fits each detector on half of the source images and scores the other half.
"""

from __future__ import annotations

import argparse

from art_fisher.evaluation import evaluate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default="art_fisher_results/example", help="output folder")
    args = parser.parse_args()

    result = evaluate(
        dataset="digits",
        attacks=["fgsm", "pgd"],
        eps=0.2,
        detectors=["fisher_trace", "fisher_quadratic_form", "fisher_combined", "binary_input"],
        n_samples=200,
        seed=0,
        output_dir=args.output,
        progress=True,
    )

    # The table is a list of plain dicts: one per attack × detector.
    best = max(result.table, key=lambda row: row["roc_auc"])
    print(result.format_table())
    print(f"\nbest cell: {best['detector']} on {best['attack']}, ROC-AUC {best['roc_auc']:.3f}")
    for attack in result.attacks:
        print(f"{attack['attack']}: success rate {attack['success_rate']:.3f}, mean L2 {attack['mean_l2']:.3f}")
    for name, path in result.paths.items():
        print(f"{name:>17}: {path}")


if __name__ == "__main__":
    main()
