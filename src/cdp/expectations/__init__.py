"""Quality gates: Great Expectations suites built from ``conf/quality.yaml``, validated on DataFrames."""
from __future__ import annotations

from cdp.expectations.quality import QualityConfig, SuiteResult, render_report_html, validate_suite

__all__ = ["QualityConfig", "SuiteResult", "render_report_html", "validate_suite"]
