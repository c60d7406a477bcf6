"""What region search compares, on the painted region cohort (tests/region_fixtures.py): the
default (``auto``) and why, and the ``tissue`` projection through the index, the API and the CLI
(its effect on ranking: tests/test_projection.py and ``bench/region_quality.py``)."""

from __future__ import annotations

import numpy as np
import pytest
import region_fixtures
from typer.testing import CliRunner

from indexer.build import run_index
from indexer.config import IndexConfig
from threads_search.cli import app
from threads_search.query import open_index
from threads_search.wsi.slide import open_slide

runner = CliRunner()
region_cohort = region_fixtures.region_cohort  # the session fixture


@pytest.fixture(scope="module")
def spaces(region_cohort, tmp_path_factory) -> dict:
    """The cohort's features indexed with ``--region-features tissue`` and ``raw``."""
    out = {}
    for mode in ("tissue", "raw"):
        d = tmp_path_factory.mktemp(f"regions_{mode}") / "index"
        cfg = IndexConfig(
            inputs=[str(region_cohort.features)],
            model=str(region_cohort.model),
            out=str(d),
            metadata=str(region_cohort.root / "metadata.csv"),
            region_features=mode,
        )
        run_index(cfg)
        out[mode] = open_index(d)
    return out


def test_by_default_a_small_archive_compares_the_raw_features_and_says_why(region_cohort):
    idx = open_index(region_cohort.index_dir)
    p = idx.info()["regions"]["projection"]
    n = len(idx.slides)
    assert p["mode"] == "raw" and f"auto: raw, {n} slides < 50" in p["reason"]
    assert idx.regions.vectors.shape[1] == idx.regions.feature_dim == 256
    res = runner.invoke(app, ["info", str(region_cohort.index_dir), "--no-batch-effects"])
    assert res.exit_code == 0 and "region search compares" in res.output
    assert "auto: raw" in res.output


def test_the_tissue_space_through_the_index_the_api_and_the_cli(spaces, region_cohort, tmp_path):
    idx = spaces["tissue"]
    p = idx.info()["regions"]["projection"]
    sp = idx.regions
    assert p == {**p, "mode": "tissue", "in_dim": 256, "out_dim": 172, "standardised": True}
    assert p["fitted_on_patches"] == len(sp.table) and "asked for" in p["reason"]
    assert sp.vectors.shape == (len(sp.table), 172) and sp.features.shape[1] == 256
    norms = np.linalg.norm(sp.vectors[np.arange(0, len(sp.table), 7)], axis=1)
    assert np.allclose(norms, 1, atol=1e-3)
    # patch features (the encoder's 256-d) as a query are projected like the indexed rows
    first = sp.table.iloc[0]
    res = idx.search_regions(np.asarray(sp.features[:1]) * 3, k=1, crops=False)
    assert (res.slide_id[0], res.x[0], res.y[0]) == (first.slide_id, first.x, first.y)
    assert res.score[0] > 0.999
    # a region of an indexed slide: its stored rows, projected; its own patches left out
    box = f"{first.slide_id}:{first.x},{first.y},{first.size_px},{first.size_px}"
    out = runner.invoke(app, ["search", str(idx.root), "--region", box, "-k", "3"])
    assert out.exit_code == 0, out.output
    assert "regions" in out.output.lower()
    hits = idx.search_regions((first.slide_id, (first.x, first.y, 512, 512)), k=3, crops=False)
    assert (
        len(hits) == 3
        and not (
            (hits.slide_id == first.slide_id) & (hits.x == first.x) & (hits.y == first.y)
        ).any()
    )
    # the evaluation baselines still read each slide's bag as the encoder's features
    from threads_search.evaluation.bags import Bags

    assert Bags(idx)._region(first.slide_id).shape[1] == 256


def test_crops_find_their_own_region_in_the_tissue_space(spaces, region_cohort):
    """Image queries are encoded and projected as the indexed patches were: a crop, turned or
    mirrored, finds its own patch first."""
    idx = spaces["tissue"]
    table = idx.regions.table
    rows = table.iloc[np.random.default_rng(0).choice(len(table), 12, replace=False)]
    paths = region_cohort.slides.set_index("slide_id")["path"]
    for i, r in enumerate(rows.itertuples()):
        with open_slide(paths[r.slide_id]) as s:
            img = s.read_region(int(r.x), int(r.y), 0, (512, 512))
        img = np.rot90(img, i % 4).copy() if i % 2 else img[:, ::-1].copy()
        top = idx.search_regions(img, k=1, crops=False).iloc[0]
        assert (top.slide_id, top.x, top.y) == (r.slide_id, r.x, r.y)
        assert top.score > 0.99


def test_a_generation_written_before_projections_reads_as_raw():
    from threads_search.query.index import _region_info
    from threads_search.vectorstore.projection import OLDER

    p = _region_info({"count": 5, "slides": 1, "dim": 8, "faiss": {"type": "flat"}})["projection"]
    assert p["mode"] == "raw" and p["in_dim"] == p["out_dim"] == 8 and p["reason"] == OLDER


def test_why_an_index_has_no_region_index():
    from threads_search.query.region_search import no_regions_reason

    off = no_regions_reason({"config": {"regions": False}, "counts": {"slides": 9}})
    assert off.startswith("built with --no-regions; run `threads-search index` again without")
    empty = no_regions_reason({"config": {"regions": True}, "counts": {"slides": 0}})
    assert empty.startswith("no slide is indexed yet")
    old = no_regions_reason({"config": {"regions": True}, "counts": {"slides": 9}})
    assert old.startswith("built by a version without region search")
