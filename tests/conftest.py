"""Shared fixtures: small synthetic slides written as real pyramidal TIFF/SVS files, and the
real sample data in ../shared/data/real (skipped with a message when absent)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

# UI fixtures for every test file: browser (server, browser, page, shots), AppTest (index, app).
pytest_plugins = ["ui_browser_fixtures", "ui_apptest"]

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
REAL_DIR = REPO.parent / "shared" / "data" / "real"


@pytest.fixture(scope="session")
def real_dir() -> Path:
    if not REAL_DIR.is_dir():
        pytest.skip(f"real sample data not found at {REAL_DIR} (../shared is absent)")
    return REAL_DIR


def smooth_image(width: int, height: int, seed: int = 0) -> np.ndarray:
    """Low-frequency colour field uint8 ``[height, width, 3]``: interpolation-friendly content
    for resampling tests (no tissue semantics)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    chans = []
    for _ in range(3):
        fx, fy, ph = rng.uniform(1, 4, 2).tolist() + [rng.uniform(0, 6.28)]
        chans.append(150 + 80 * np.sin(2 * np.pi * (fx * xx / width + fy * yy / height) + ph))
    return np.clip(np.stack(chans, -1), 0, 255).astype(np.uint8)


@pytest.fixture(scope="session")
def slide_factory(tmp_path_factory):
    """``make(fmt="tiff", mpp=0.5, width=2048, height=1536, seed=0)`` → SyntheticSlide, cached."""
    from threads_search.synth import make_slide

    root = tmp_path_factory.mktemp("slides")
    cache: dict = {}

    def make(fmt="tiff", mpp=0.5, width=2048, height=1536, seed=0, **kw):
        key = (fmt, mpp, width, height, seed, tuple(sorted(kw.items())))
        if key not in cache:
            ext = "svs" if fmt == "svs" else "tiff"
            name = f"s{len(cache):03d}_{fmt}_{mpp:g}_{seed}.{ext}"
            cache[key] = make_slide(root / name, width, height, mpp, fmt, seed=seed, **kw)
        return cache[key]

    return make


@pytest.fixture(scope="session")
def archive(tmp_path_factory):
    """A small archive: 3 painted slides (TIFF and SVS) plus the broken files."""
    from threads_search.synth import make_archive

    root = tmp_path_factory.mktemp("archive")
    slides = make_archive(root, n_slides=3, width=2048, height=1536, broken=True)
    return root, slides


def scramble_weights(model, seed: int) -> None:
    """Perturb every parameter of a random-weights torch ``model`` so that outputs depend on
    the image and on every tensor (fresh ViTs have LayerScale 1e-5, fresh ResNets
    zero-initialised last BatchNorms)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("gamma"):
                p.fill_(0.5)
            else:
                p.add_(torch.randn(p.shape, generator=g) * 0.05)


def make_bundle(out, patch_encoder: dict, rna_genes=None, dna_genes=None, seed: int = 0):
    """A small untrained model bundle (deterministic from ``seed``) for pipeline tests."""
    import pandas as pd
    import torch

    from threads_search.models.bundle import build_model, save_model
    from threads_search.molecular import RnaNormalizer

    torch.manual_seed(seed)
    norm = None
    if rna_genes:
        log = pd.DataFrame(
            np.random.default_rng(seed).normal(size=(8, len(rna_genes))), columns=rna_genes
        )
        # statistics in log space of TPM data, as the synthetic cohorts' RNA is TPM
        norm = RnaNormalizer.fit(log, units="tpm")
    model = build_model(
        patch_encoder,
        slide_config={"head_dim": 64, "attn_dim": 32},
        normalizer=norm,
        genes_dna=dna_genes,
    )
    save_model(model, out)
    return out


@pytest.fixture(scope="session")
def hed_bundle(tmp_path_factory):
    """Untrained bundle expecting ``hed-texture`` features (512 px @ 0.5 µm/px)."""
    from threads_search.patch_encoders import get_patch_encoder_spec

    spec = get_patch_encoder_spec("hed-texture")
    return make_bundle(tmp_path_factory.mktemp("hed_bundle") / "model", spec.to_dict())


def train_argv(features, paths, out, *extra, pairs=None, metadata=None, rna=True, dna=True):
    """argv of ``threads-search train`` on a synthetic cohort written by ``Cohort.write``
    (``paths``) with its feature bags in ``features``; ``extra`` options come last."""
    args = ["--features", str(features), "--pairs", str(pairs or paths["pairs"]), "--out", str(out)]
    if metadata:
        args += ["--metadata", str(metadata)]
    if rna:
        args += ["--rna", str(paths["rna"])]
    if dna:
        args += ["--dna", str(paths["maf"])]
    return args + [str(e) for e in extra]


def training_log(out) -> list[dict]:
    """The rows of ``MODEL_DIR/training_log.jsonl``."""
    import json

    return [
        json.loads(line) for line in (Path(out) / "training_log.jsonl").read_text().splitlines()
    ]
