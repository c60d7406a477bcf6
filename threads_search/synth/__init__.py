"""Synthetic data with known ground truth: painted slides, broken files, (later) paired cohorts."""

from threads_search.synth.archive import SyntheticSlide, make_archive, make_slide
from threads_search.synth.cohort import Cohort, load_cohort, make_cohort
from threads_search.synth.cohort_features import write_feature_bags
from threads_search.synth.cohort_slides import write_slides
from threads_search.synth.tiff import downsample, write_broken_slides, write_slide

__all__ = [
    "Cohort",
    "load_cohort",
    "make_cohort",
    "write_feature_bags",
    "write_slides",
    "SyntheticSlide",
    "downsample",
    "make_archive",
    "make_slide",
    "write_broken_slides",
    "write_slide",
]
