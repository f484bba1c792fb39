"""Customer features as of a date: configuration, compilation into at most two aggregations per source."""
from __future__ import annotations

from cdp.features.build import FeatureInputs, as_of_instant, build_features, feature_schema, prepare_sources
from cdp.features.config import LIFETIME, Feature, FeatureConfig, ListItem
from cdp.features.labels import purchase_labels

__all__ = ["LIFETIME", "Feature", "FeatureConfig", "FeatureInputs", "ListItem", "as_of_instant",
           "build_features", "feature_schema", "prepare_sources", "purchase_labels"]
