"""Queries given as pixels on an index built with a pretrained (checkpoint) patch encoder: the
checkpoint given to ``open_index`` / ``search --checkpoint`` encodes them exactly as the
features stage did; without it the refusal names the encoder and how to give it. A full-depth
ResNet-50 trunk with random (scrambled) weights stands in for downloaded ones: no network."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from safetensors.torch import save_file
from typer.testing import CliRunner

ENCODER = "resnet50-trunc"


@pytest.fixture(scope="module")
def pretrained_index(tmp_path_factory, slide_factory):
    """(index folder, checkpoint path, slide path, its region table) of two small slides indexed
    with ``resnet50-trunc`` features from a saved random-weights checkpoint."""
    from conftest import make_bundle, scramble_weights

    from indexer.build import run_index
    from indexer.config import IndexConfig
    from threads_search.features import default_config, extract_features
    from threads_search.patch_encoders import create_patch_encoder, get_patch_encoder_spec
    from threads_search.query import open_index

    root = tmp_path_factory.mktemp("pretrained_queries")
    enc = create_patch_encoder(ENCODER, random_weights=True, device="cpu")
    scramble_weights(enc.model, seed=0)  # fresh ResNets zero their last BatchNorms
    ckpt = root / "model.safetensors"
    save_file({k: v.contiguous() for k, v in enc.model.state_dict().items()}, str(ckpt))
    slides = root / "slides"
    slides.mkdir()
    paths = []
    for seed in (0, 1):
        s = slide_factory(width=768, height=768, seed=seed)
        (slides / s.path.name).symlink_to(s.path)
        paths.append(slides / s.path.name)
    cfg = default_config(ENCODER, workers=0, checkpoint=str(ckpt), device="cpu")
    out = extract_features([slides], root / "feats", cfg)
    assert all(o.state == "done" for o in out), [(o.slide_id, o.error) for o in out]
    spec = get_patch_encoder_spec(ENCODER)
    bundle = make_bundle(root / "model", spec.to_dict())
    run_index(IndexConfig(inputs=[str(root / "feats")], model=str(bundle), out=str(root / "idx")))
    table = open_index(root / "idx").regions.table
    return root / "idx", ckpt, paths[0], table


def _crop(path, row):
    from threads_search.wsi.slide import open_slide

    with open_slide(path) as s:
        size = int(row.size_px)
        return s.read_region(int(row.x), int(row.y), 0, (size, size))


def test_image_and_slide_file_queries_use_the_checkpoint(pretrained_index, tmp_path):
    from threads_search.query import QueryError, open_index

    idx_dir, ckpt, path, table = pretrained_index
    mine = table[table.slide_id == path.stem]
    row = mine.iloc[len(mine) // 2]
    crop = _crop(path, row)
    idx = open_index(idx_dir, checkpoint=ckpt)
    top = idx.search_regions(np.rot90(crop).copy(), k=3, image_mpp=0.5, crops=False).iloc[0]
    assert (top.slide_id, top.x, top.y) == (path.stem, row.x, row.y)
    assert top.score > 0.999  # encoded as the features stage did
    encoder = idx._pixel_encoder  # the weights are loaded once per opened index
    idx.search_regions(crop, k=1, image_mpp=0.5, crops=False)
    assert encoder is not None and idx._pixel_encoder is encoder
    copy = tmp_path / "new_scan.tiff"  # a slide file not in the index: embedded from pixels
    shutil.copyfile(path, copy)
    res = idx.search_slides(str(copy), k=1)
    assert res.slide_id.iloc[0] == path.stem and res.score.iloc[0] > 0.999
    with pytest.raises(QueryError, match=rf"{ENCODER}.*checkpoint"):
        open_index(idx_dir).search_regions(crop, image_mpp=0.5, crops=False)
    with pytest.raises(QueryError, match="cannot embed slide"):
        open_index(idx_dir).search_slides(str(copy), k=1)


def test_search_cli_takes_the_checkpoint(pretrained_index, tmp_path):
    from PIL import Image

    from threads_search.cli import app

    idx_dir, ckpt, path, table = pretrained_index
    row = table[table.slide_id == path.stem].iloc[0]
    img = tmp_path / "field.png"
    Image.fromarray(_crop(path, row)).save(img)
    base = ["search", str(idx_dir), "--image", str(img), "--image-mpp", "0.5", "-k", "2"]
    res = CliRunner().invoke(app, [*base, "--checkpoint", str(ckpt), "--format", "json"])
    assert res.exit_code == 0, res.output
    hits = json.loads(res.stdout)
    assert (hits[0]["slide_id"], hits[0]["x"], hits[0]["y"]) == (path.stem, row.x, row.y)
    res = CliRunner().invoke(app, base)
    assert res.exit_code != 0 and "--checkpoint" in res.output


def test_ui_encodes_an_uploaded_photo_with_the_checkpoint(pretrained_index, browser, tmp_path):
    """`threads-search ui --checkpoint`: a photo uploaded in Region search (real Chromium) is
    encoded with the pretrained weights and finds the patch it was cut from; a checkpoint that
    is not a file is refused before any server starts."""
    import re

    from PIL import Image

    from threads_search.errors import ConfigError
    from ui.launch import start

    idx_dir, ckpt, path, table = pretrained_index
    row = table[table.slide_id == path.stem].iloc[1]
    img = tmp_path / "field.png"
    Image.fromarray(_crop(path, row)).save(img)
    with pytest.raises(ConfigError, match="file not found"):
        start(idx_dir, checkpoint=tmp_path / "missing.safetensors")
    with open(tmp_path / "server.log", "w") as log, start(idx_dir, checkpoint=ckpt, log=log) as srv:
        ctx = browser.new_context(viewport={"width": 1400, "height": 1100})
        page = ctx.new_page()
        page.set_default_timeout(90_000)
        page.goto(srv.url)
        page.locator('[data-testid="stSidebar"]').get_by_text("Region search", exact=True).click()
        page.get_by_text("Upload a photo of a field").click()
        page.locator('input[type="file"]').first.set_input_files(str(img))
        page.get_by_text("field.png").wait_for()
        page.get_by_role("button", name="Search regions").click()
        page.get_by_text(re.compile(r"Most similar regions to photo field\.png")).wait_for()
        page.get_by_text(re.compile(rf"#1 {re.escape(path.stem)}")).first.wait_for()
        # the top hit is the very patch the photo was cut from, at similarity 1.000
        where = f"field 128 µm at ({row.x * 0.5:.0f}, {row.y * 0.5:.0f}) µm"
        assert page.get_by_text(where).count() >= 1
        assert page.get_by_text("similarity 1.000").count() >= 1
        ctx.close()
