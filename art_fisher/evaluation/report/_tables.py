"""Plain-text and Markdown tables of the evaluation's rows (the console output and the report)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any


def fmt_cell(value: Any, fmt: str, key: str) -> str:
    """Format one cell: ``value`` with ``fmt``, ``"n/a"`` if missing or NaN, seconds per sample as ms."""
    if key == "seconds_per_sample" and value is not None:
        value = 1000.0 * value
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return fmt.format(value)


def cells_of(
    rows: Sequence[Mapping[str, Any]], columns: Sequence[tuple], extra: Mapping[str, Mapping]
) -> list[list[str]]:
    """Format the cells of ``rows`` for ``columns`` (``(key, header, format)`` triples).

    A column whose key is in ``extra`` takes its value from ``extra[key]`` by the row's attack.
    """
    return [
        [fmt_cell(extra[k].get(r["attack"]) if k in extra else r.get(k), f, k) for k, _, f in columns] for r in rows
    ]


def text_table(headers: Sequence[str], cells: Sequence[Sequence[str]], numeric: Sequence[bool]) -> str:
    """Lay out a plain-text table with aligned columns (numeric ones right-aligned)."""
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]

    def line(values: Sequence[str]) -> str:
        return "  ".join(
            v.rjust(w) if n else v.ljust(w) for v, w, n in zip(values, widths, numeric, strict=True)
        ).rstrip()

    return "\n".join([line(headers), "  ".join("-" * w for w in widths), *(line(r) for r in cells)])


def markdown_rows(headers: Sequence[str], cells: Sequence[Sequence[str]], numeric: Sequence[bool]) -> str:
    """Lay out a Markdown table (numeric columns right-aligned)."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---:" if n else "---" for n in numeric) + "|"]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in cells])
