"""Reports: figures (matplotlib, drawing only), report.html per study, and reports/index.html."""

from .html import write_index, write_report

__all__ = ["write_index", "write_report"]
