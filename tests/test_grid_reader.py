"""Patch grid geometry and the multi-process patch reader."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import smooth_image

from threads_search.synth import write_slide
from threads_search.wsi import GridParams, open_slide, patch_grid
from threads_search.wsi.reader import patch_loader

# level-0 0.25 µm/px; mask 8 µm/px → 32 level-0 px per mask px; a 512 px patch @ 0.5 µm/px is
# 1024 level-0 px = 32 mask px.
L0, MASK = 0.25, 8.0


def test_grid_keeps_tissue_patches_in_row_major_order():
    mask = np.zeros((100, 100), bool)
    mask[0:64, 0:64] = True
    coords = patch_grid(mask, MASK, L0, (3200, 3200))
    assert coords.dtype == np.int64 and coords.shape == (4, 2)
    assert coords.tolist() == [[0, 0], [1024, 0], [0, 1024], [1024, 1024]]


def test_grid_min_tissue_threshold_is_inclusive():
    mask = np.zeros((100, 100), bool)
    mask[0:40, 0:40] = True  # patch (1, 0): 8x32 of 32x32 = 0.25; patch (1, 1): 0.0625
    coords = patch_grid(mask, MASK, L0, (3200, 3200), GridParams(min_tissue=0.25))
    assert [1024, 0] in coords.tolist() and [1024, 1024] not in coords.tolist()
    strict = patch_grid(mask, MASK, L0, (3200, 3200), GridParams(min_tissue=0.3))
    assert strict.tolist() == [[0, 0]]  # the two 0.25 patches drop out
    everything = patch_grid(mask, MASK, L0, (3200, 3200), GridParams(min_tissue=0.0))
    assert len(everything) == 9  # 3 x 3 whole patches fit in 3200 px


def test_grid_patches_stay_inside_the_slide_and_overlap_steps():
    mask = np.ones((100, 100), bool)
    coords = patch_grid(mask, MASK, L0, (3000, 2500), GridParams(overlap=256))
    side0, step0 = 1024, 512  # (512 - 256) px at 0.5 µm/px = 512 level-0 px
    assert (coords[:, 0] + side0 <= 3000).all() and (coords[:, 1] + side0 <= 2500).all()
    xs = np.unique(coords[:, 0])
    assert np.diff(xs).tolist() == [step0] * (len(xs) - 1)
    # Deterministic: same call, same order.
    again = patch_grid(mask, MASK, L0, (3000, 2500), GridParams(overlap=256))
    assert np.array_equal(coords, again)


def test_grid_rejects_bad_parameters_and_handles_tiny_slides():
    mask = np.ones((10, 10), bool)
    with pytest.raises(ValueError, match="overlap"):
        patch_grid(mask, MASK, L0, (3200, 3200), GridParams(overlap=512))
    with pytest.raises(ValueError, match="min_tissue"):
        patch_grid(mask, MASK, L0, (3200, 3200), GridParams(min_tissue=2))
    assert patch_grid(mask, MASK, L0, (500, 500)).shape == (0, 2)


@pytest.fixture(scope="module")
def reader_slide(tmp_path_factory):
    rgb = smooth_image(2048, 1536, seed=5)
    return write_slide(tmp_path_factory.mktemp("reader") / "r.tiff", rgb, 0.25)


@pytest.mark.parametrize("workers, backend", [(0, "process"), (2, "process"), (2, "thread")])
def test_loader_matches_direct_reads_in_order(reader_slide, workers, backend):
    coords = np.array([[0, 0], [1024, 0], [512, 512], [0, 512], [1024, 512]], np.int64)
    with open_slide(reader_slide) as s:
        expected = [s.read_patch(x, y, 256, 0.5) for x, y in coords]
    seen_patches, seen_coords = [], []
    loader = patch_loader(
        reader_slide, coords, 256, 0.5, batch_size=2, workers=workers, backend=backend
    )
    assert len(loader) == 3
    for patches, c in loader:
        assert patches.dtype.is_floating_point is False and patches.shape[1:] == (256, 256, 3)
        seen_patches.extend(patches.numpy())
        seen_coords.extend(c.numpy().tolist())
    assert seen_coords == coords.tolist()
    for got, want in zip(seen_patches, expected, strict=True):
        assert np.array_equal(got, want)


@pytest.mark.parametrize("backend", ["process", "thread"])
def test_loader_applies_transform_in_workers(reader_slide, backend):
    coords = np.array([[0, 0], [512, 0], [0, 512]], np.int64)

    batches = list(
        patch_loader(
            reader_slide,
            coords,
            256,
            0.5,
            batch_size=8,
            workers=2,
            transform=_mean_rgb,
            backend=backend,
        )
    )
    feats = np.concatenate([b[0].numpy() for b in batches])
    assert feats.shape == (3, 3) and feats.dtype == np.float32
    with open_slide(reader_slide) as s:
        ref = s.read_patch(512, 0, 256, 0.5).reshape(-1, 3).mean(0)
    assert np.allclose(feats[1], ref, atol=1e-3)


def _mean_rgb(patch: np.ndarray) -> np.ndarray:
    return patch.reshape(-1, 3).mean(0).astype(np.float32)


def test_thread_reader_uses_one_slide_handle_per_thread_and_stops_early(reader_slide):
    import threading

    from threads_search.wsi import reader as rd

    coords = np.array([[x, y] for y in (0, 256, 512) for x in (0, 256, 512, 768)], np.int64)
    loader = patch_loader(reader_slide, coords, 128, 0.5, batch_size=1, workers=3, backend="thread")
    assert isinstance(loader, rd.ThreadedPatchLoader)
    handles, seen = set(), []
    orig = rd.PatchDataset._handle

    def spy(self):
        s = orig(self)
        handles.add((threading.get_ident(), id(s)))
        return s

    rd.PatchDataset._handle = spy
    try:
        for _patches, c in loader:
            seen.append(c.numpy()[0].tolist())
            if len(seen) == 5:
                break  # leaving early: pending reads are cancelled, the pool shuts down
    finally:
        rd.PatchDataset._handle = orig
    assert seen == coords[:5].tolist()
    threads = {t for t, _ in handles}
    assert threading.get_ident() not in threads  # read by the pool, not the caller
    assert len({h for _, h in handles}) == len(threads)  # one handle per reading thread
    assert not [t for t in threading.enumerate() if t.name.startswith("patch-reader")]
    with pytest.raises(ValueError, match="backend"):
        patch_loader(reader_slide, coords, 128, 0.5, backend="gpu")
