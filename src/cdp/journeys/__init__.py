"""Journeys: multi-step campaigns declared in YAML (``conf/journeys``), evaluated as a batch per run.

:mod:`cdp.journeys.definition` parses and checks the files; :mod:`cdp.journeys.engine` advances the
members (pure DataFrame transforms); ``cdp journeys`` (:mod:`cdp.jobs.journeys`) reads and writes the
tables and publishes each send step's batch through the audiences' gates.
"""
from __future__ import annotations

from cdp.journeys.definition import (
    POLICY_FILE,
    SEND_AUDIENCE_PREFIX,
    Entry,
    EventMatch,
    ExitRules,
    FrequencyCap,
    Journey,
    JourneyPolicy,
    QuietDays,
    Step,
    condition_key,
    validate_journey,
)

__all__ = ["POLICY_FILE", "SEND_AUDIENCE_PREFIX", "Entry", "EventMatch", "ExitRules", "FrequencyCap", "Journey",
           "JourneyPolicy", "QuietDays", "Step", "condition_key", "validate_journey"]
