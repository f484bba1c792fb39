"""Engage: measuring audiences against their control groups (goals, lift), the global control group."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cdp.engage.measure import (
    Goal,
    GroupTotals,
    Lift,
    goal_actions,
    group_totals,
    lift,
    member_outcomes,
    rate_interval,
    window_end,
)
from cdp.engage.responses import (
    LINK_KEYS,
    MESSAGES_TABLE,
    RESPONSE_EVENT_TYPES,
    link_responses,
    response_links,
)


@dataclass(frozen=True)
class EngageConfig:
    """``conf/engage.yaml``: the global control group held out of every non-transactional audience."""

    global_control_percent: float = 0.0

    @classmethod
    def from_dict(cls, data: Any) -> EngageConfig:
        if data is None:
            return cls()
        if not isinstance(data, Mapping):
            raise ValueError("expected a mapping with a 'global_control' key")
        unknown = sorted(set(data) - {"global_control"})
        if unknown:
            raise ValueError(f"unknown top-level keys {unknown}; use global_control")
        control = data.get("global_control") or {}
        if not isinstance(control, Mapping) or set(control) - {"percent"}:
            raise ValueError("global_control: expected a mapping like {percent: 5}")
        percent = control.get("percent", 0)
        if isinstance(percent, bool) or not isinstance(percent, int | float) or not 0 <= percent < 50:
            raise ValueError(f"global_control.percent: expected a number in [0, 50), got {percent!r}")
        return cls(global_control_percent=float(percent))


__all__ = ["LINK_KEYS", "MESSAGES_TABLE", "RESPONSE_EVENT_TYPES", "EngageConfig", "Goal", "GroupTotals", "Lift", "goal_actions", "group_totals",
           "lift", "link_responses", "member_outcomes", "rate_interval", "response_links", "window_end"]
