"""One self-contained HTML page (and a JSON file of every number) that follows one image through the network."""

from __future__ import annotations

from .assemble import ReportOptions, ReportResult, build_report

__all__ = ["ReportOptions", "ReportResult", "build_report"]
