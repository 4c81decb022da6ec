"""What a person reads: Markdown tables and result files (``tables``) and figures (``plots``) of protocol results."""

from odin_pl.report.tables import results_tables, write_results

__all__ = ["results_tables", "write_results"]
