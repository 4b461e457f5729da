"""Evaluate the Fisher-information detectors on scikit-learn's digits from Python.

The same workflow as ``art-fisher evaluate``, through :func:`art_fisher.evaluation.evaluate`, reduced to
two attacks and a few detectors (measured run times: the documentation's examples page):

    python examples/evaluate_digits.py [--output DIR] [--smoke]

It trains (or reloads from ``DIR/models``) a small CNN, attacks 200 test digits with FGSM and PGD
(L∞, ε = 0.2), fits each supervised detector on half of the source images of each attack and scores the
other half of both attacks (so every detector is also measured on the attack it did not see), and
calibrates the ``*_clean`` detectors on clean images alone. ``--smoke`` runs it at a tiny size (40
digits, one training epoch; a few seconds, the numbers then mean little).
"""

from __future__ import annotations

import argparse

from art_fisher.evaluation import evaluate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default="art_fisher_results/example", help="output folder")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, for a quick check that it runs")
    args = parser.parse_args()

    result = evaluate(
        dataset="digits",
        attacks=["fgsm", "pgd"],
        eps=0.2,
        detectors=["fisher_trace", "fisher_combined", "max_softmax", "binary_input", "fisher_combined_clean"],
        n_samples=40 if args.smoke else 200,
        epochs=1 if args.smoke else None,
        seed=0,
        output_dir=args.output,
        progress=not args.smoke,
    )

    # The table is a list of plain dicts: one per detector × fit attack × test attack.
    print(result.format_table())
    fisher = result.transfer_matrix("fisher_combined")  # rows: fitted on FGSM / PGD; columns: tested on them
    print(f"\nfisher_combined fitted on FGSM, tested on PGD: ROC-AUC {fisher[0, 1]:.3f}")
    for row in result.unseen_summary():
        print(f"{row['detector']:>22}: mean ROC-AUC on unseen attacks {row['unseen_auc']:.3f}")
    clean = next(f for f in result.fits if f["detector"] == "fisher_combined_clean")
    print(f"fisher_combined_clean flags {clean['clean_fpr']:.1%} of clean test digits (target 5 %)")
    for name, path in result.paths.items():
        print(f"{name:>17}: {path}")


if __name__ == "__main__":
    main()
