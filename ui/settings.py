"""The app's settings from the environment that ``ui.launch`` sets for the Streamlit server
(no Streamlit import here: the launcher reads these names before any server runs)."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

ENV_INDEX = "THREADS_SEARCH_INDEX"
ENV_HOST = "THREADS_SEARCH_UI_HOST"
ENV_TILE_PORT = "THREADS_SEARCH_TILE_PORT"
ENV_MAX_UPLOAD_MB = "THREADS_SEARCH_UI_MAX_UPLOAD_MB"
ENV_CHECKPOINT = "THREADS_SEARCH_CHECKPOINT"  # a pretrained patch encoder's weights (uploads)
DEFAULT_MAX_UPLOAD_MB = 2048


@dataclass(frozen=True)
class Settings:
    index_dir: str | None
    host: str
    tile_port: int
    max_upload_mb: int
    checkpoint: str | None = None


def settings() -> Settings:
    """From the environment (see ``ui.launch``), else ``streamlit run ui/app.py -- INDEX_DIR``."""
    args = [a for a in sys.argv[1:] if not a.startswith("-")]
    index_dir = os.environ.get(ENV_INDEX) or (args[0] if args else None)
    return Settings(
        index_dir=index_dir,
        host=os.environ.get(ENV_HOST, "127.0.0.1"),
        tile_port=int(os.environ.get(ENV_TILE_PORT, "0") or 0),
        max_upload_mb=int(os.environ.get(ENV_MAX_UPLOAD_MB, DEFAULT_MAX_UPLOAD_MB)),
        checkpoint=os.environ.get(ENV_CHECKPOINT) or None,
    )
