"""Plain-text and Markdown tables of the evaluation's rows (the console output and the report)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["cells_of", "fmt_cell", "markdown_rows", "text_table"]


def fmt_cell(value: Any, fmt: str, key: str) -> str:
    if key == "seconds_per_sample" and value is not None:
        value = 1000.0 * value
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return fmt.format(value)


def cells_of(
    rows: Sequence[Mapping[str, Any]], columns: Sequence[tuple], extra: Mapping[str, Mapping]
) -> list[list[str]]:
    return [
        [fmt_cell(extra[k].get(r["attack"]) if k in extra else r.get(k), f, k) for k, _, f in columns] for r in rows
    ]


def text_table(headers: Sequence[str], cells: Sequence[Sequence[str]], numeric: Sequence[bool]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]

    def line(values: Sequence[str]) -> str:
        return "  ".join(
            v.rjust(w) if n else v.ljust(w) for v, w, n in zip(values, widths, numeric, strict=True)
        ).rstrip()

    return "\n".join([line(headers), "  ".join("-" * w for w in widths), *(line(r) for r in cells)])


def markdown_rows(headers: Sequence[str], cells: Sequence[Sequence[str]], numeric: Sequence[bool]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---:" if n else "---" for n in numeric) + "|"]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in cells])
