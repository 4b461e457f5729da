"""Benchmark tables rendered at build time from the JSON the benchmark scripts write.

``.. benchmark-results:: bench_metrics`` reads ``tests/benchmarks/results/bench_metrics.json``
(``benchmark_results_dir`` in ``conf.py``) and turns it into tables. The scripts in ``tests/benchmarks/``
own their numbers; a page only says how to read them. A script with a renderer below gets tables laid
out for it; any other JSON document is rendered generically (its scalar settings as a list, every list
of records and every mapping of records as a table), so a new benchmark page needs no code here. A
missing file is reported on the page (with the command that writes it), not as a build error, so that
the pages build from a clean clone before every benchmark has been run.

Options: ``:file:`` (another file name in the results folder), ``:part:`` (one part of a renderer's
output, e.g. ``search``), ``:command:`` (the command that writes the file, shown when it is missing).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, ClassVar

from docutils import nodes
from docutils.parsers.rst import directives
from docutils.statemachine import StringList
from sphinx.util import logging
from sphinx.util.docutils import SphinxDirective

logger = logging.getLogger(__name__)

Table = tuple[str, Sequence[str], list[Sequence[Any]]]  # caption, header, rows


# --- formatting ---------------------------------------------------------------------------------------


def _num(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}" if abs(value) >= 10000 else str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "–"
        if value != 0 and (abs(value) < 10 ** (-digits) or abs(value) >= 1e6):
            return f"{value:.2e}"
        return f"{value:.{digits}f}"
    return str(value)


def _pm(pair: Sequence[float] | None, digits: int = 3) -> str:
    """``[mean, sd]`` as ``mean ± sd``."""
    if not pair or all(isinstance(v, float) and math.isnan(v) for v in pair):
        return "–"
    return f"{_num(pair[0], digits)} ± {_num(pair[1], digits)}"


def _cell(value: Any) -> str:
    if isinstance(value, (list, tuple)) and all(isinstance(v, (int, float)) for v in value):
        return " / ".join(_num(v) for v in value)
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value)
    return _num(value)


def _list_table(caption: str, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> list[str]:
    def esc(text: Any) -> str:
        text = str(text).replace("\n", " ")
        return text.replace("\\", "\\\\").replace("*", "\\*").replace("`", "\\`").replace("|", "\\|") or " "

    lines = [f".. list-table:: {esc(caption)}" if caption else ".. list-table::", "   :header-rows: 1", ""]
    for row in [header, *rows]:
        for i, value in enumerate(row):
            lines.append(f"   {'*' if i == 0 else ' '} - {esc(value)}")
    lines.append("")
    return lines


# --- renderers for the project's scripts ---------------------------------------------------------------


def _spread(best: float, spread: list[float] | None, digits: int) -> str:
    """A speed-up from the fastest runs of both sides, with the range of the side-by-side ratios."""
    text = f"{best:.{digits}f}×"
    return f"{text} ({spread[0]:.{digits}f}–{spread[1]:.{digits}f})" if spread else text


def _speedup(row: dict, key: str) -> str:
    """The speed-up over the original: fastest against fastest with the range, else the median of the ratios."""
    fastest, spread = row.get("speedup_vs_original_fastest", {}), row.get("speedup_vs_original_range", {})
    if key in fastest:
        return _spread(fastest[key], spread.get(key), 1)
    median = row.get("speedup_vs_original", {})
    return f"{median[key]:.1f}×" if key in median else "–"


def _metrics(doc: dict, part: str | None) -> list[Table]:
    tables: list[Table] = []
    for run in doc["runs"]:
        where = f"{run['device']}, {run['threads']} thread(s)"
        main, peers, floors = [], [], []
        for row in run["rows"]:
            ms, units = row["ms_per_sample"], row.get("units_per_sample", {})
            memory = row.get("memory", {})
            model = f"{row['model']} ({row['head']})"

            def mem(key: str, memory: dict = memory) -> str:
                m = memory.get(key)
                return f"{m['peak_rss_mib']:.0f} ({m['growth_mib']:.0f})" if m else "–"

            for label, key, orig, skey, ukey, batch in (
                ("trace", "trace", "orig_trace", "trace", "trace", row["batch"]),
                ("quadratic form (blockwise)", "quad", "orig_quad", "quad_blockwise", "quad_blockwise", row["batch"]),
                ("sensitivity (blockwise)", "fis", "orig_fis", "fis_blockwise", "fis_blockwise", row.get("fis_batch")),
            ):
                if key in ms:
                    main.append(
                        [
                            model,
                            row.get("params"),
                            label,
                            _num(ms.get(orig), 2),
                            f"{ms[key]:.3f} ({batch})",
                            _speedup(row, skey),
                            _num(units.get(ukey), 1),
                            mem(key),
                        ]
                    )
            if "max_eig" in ms:
                main.append(
                    [
                        model,
                        row.get("params"),
                        "max eigenvalue",
                        "–",
                        f"{ms['max_eig']:.3f} ({row['batch']})",
                        f"{row['max_eig_over_trace']:.2f}× trace",
                        _num(units.get("max_eig"), 1),
                        mem("max_eig"),
                    ]
                )
            for peer, info in sorted(row.get("peers", {}).items()):
                peers.append(
                    [
                        model,
                        peer,
                        info["batch"],
                        _num(info["ms_per_sample"][peer]),
                        _num(info["ms_per_sample"]["art_fisher"]),
                        _spread(info.get("speedup_fastest", info["speedup"]), info.get("speedup_range"), 2),
                        f"{info['max_rel_diff']:.1e}",
                    ]
                )
            floor = row.get("trace_floor_ms_per_sample")
            quad = row.get("quad_blockwise_floor_ms")
            floors.append(
                [
                    model,
                    _num(ms.get("unit")),
                    f"{floor['value']:.3f} (batch {floor['batch']})" if floor else "–",
                    f"{quad['forward_mode_floor']:.2f} / {quad['reverse_mode_floor']:.2f}" if quad else "–",
                    _num(row.get("quad_blockwise_target_ms"), 2),
                ]
            )
        clock = {r["clock"] for r in run["rows"]}
        clock_text = "CPU time" if clock == {"cpu"} else "wall-clock" if clock == {"wall"} else "/".join(sorted(clock))
        tables.append(
            (
                f"{where}, {clock_text}: the original algorithm against the exact batched metrics (ms per sample)",
                [
                    "model (head)",
                    "params",
                    "metric",
                    "original",
                    "exact (batch)",
                    "speed-up, fastest (range)",
                    "units / sample",
                    "peak MiB (growth)",
                ],
                main,
            )
        )
        if peers:
            tables.append(
                (
                    f"{where}, {clock_text}: per-sample trace against other libraries (ms per sample)",
                    [
                        "model (head)",
                        "peer",
                        "batch",
                        "peer",
                        "art_fisher",
                        "speed-up, fastest (range)",
                        "max rel. diff.",
                    ],
                    peers,
                )
            )
        tables.append(
            (
                f"{where}, {clock_text}: cost units and lower bounds (ms per sample)",
                [
                    "model (head)",
                    "unit: batched forward + backward",
                    "trace floor: forward + C − 1 backward",
                    "quadratic form: lower bound of any exact method (forward / reverse mode)",
                    "10× target of the quadratic form",
                ],
                floors,
            )
        )
    return tables


def _features(doc: dict, part: str | None) -> list[Table]:
    summary, results = doc["summary"], doc["results"]
    first = results[0] if results else {"detectors": {}}
    rows = []
    for name, s in summary.items():
        seed = first["detectors"].get(name, {})
        by = s.get("same_by_attack_mean", {})
        rows.append(
            [
                name,
                _pm([s["same_mean"], s["same_sd"]]),
                "—" if name == "max_softmax" else _pm([s["same_minus_softmax_mean"], s["same_minus_softmax_sd"]]),
                _pm([s["unseen_mean"], s["unseen_sd"]]),
                "—" if name == "max_softmax" else _pm([s["unseen_minus_softmax_mean"], s["unseen_minus_softmax_sd"]]),
                " / ".join(_num(by.get(a)) for a in ("fgsm", "pgd", "deepfool", "cw_l2")),
                f"{_num(seed.get('same_attack_auc'))} / {_num(seed.get('unseen_auc'))}" if seed else "–",
            ]
        )
    seeds = doc["settings"]["seeds"]
    tables: list[Table] = [
        (
            (
                f"ROC-AUC over seeds {seeds[0]}–{seeds[-1]} ({len(seeds)} seeds): mean ± sd of each seed's mean "
                "same-attack and mean unseen-attack ROC-AUC, and of the paired difference to max_softmax"
            ),
            [
                "candidate",
                "same-attack",
                "Δ vs max_softmax",
                "unseen attacks",
                "Δ vs max_softmax",
                "same-attack FGSM / PGD / DeepFool / C&W L2",
                f"seed {first.get('seed', '–')}: same / unseen",
            ],
            rows,
        )
    ]
    attacks = [
        [
            r["seed"],
            *(_num(r["attacks"].get(a)) for a in ("fgsm", "pgd", "deepfool", "cw_l2")),
            _num(r.get("seconds", {}).get("total"), 0),
        ]
        for r in results
    ]
    tables.append(
        ("Attack success rate and run time per seed", ["seed", "FGSM", "PGD", "DeepFool", "C&W L2", "seconds"], attacks)
    )
    return tables


# The script's names for its explanation variants, as the options that define them.
_LEASE_VARIANTS = {"earlier defaults": "soft prediction, L∞ 8/255, 3 sign steps, product"}


def _lease(doc: dict, part: str | None) -> list[Table]:
    tables: list[Table] = []
    if part in (None, "explanations") and "explanations" in doc:
        s = doc["explanations"]["summary"]
        ks = "/".join(str(k) for k in s["deletion_k"])
        rows = []
        for name in [k for k, v in s.items() if isinstance(v, dict)]:
            v = s[name]
            rows.append(
                [
                    _LEASE_VARIANTS.get(name, name),
                    _pm(v["cosine_explanation_part"]),
                    _pm(v["cosine_listener_input"]),
                    " / ".join(f"{r:.2f}" for r in v["deletion_ratios"]),
                    " / ".join(f"{r:.2f}" for r in v["deletion_ratios_abs_delta_x"]),
                    _num(v.get("saturated_fraction")),
                    _pm(v["listener_explanations"], 4),
                    _pm(v["listener_random_delta_same_weighting"], 4),
                ]
            )
        tables.append(
            (
                f"Explanations over seeds {doc['config']['seeds']}: mean ± sd",
                [
                    "explanation",
                    "restart cosine (z − x)",
                    "restart cosine (listener input)",
                    f"deletion ratio vs brightest, k = {ks}",
                    f"… ranked by |δ ⊙ x|, k = {ks}",
                    "share of entries at ±ε",
                    "listener test accuracy",
                    "listener, random δ of the same norm",
                ],
                rows,
            )
        )
        refs = [
            [name.replace("deletion_ratios ", "deletion ratio: "), " / ".join(f"{r:.2f}" for r in s[name])]
            for name in s
            if name.startswith("deletion_ratios ")
        ]
        refs += [
            ["listener on plain x", _pm(s["listener_plain"], 4)],
            ["listener on the random-mask control ε·r⊙x", _pm(s["listener_random_mask"], 4)],
        ]
        tables.append(("References", ["reference", "value"], refs))
    if part in (None, "search") and "search" in doc:
        s = doc["search"]["summary"]
        rows = [
            [
                name,
                _pm(v["epoch_seconds"], 2),
                _pm(v["epoch_cpu_seconds"], 2),
                "1" if name == "darts" else f"{v['time_ratio_over_darts']:.2f} / {v['cpu_time_ratio_over_darts']:.2f}",
                _pm(v["test_accuracy"], 4),
                _pm(v.get("listener_val_acc"), 4),
            ]
            for name, v in s.items()
        ]
        tables.append(
            (
                (
                    f"Search: {doc['config']['epochs']} epochs, retrain {doc['config']['retrain_epochs']} epochs, "
                    f"seeds {doc['config']['seeds']} (mean ± sd; the first epoch is left out of the times)"
                ),
                [
                    "strategy",
                    "s / epoch, wall",
                    "s / epoch, CPU",
                    "ratio to DARTS, wall / CPU",
                    "retrained test accuracy",
                    "listener val accuracy, last epoch",
                ],
                rows,
            )
        )
        runs = [
            [
                r["strategy"],
                r["seed"],
                _num(r["test_accuracy"], 4),
                _num(r["mean_epoch_cpu_seconds"], 2),
                ", ".join(f"{k}={v}" for k, v in r["architecture"].items()),
            ]
            for r in doc["search"]["runs"]
        ]
        tables.append(
            ("Search: every run", ["strategy", "seed", "test accuracy", "CPU s / epoch", "architecture"], runs)
        )
    return tables


def _detector_auc(doc: dict, part: str | None) -> list[Table]:
    results, summary = doc["results"], doc["summary_min_mean"]
    columns = list(dict.fromkeys(c for row in summary.values() for c in row))
    tables: list[Table] = [
        (
            f"Held-out ROC-AUC, minimum / mean over seeds {', '.join(str(r['seed']) for r in results)}",
            ["attack", *columns],
            [
                [attack, *(" / ".join(f"{v:.3f}" for v in row[c]) if c in row else "–" for c in columns)]
                for attack, row in summary.items()
            ],
        )
    ]
    per_seed = []
    for r in results:
        for attack, row in r["attacks"].items():
            per_seed.append([r["seed"], attack, row.get("n_pairs"), *(_num(row.get(c)) for c in columns)])
    tables.append(("Per seed (pairs: successful attacks kept)", ["seed", "attack", "pairs", *columns], per_seed))
    tables.append(
        (
            "Classifier and run time per seed",
            ["seed", "clean test accuracy", "seconds"],
            [[r["seed"], _num(r.get("test_accuracy")), _num(r.get("seconds"), 1)] for r in results],
        )
    )
    return tables


RENDERERS: dict[str, Callable[[dict, str | None], list[Table]]] = {
    "bench_metrics": _metrics,
    "bench_fisher_features": _features,
    "bench_lease": _lease,
    "bench_detector_auc": _detector_auc,
}


# --- the generic renderer -----------------------------------------------------------------------------


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, (str, int, float, bool))


def _is_record(value: Any) -> bool:
    return (
        isinstance(value, dict)
        and bool(value)
        and all(_is_scalar(v) or (isinstance(v, list) and all(_is_scalar(x) for x in v)) for v in value.values())
    )


def _generic(doc: Any, path: str = "") -> tuple[list[tuple[str, str]], list[Table]]:
    """Scalars as (key, value) pairs; lists / mappings of flat records as tables (recursively)."""
    fields: list[tuple[str, str]] = []
    tables: list[Table] = []
    if isinstance(doc, dict):
        if doc and all(_is_record(v) for v in doc.values()):
            header = list(dict.fromkeys(k for v in doc.values() for k in v))
            tables.append((path, ["", *header], [[k, *(_cell(v.get(h)) for h in header)] for k, v in doc.items()]))
            return fields, tables
        for key, value in doc.items():
            sub = f"{path}.{key}" if path else str(key)
            if _is_scalar(value) or (isinstance(value, list) and all(_is_scalar(x) for x in value)):
                fields.append((sub, _cell(value)))
            else:
                f, t = _generic(value, sub)
                fields += f
                tables += t
    elif isinstance(doc, list):
        if doc and all(_is_record(v) for v in doc):
            header = list(dict.fromkeys(k for v in doc for k in v))
            tables.append((path, header, [[_cell(v.get(h)) for h in header] for v in doc]))
        else:
            for i, value in enumerate(doc):
                f, t = _generic(value, f"{path}[{i}]")
                fields += f
                tables += t
    return fields, tables


# --- the directive ------------------------------------------------------------------------------------


class BenchmarkResults(SphinxDirective):
    """The ``benchmark-results`` directive: the tables of one results file (see the module docstring)."""

    required_arguments = 1
    option_spec: ClassVar[dict[str, Callable[[str], Any]]] = {
        "file": directives.unchanged,
        "part": directives.unchanged,
        "command": directives.unchanged,
    }

    def run(self) -> list[nodes.Node]:
        name = self.arguments[0]
        folder = Path(self.env.config.benchmark_results_dir)
        path = folder / self.options.get("file", f"{name}.json")
        self.env.note_dependency(str(path))
        if not path.is_file():
            command = self.options.get("command", f"python tests/benchmarks/{name}.py --json {path.name}")
            text = (
                f"No results file yet (``{path.name}`` is not in ``tests/benchmarks/results/``): "
                f"``{command}`` writes it."
            )
            return self._parse([".. note::", "", f"   {text}", ""])
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            raise self.error(f"{path}: not a readable JSON document ({err})") from err
        renderer = RENDERERS.get(doc.get("benchmark", name) if isinstance(doc, dict) else name) or RENDERERS.get(name)
        lines: list[str] = []
        if renderer is not None:
            try:
                tables = renderer(doc, self.options.get("part"))
            except (KeyError, TypeError, IndexError) as err:
                logger.warning(
                    "%s: the %s renderer does not fit this file (%r); rendered generically",
                    path.name,
                    name,
                    err,
                    location=self.get_location(),
                )
                renderer = None
        if renderer is None:
            fields, tables = _generic(doc)
            if fields:
                lines += _list_table("Settings", ["key", "value"], fields)
        for caption, header, rows in tables:
            lines += _list_table(caption, header, rows)
        machine = doc.get("machine") if isinstance(doc, dict) else None
        if isinstance(machine, dict):
            text = ", ".join(f"{k} {v}" for k, v in machine.items())
            lines += [f"*Machine:* {text.replace('*', chr(92) + '*')}.", ""]
        lines += [f"*Source:* ``tests/benchmarks/results/{path.name}``.", ""]
        return self._parse(lines)

    def _parse(self, lines: list[str]) -> list[nodes.Node]:
        container = nodes.container(classes=["benchmark-results"])
        self.state.nested_parse(StringList(lines, source=self.get_source_info()[0]), self.content_offset, container)
        return [container]


def setup(app) -> dict:
    """Register the configuration value and the directive."""
    app.add_config_value("benchmark_results_dir", "", "env")
    app.add_directive("benchmark-results", BenchmarkResults)
    return {"version": "1.0", "parallel_read_safe": True}
