"""What a run did, read back from its directory: the text tables of the evaluation (`tables`) and one
self-contained HTML page (`page`, runs/<name>/report.html)."""

from chatforge.report.page import checked_json, render

__all__ = ["checked_json", "render"]
