"""A small synthetic cohort indexed through the real pipeline (feature bags → `index` with RNA,
DNA, pairs and metadata) for the evaluate tests, plus its labels table: subtype (shown by the
slides), TP53, a survival outcome driven by programme_1 (shown) and one driven by a factor no
modality shows (``hidden_os``). Imported by tests/test_evaluate*.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

N_PATIENTS = 90


def build_eval_index(root: Path, n_patients: int = N_PATIENTS) -> dict:
    import torch

    from indexer.build import run_index
    from indexer.config import IndexConfig
    from threads_search.models.bundle import build_model, save_model
    from threads_search.molecular import RnaNormalizer
    from threads_search.synth import make_cohort, write_feature_bags

    cohort = make_cohort(
        n_patients, n_genes=40, n_panel=12, modality=(0.8, 0.2, 0.0), noise=0.3, seed=11
    )
    paths = cohort.write(root / "cohort")
    write_feature_bags(cohort, root / "features", dim=16, n_patches=(20, 40))
    rna = cohort.rna.set_index("sample_id")
    torch.manual_seed(1)  # not the untrained baseline's seed (0)
    model = build_model(
        {"name": "synthetic-features", "dim": 16},
        slide_config={"heads": 1, "head_dim": 32, "attn_dim": 16, "dropout": 0.0},
        normalizer=RnaNormalizer.fit(np.log1p(rna), units="tpm"),
        rna_config={"hidden_dims": [32]},
        genes_dna=list(cohort.truth["panel"]),
        dna_config={"hidden_dims": [16]},
    )
    save_model(model, root / "model")
    run_index(
        IndexConfig(
            inputs=[str(root / "features")],
            model=str(root / "model"),
            out=str(root / "index"),
            pairs=str(paths["pairs"]),
            rna=str(paths["rna"]),
            dna=str(paths["maf"]),
        )
    )
    labels = cohort.patients[
        [
            "patient_id",
            "subtype",
            "TP53_mutated",
            "programme_1",
            "os_months",
            "os_event",
            "hidden_os_months",
            "hidden_os_event",
            "split",
        ]
    ]
    labels.to_csv(root / "labels.csv", index=False)
    return {"root": root, "index": root / "index", "labels": root / "labels.csv", "cohort": cohort}


@pytest.fixture(scope="session")
def eval_index(tmp_path_factory) -> dict:
    return build_eval_index(tmp_path_factory.mktemp("eval_index"))
