"""Deprecated name of :mod:`threads_search.wsi.plan` (``plan_slide``, ``SlidePlan``,
``SegmentConfig``); removed in the next release."""

from threads_search._deprecated import alias

alias(__name__, "threads_search.wsi.plan")
