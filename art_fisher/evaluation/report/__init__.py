"""What an evaluation writes: the tables (console, Markdown, CSV), the JSON record and the figures."""

from art_fisher.evaluation.report._report import format_console, write_report

__all__ = ["format_console", "write_report"]
