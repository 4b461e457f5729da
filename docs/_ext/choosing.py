"""``.. detector-choice:: bench_detection_mnist``: the detectors ranked by the measured detection benchmark.

Reads ``unseen_summary`` and ``adaptive`` of a ``tests/benchmarks/bench_detection.py`` results file and
renders one table (ablations left out): whether a detector needs adversarial examples to fit, its mean
ROC-AUC and TPR on attacks it was not fitted on (at the operating point of the file), and the share of
images on which an attacker who knows it (PGD L∞ and L2) both fools the classifier and evades it. The
sentence above the table names the leaders, taken from the same numbers, so the page cannot drift from
the results.
"""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks import _list_table, _pm
from docutils import nodes
from docutils.statemachine import StringList
from sphinx.util.docutils import SphinxDirective


def _rows(doc: dict) -> list[dict]:
    rows = [r for r in doc["unseen_summary"] if "_without_" not in r["detector"]]
    return sorted(rows, key=lambda r: -r["unseen_auc_mean"])


def _evasion(doc: dict, detector: str, attack: str) -> str:
    for r in doc.get("adaptive", []):
        if r["detector"] == detector and r["attack"] == attack:
            return _pm([r["evasion_rate_mean"], r["evasion_rate_sd"]], 2)
    return "–"


def choice_lines(doc: dict, name: str) -> list[str]:
    """reST lines: the leaders in one sentence, then the table."""
    rows = _rows(doc)
    clean = [r for r in rows if r["fitted_on"] == "clean"]
    supervised = [r for r in rows if r["fitted_on"] != "clean"]
    fpr = doc["settings"]["target_fpr"]
    s = doc["settings"]
    lead = (
        f"{doc['dataset']} (``{s['arch']}``, {s['n_samples']} attacked images per seed, seeds "
        f"{', '.join(map(str, doc['seeds']))}): highest mean ROC-AUC on unseen attacks among the clean-only "
        f"detectors ``{clean[0]['detector']}`` ({clean[0]['unseen_auc_mean']:.3f}), among the supervised "
        f"ones ``{supervised[0]['detector']}`` ({supervised[0]['unseen_auc_mean']:.3f})."
    )
    header = [
        "detector",
        "fitted on",
        "unseen ROC-AUC",
        f"unseen TPR at {fpr:.0%} FPR",
        "adaptive PGD L∞: evades",
        "adaptive PGD L2: evades",
    ]
    table = [
        [
            f"``{r['detector']}``",
            "clean images only" if r["fitted_on"] == "clean" else "clean + adversarial",
            _pm([r["unseen_auc_mean"], r["unseen_auc_sd"]]),
            _pm([r["unseen_tpr_mean"], r["unseen_tpr_sd"]]),
            _evasion(doc, r["detector"], "pgd_linf"),
            _evasion(doc, r["detector"], "pgd_l2"),
        ]
        for r in rows
    ]
    lines = [lead, "", *_list_table("", header, table)]
    return [*lines, f"*Source:* ``tests/benchmarks/results/{name}.json``.", ""]


class DetectorChoice(SphinxDirective):
    """The ``detector-choice`` directive: one results file's detectors, ranked."""

    required_arguments = 1

    def run(self) -> list[nodes.Node]:
        name = self.arguments[0]
        path = Path(self.env.config.benchmark_results_dir) / f"{name}.json"
        self.env.note_dependency(str(path))
        try:
            doc = json.loads(path.read_text())
            lines = choice_lines(doc, name)
        except (OSError, ValueError, KeyError, IndexError) as err:
            raise self.error(f"{path}: not a detection benchmark result ({err!r})") from err
        container = nodes.container()
        self.state.nested_parse(StringList(lines, source=self.get_source_info()[0]), self.content_offset, container)
        return [container]


def setup(app) -> dict:
    """Register the directive (``benchmark_results_dir`` comes from the benchmarks extension)."""
    app.setup_extension("benchmarks")
    app.add_directive("detector-choice", DetectorChoice)
    return {"version": "1.0", "parallel_read_safe": True}
