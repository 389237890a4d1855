"""What a run did, read back from its directory: the text tables of the evaluation (`tables`) and one
self-contained HTML page (`page`, runs/<name>/report.html)."""

from chatforge.report.page import render

__all__ = ["render"]
