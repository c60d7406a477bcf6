"""A small real index for the UI tests, built once per test session.

A clean pixel-level cohort (10 patients, 2 subtypes, RNA + DNA each, all in the training split),
painted 1536 x 1536 px slides at 0.5 µm/px, hed-texture features (256 px patches), a short
THREADS training (15 epochs) and ``run_index`` over the features. The training is checked: most
patients' own RNA profile must retrieve their paired slide first (``probe`` is one of them).

The fixture ``ui_index`` is defined here and imported by the UI test files; the built index is
cached in this module, so both files share one build.
"""

from __future__ import annotations

import contextlib
import io
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest

COHORT = dict(
    n_patients=10,
    seed=26,
    modality=(1.0, 0.0, 0.0),
    n_subtypes=2,
    n_genes=120,
    n_panel=24,
    split=(1.0, 0.0, 0.0),
)
TRAIN_ARGS = [
    "--head-dim",
    "64",
    "--attn-dim",
    "32",
    "--heads",
    "2",
    "--epochs",
    "15",
    "--batch-size",
    "5",
    "--lr",
    "2e-3",
    "--patience",
    "0",
    "--quiet",
    "--threads",
    "2",
]
MIN_SELF_RETRIEVAL = 7  # of 10 patients: RNA profile → own slide at rank 1
_BUILT: dict = {}


@dataclass
class UiIndex:
    """``index_dir``; ``slides_dir`` with ``<slide_id>.tiff``; the cohort files ``paths`` (rna,
    maf, pairs, metadata); the generated ``cohort``; ``probe``: a patient whose own RNA profile
    retrieves its slide ``probe + "-DX1"`` first; ``self_hits``: how many patients do."""

    root: Path
    index_dir: Path
    slides_dir: Path
    paths: dict
    cohort: object
    probe: str
    self_hits: int

    def rna_profile(self, patient: str) -> pd.DataFrame:
        """One-row RNA frame (sample_id + one TPM column per gene) of ``patient``."""
        rna = self.cohort.rna
        return rna[rna["sample_id"] == f"{patient}-01R"].reset_index(drop=True)


def build_ui_index(root: Path) -> UiIndex:
    """Build the cohort, slides, features, model and index under ``root`` (module docstring);
    a complete earlier build there is reused."""
    from threads_search.synth import make_cohort

    root = Path(root)
    cohort = make_cohort(**COHORT)
    if not (root / "index" / "index.json").exists():
        _build(root, cohort)
    return _check(root, cohort)


def _build(root: Path, cohort) -> None:
    from indexer.build import run_index
    from indexer.config import IndexConfig
    from threads_search.features import default_config, extract_features
    from threads_search.synth import write_slides
    from trainer.cli import main as train

    paths = cohort.write(root / "cohort")
    slides_dir = root / "slides"
    write_slides(cohort, slides_dir, 1536, 1536, workers=2)
    feats = root / "features"
    extract_features([slides_dir], feats, default_config("hed-texture", patch_size=256, workers=0))
    model = root / "model"
    args = [
        "--features",
        str(feats),
        "--pairs",
        str(paths["pairs"]),
        "--rna",
        str(paths["rna"]),
        "--dna",
        str(paths["maf"]),
        "--metadata",
        str(paths["metadata"]),
        "--out",
        str(model),
        *TRAIN_ARGS,
    ]
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # DNA genes outside the trained panel, by design
        if train(args) != 0:
            raise RuntimeError("training the UI fixture model failed")
        index_dir = root / "index"
        run_index(
            IndexConfig(
                inputs=[str(feats)],
                model=str(model),
                out=str(index_dir),
                pairs=str(paths["pairs"]),
                metadata=str(paths["metadata"]),
                rna=str(paths["rna"]),
                dna=str(paths["maf"]),
                workers=0,
            )
        )


def _check(root: Path, cohort) -> UiIndex:
    from threads_search.query import open_index

    index_dir = root / "index"
    paths = {
        k: root / "cohort" / n
        for k, n in (
            ("rna", "rna.parquet"),
            ("maf", "mutations.maf"),
            ("pairs", "pairs.csv"),
            ("metadata", "metadata.csv"),
        )
    }
    slides_dir = root / "slides"
    index = open_index(index_dir)
    hits = [
        pid
        for pid in cohort.patients["patient_id"]
        if index.search_by_molecule(rna=f"{pid}-01R", k=1)["patient_id"].iat[0] == pid
    ]
    return UiIndex(root, index_dir, slides_dir, paths, cohort, hits[0] if hits else "", len(hits))


@pytest.fixture(scope="session")
def ui_index(tmp_path_factory) -> UiIndex:
    if "ui" not in _BUILT:
        # UI_FIXTURE_DIR: a folder to build in and reuse across runs (development only)
        root = os.environ.get("UI_FIXTURE_DIR") or tmp_path_factory.mktemp("ui_index")
        _BUILT["ui"] = build_ui_index(Path(root))
    ui = _BUILT["ui"]
    assert ui.self_hits >= MIN_SELF_RETRIEVAL, (
        f"only {ui.self_hits}/10 patients' RNA retrieve their own slide first: the fixture "
        "training did not learn the pairing"
    )
    return ui
