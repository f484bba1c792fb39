"""Identity resolution: identifier graph, connected components, over-merge guards, stable ids, golden record.

Pure transforms (DataFrames and :class:`IdentityConfig` in, DataFrames out); ``jobs/stitch.py`` does the I/O.
"""
from __future__ import annotations

from cdp.identity.components import connected_components, graphframes_available, resolve_engine
from cdp.identity.config import BlockList, IdentifierType, IdentityConfig, Survivorship
from cdp.identity.graph import (
    build_edges,
    build_nodes,
    candidate_edges,
    classify_identifiers,
    direct_hubs,
    flag_shared_identifiers,
    node_id,
    record_identifiers,
)
from cdp.identity.limits import enforce_limits, quarantine_oversized
from cdp.identity.profile import build_profile
from cdp.identity.resolve import PreviousState, StitchResult, resolve_identities
from cdp.identity.stable_ids import assign_stable_ids

__all__ = [
    "BlockList",
    "IdentifierType",
    "IdentityConfig",
    "PreviousState",
    "StitchResult",
    "Survivorship",
    "assign_stable_ids",
    "build_edges",
    "build_nodes",
    "build_profile",
    "candidate_edges",
    "classify_identifiers",
    "connected_components",
    "direct_hubs",
    "enforce_limits",
    "flag_shared_identifiers",
    "graphframes_available",
    "node_id",
    "quarantine_oversized",
    "record_identifiers",
    "resolve_engine",
    "resolve_identities",
]
