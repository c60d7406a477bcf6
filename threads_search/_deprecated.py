"""Old module names kept for one release, each warning once that it moved (``DeprecationWarning``
naming the new one). Nothing inside threads-search imports them."""

from __future__ import annotations

import importlib
import sys
import warnings


def alias(old: str, new: str, submodules: tuple[str, ...] = ()) -> object:
    """Make module ``old`` (and ``old.<sub>`` for ``submodules``) the module ``new``; warns."""
    warnings.warn(
        f"{old} is now {new}; the old name will be removed in the next release",
        DeprecationWarning,
        stacklevel=3,
    )
    module = importlib.import_module(new)
    for sub in submodules:
        sys.modules[f"{old}.{sub}"] = importlib.import_module(f"{new}.{sub}")
    sys.modules[old] = module
    return module
