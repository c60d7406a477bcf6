"""Small synthetic indexes for the query tests, built once per test session and imported by
the ``test_query*`` files: ``hand`` (known ground truth, no model bundle), ``modelled`` (a
model bundle in INDEX_DIR/model, for queries embedded on the fly) and ``cli`` (the query
commands on a bare Typer app), plus ``invoke`` to run one of them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import typer
from typer.testing import CliRunner

from threads_search.cli.query import register
from threads_search.query import open_index
from threads_search.vectorstore.writer import write_generation

E = 32
N_PATIENTS = 30


def unit(x):
    x = np.asarray(x, np.float64)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def class_of(p: int) -> int:
    return 0 if p < 14 else (1 if p < 24 else 2)


@pytest.fixture(scope="session")
def hand(tmp_path_factory):
    """30 patients x 2 slides around 3 class centres; an RNA sample per patient (near the
    patient's slides) and a DNA sample for even patients. No model bundle on disk."""
    from PIL import Image

    root = tmp_path_factory.mktemp("hand")
    rng = np.random.default_rng(7)
    centres = rng.normal(size=(3, E)) * 2.0
    base = np.array([centres[class_of(p)] + rng.normal(size=E) for p in range(N_PATIENTS)])
    slides, s_emb = [], []
    for p in range(N_PATIENTS):
        for j in (1, 2):
            slides.append(
                {
                    "slide_id": f"P{p:03d}-DX{j}",
                    "path": f"/archive/P{p:03d}-DX{j}.svs",
                    "patient_id": f"P{p:03d}",
                    "mpp": 0.5,
                    "width": 1000,
                    "height": 800,
                    "n_patches": 10 + p,
                    "tissue_area_mm2": 1.5,
                    "subtype": f"class_{class_of(p)}",
                    "site": "ABC"[p % 3],
                    "age": 30 + p,
                    "grade": None if p % 4 == 0 else f"G{1 + p % 3}",
                }
            )
            s_emb.append(base[p] + 0.15 * rng.normal(size=E))
    mol, m_emb = [], []
    for p in range(N_PATIENTS):
        for kind in ("rna", "dna") if p % 2 == 0 else ("rna",):
            mol.append(
                {
                    "sample_id": f"P{p:03d}-{kind[0].upper()}",
                    "patient_id": f"P{p:03d}",
                    "kind": kind,
                    "subtype": f"class_{class_of(p)}",
                    "site": "ABC"[p % 3],
                }
            )
            m_emb.append(base[p] + 0.15 * rng.normal(size=E))
    thumbs = {}
    for s in slides[:4]:
        path = root / f"{s['slide_id']}.jpg"
        Image.new("RGB", (8, 8), (200, 100, 100)).save(path)
        thumbs[s["slide_id"]] = path
    att = {slides[0]["slide_id"]: pd.DataFrame({"x": [0, 512], "y": [0, 0], "score": [0.3, 0.7]})}
    index_dir = root / "index"
    write_generation(
        index_dir,
        pd.DataFrame(slides),
        np.array(s_emb, np.float32),
        pd.DataFrame(mol),
        np.array(m_emb, np.float32),
        attention=att,
        thumbnails=thumbs,
        manifest={"model": {"dir": "model"}},
    )
    index = open_index(index_dir)
    vec_s = unit(np.array(s_emb))[np.argsort([s["slide_id"] for s in slides], kind="stable")]
    return index, vec_s


def brute(vecs, q, ids, k):
    sc = vecs[ids] @ unit(q)
    order = np.lexsort((ids, -sc))[:k]
    return ids[order], sc[order]


@pytest.fixture(scope="session")
def cli():
    app = typer.Typer()
    register(app)
    return app


def invoke(app, command: str, root, *args: str):
    """``threads-search <command> <root> <args...>`` on ``app``; ``command`` may hold flags
    separated by spaces (``"search --slide P004-DX1 -k 3"``: the first word is the command)."""
    words = command.split()
    return CliRunner().invoke(app, [words[0], str(root), *words[1:], *args])


@pytest.fixture(scope="session")
def modelled(tmp_path_factory):
    """A make_cohort index whose model (untrained, seeded, hed-texture features) lives in
    INDEX_DIR/model. Slide embeddings = the patient's RNA embedding + small noise, so a profile
    must retrieve its own patient's slide; TWIN-H5 / TWIN-SLIDE are the model's embeddings of a
    feature file and of a painted slide file kept outside the index's paths."""
    import torch

    from threads_search.features import write_features
    from threads_search.models.bundle import build_model, save_model
    from threads_search.molecular import RnaNormalizer
    from threads_search.patch_encoders import get_patch_encoder_spec
    from threads_search.synth import make_cohort, make_slide

    root = tmp_path_factory.mktemp("modelled")
    cohort = make_cohort(n_patients=12, n_genes=40, n_panel=12, modality=(0.75, 0.25, 0.0), seed=3)
    spec = get_patch_encoder_spec("hed-texture")
    torch.manual_seed(0)
    rna = cohort.rna.set_index("sample_id")
    model = build_model(
        {"name": spec.name, "dim": spec.dim},
        slide_config={"heads": 1, "head_dim": 32, "attn_dim": 16, "dropout": 0.0},
        normalizer=RnaNormalizer.fit(np.log1p(rna), units="tpm"),
        rna_config={"hidden_dims": [64]},
        genes_dna=list(cohort.truth["panel"]),
        dna_config={"hidden_dims": [32]},
    ).eval()
    index_dir = root / "index"
    save_model(model, index_dir / "model")
    rna_emb = model.embed_rna(cohort.rna)
    dna = cohort.dna_matrix()
    dna_emb = model.embed_dna(dna)
    gaps = np.linalg.norm(rna_emb[:, None] - rna_emb[None], axis=-1)
    noise = 0.05 * gaps[~np.eye(len(gaps), dtype=bool)].min() / np.sqrt(rna_emb.shape[1])
    rng = np.random.default_rng(0)
    rna_of = dict(
        zip(cohort.samples.query("kind == 'rna'")["patient_id"], range(len(rna)), strict=True)
    )
    slides = cohort.slides[cohort.slides["patient_id"].isin(rna_of)][["slide_id", "patient_id"]]
    emb = [
        rna_emb[rna_of[p]] + noise * rng.normal(size=rna_emb.shape[1]) for p in slides.patient_id
    ]
    h5 = root / "new.h5"
    feats = rng.normal(size=(20, spec.dim)).astype(np.float32)
    write_features(
        h5, feats, np.zeros((20, 2), np.int64), {"patch_encoder": spec.name, "target_mpp": 0.5}
    )
    slide = make_slide(root / "new.tiff", 1536, 1024, 0.5, seed=1).path
    twins = {"TWIN-H5": model.embed_slide(h5), "TWIN-SLIDE": model.embed_slide(slide)}
    table = pd.concat([slides, pd.DataFrame({"slide_id": list(twins), "patient_id": ["X1", "X2"]})])
    table["path"] = "/archive/" + table["slide_id"] + ".svs"
    mol = pd.concat(
        [
            pd.DataFrame({"sample_id": rna.index, "kind": "rna"}),
            pd.DataFrame({"sample_id": dna.index, "kind": "dna"}),
        ]
    )
    mol["patient_id"] = mol["sample_id"].str[:12]
    write_generation(
        index_dir,
        table,
        np.vstack(emb + list(twins.values())),
        mol,
        np.vstack([rna_emb, dna_emb]),
        manifest={"model": {"dir": "model"}},
    )
    return open_index(index_dir), cohort, h5, Path(slide)
