"""Slide reading: open (OpenSlide), resolve µm/px, tissue mask, patch grid, patch reader."""

from threads_search.wsi.discover import SLIDE_EXTENSIONS, SlideRef, discover_slides
from threads_search.wsi.errors import MppError, SlideError
from threads_search.wsi.grid import GridParams, patch_grid
from threads_search.wsi.mpp import MppInfo, load_mpp_csv, lookup_override, resolve_mpp
from threads_search.wsi.slide import Slide, open_slide

__all__ = [
    "SLIDE_EXTENSIONS",
    "GridParams",
    "MppError",
    "MppInfo",
    "Slide",
    "SlideError",
    "SlideRef",
    "discover_slides",
    "load_mpp_csv",
    "lookup_override",
    "open_slide",
    "patch_grid",
    "resolve_mpp",
]
