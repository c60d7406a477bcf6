"""Deprecated name of :mod:`threads_search.patch_encoders` (``create_patch_encoder``,
``list_patch_encoders``, ...); removed in the next release."""

from threads_search._deprecated import alias

alias(__name__, "threads_search.patch_encoders", ("base", "checkpoint", "hed_texture"))
