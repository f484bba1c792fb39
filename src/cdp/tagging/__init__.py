"""Tag catalogue and tag computation (rule, algorithmic, predictive)."""
from __future__ import annotations

from cdp.tagging.catalogue import Algorithm, Catalogue, CatalogueError, ModelSpec, Tag, merge, parse_file
from cdp.tagging.clusters import Clustering, ClusterModel
from cdp.tagging.compute import (
    ArrowTransform,
    TagRunInfo,
    clustering_instances,
    compute_tags,
    long_transform,
    profile_from_tag_stats,
    tag_profile,
    tag_stats,
    tag_versions,
    to_long,
)
from cdp.tagging.validate import dependency_order, validate_catalogue

__all__ = ["Algorithm", "ArrowTransform", "Catalogue", "CatalogueError", "ClusterModel", "Clustering", "ModelSpec", "Tag",
           "TagRunInfo", "clustering_instances", "compute_tags",
           "dependency_order", "long_transform", "merge", "parse_file", "profile_from_tag_stats", "tag_profile", "tag_stats",
           "tag_versions", "to_long", "validate_catalogue"]
