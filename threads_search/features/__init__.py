"""Patch features per slide: plan (tissue, patch grid), encode; TRIDENT/CLAM-compatible h5
files."""

from threads_search.features.config import FeaturesConfig, FeaturesConfigError, load_config
from threads_search.features.extract import (
    SlideOutcome,
    default_config,
    encode_slide_file,
    extract_features,
)
from threads_search.features.h5io import (
    FeatureFile,
    FeatureFileError,
    read_features,
    write_features,
)

__all__ = [
    "FeatureFile",
    "FeatureFileError",
    "FeaturesConfig",
    "FeaturesConfigError",
    "SlideOutcome",
    "default_config",
    "encode_slide_file",
    "extract_features",
    "load_config",
    "read_features",
    "write_features",
]
