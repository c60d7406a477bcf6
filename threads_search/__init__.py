"""threads-search: whole-slide-image retrieval on a THREADS-style slide-molecule embedding space.

Data flow (folders follow it): ``wsi`` (slide reading, tissue, patch grid) → ``features`` →
``models`` (patch, slide and molecular encoders) → ``index`` → ``query`` → ``ui``.
"""

from __future__ import annotations

__version__ = "0.1.0"
