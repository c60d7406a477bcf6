"""``status.parquet``: one row per slide (done | failed), rewritten atomically after each slide.

Only the holder of the FEATURES_DIR lock writes it (``features.extract.features_lock``), so the
in-memory copy a run starts from is never overwritten by another run. Text columns are stored
as valid UTF-8 (``threads_search.paths.display_text``: a file name that is not UTF-8 shows its
odd bytes as ``\\xNN``), so no path or message can make the write fail.

``source_fingerprint`` (JSON text, ``threads_search.wsi.fingerprint.to_text``) is the slide
file's fingerprint taken just before its features were made (or its failure recorded): a file
replaced at the same path is told from it (``features.extract.reuse_features``). Files written
before this column existed read as rows without one (None: unknown).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from threads_search.atomic import atomic_path
from threads_search.paths import display_text

STATUS_NAME = "status.parquet"
COLUMNS = [
    "slide_id",
    "path",
    "state",
    "error",
    "n_patches",
    "seconds",
    "config_hash",
    "finished",
    "source_fingerprint",
]
TEXT_COLUMNS = ("slide_id", "path", "state", "error", "config_hash", "source_fingerprint")


class StatusTable:
    """Per-slide outcome of a features run, keyed by ``slide_id``."""

    def __init__(self, features_dir: str | Path) -> None:
        self.path = Path(features_dir) / STATUS_NAME
        if self.path.exists():
            df = pd.read_parquet(self.path)
            self.rows = {r["slide_id"]: r for r in df.to_dict("records")}
        else:
            self.rows = {}

    def get(self, slide_id: str) -> dict | None:
        return self.rows.get(slide_id)

    def set(self, slide_id: str, **row) -> None:
        row = {c: row.get(c) for c in COLUMNS if c != "slide_id"}
        self.rows[slide_id] = {"slide_id": slide_id, **row}
        self.save()

    def update(self, slide_id: str, **fields) -> None:
        """Change fields of an existing row in memory (written by the next ``save``)."""
        self.rows[slide_id] = {**self.rows[slide_id], **fields}

    def frame(self) -> pd.DataFrame:
        df = pd.DataFrame(list(self.rows.values()), columns=COLUMNS)
        for c in TEXT_COLUMNS:
            df[c] = [v if v is None or isinstance(v, float) else display_text(v) for v in df[c]]
        return df.sort_values("slide_id").reset_index(drop=True)

    def save(self) -> None:
        """Write every row to ``status.parquet`` atomically (``threads_search.atomic``)."""
        df = self.frame().astype({"n_patches": "Int64", "seconds": "float64"})
        with atomic_path(self.path) as tmp:
            df.to_parquet(tmp, index=False)
