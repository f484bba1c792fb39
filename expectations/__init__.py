"""Audience language, consent and suppression, export shaping, and quality-gate suites."""
from __future__ import annotations

from expectations.activation import export_frame, normalise_email, normalise_phone
from expectations.audience import (
    Audience,
    behaviour_conditions,
    behaviour_flags,
    compile_audience,
    customer_frame,
    events_by_customer,
    purchases_by_customer,
    select_members,
    validate_audience,
)
from expectations.privacy import (
    channel_contacts,
    consent_current,
    drop_records,
    eligibility,
    mask_pii,
    sha256_hex,
    suppress,
    suppressed_customers,
    suppressed_records,
)
from expectations.quality import QualityConfig, SuiteResult, render_report_html, validate_suite

__all__ = [
    "Audience", "QualityConfig", "SuiteResult", "behaviour_conditions", "behaviour_flags",
    "channel_contacts", "compile_audience", "consent_current", "customer_frame", "drop_records",
    "eligibility", "events_by_customer", "export_frame", "mask_pii", "normalise_email",
    "normalise_phone", "purchases_by_customer", "render_report_html", "select_members", "sha256_hex",
    "suppress", "suppressed_customers", "suppressed_records", "validate_audience", "validate_suite",
]
