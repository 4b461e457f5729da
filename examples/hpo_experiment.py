"""Tune LeaSE's gamma, explanation epsilon and steps with NNI's Python ``Experiment`` API.

The same experiment as ``examples/hpo_config.yml`` (nnictl) and ``nni-lease search --mode hpo``.
Run from the repository root::

    python examples/hpo_experiment.py --port 8080 --max-trials 8

``--dry-run`` builds the experiment and prints its configuration without starting anything.

The NNI manager listens on 127.0.0.1 only and stops with this script, even if it is killed (README,
"Security notes"); from another machine, use an SSH tunnel. The experiment is stopped when the script
ends or on Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import logging

from nni_lease.oneshot import RetrainConfig, SearchConfig
from nni_lease.runtime import TrialConfig, build_hpo_experiment, run_experiment, sigterm_as_interrupt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--max-trials", type=int, default=8)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--experiment-dir", default=None, help="experiment records (default ~/nni-experiments)")
    parser.add_argument("--keep-open", action="store_true", help="keep the web UI after the last trial")
    parser.add_argument("--dry-run", action="store_true", help="print the experiment's configuration only")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)

    # An nni.experiment.Experiment: search space nni_lease.runtime._hpo.SEARCH_SPACE, TPE maximising the retrained
    # validation accuracy, trial command `python -m nni_lease.runtime._hpo trial --config '<JSON>'` (shell-quoted).
    experiment = build_hpo_experiment(
        max_trials=args.max_trials,
        concurrency=args.concurrency,
        config=TrialConfig(
            search=SearchConfig(epochs=2, limit_batches=10),
            lease={"hypergradient": "first_order"},
            retrain=RetrainConfig(epochs=3),
        ),
        experiment_dir=args.experiment_dir,
    )
    print(json.dumps(experiment.config.json(), indent=2))
    if args.dry_run:
        return
    with sigterm_as_interrupt():
        # Checks the port, keeps the manager on 127.0.0.1, runs to completion, always stops the experiment.
        run_experiment(
            experiment,
            port=args.port,
            keep_open=args.keep_open,
            on_started=lambda url, exp_id: print(f"experiment {exp_id}: web UI at {url}"),
        )


if __name__ == "__main__":
    main()
