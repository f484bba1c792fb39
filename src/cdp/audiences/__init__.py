"""Audiences: the audience language (YAML -> typed conditions -> Column), member selection, export shaping."""
from __future__ import annotations

from cdp.audiences.activation import export_frame, normalise_email, normalise_phone
from cdp.audiences.language import (
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

__all__ = ["Audience", "behaviour_conditions", "behaviour_flags", "compile_audience", "customer_frame",
           "events_by_customer", "export_frame", "normalise_email", "normalise_phone", "purchases_by_customer",
           "select_members", "validate_audience"]
