"""Synthetic data with known ground truth: painted slides, broken files, (later) paired cohorts."""

from threads_search.synth.archive import SyntheticSlide, make_archive, make_slide
from threads_search.synth.tiff import downsample, write_broken_slides, write_slide

__all__ = [
    "SyntheticSlide",
    "downsample",
    "make_archive",
    "make_slide",
    "write_broken_slides",
    "write_slide",
]
