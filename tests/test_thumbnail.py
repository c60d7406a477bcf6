"""Thumbnails within a fixed budget: real TIFF files that claim huge dimensions (tiny on disk:
their tiles are missing or all the same) read by OpenSlide, memory measured in a subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import numpy as np
import pytest
import tifffile
from conftest import smooth_image

from threads_search.synth import downsample, write_slide
from threads_search.wsi import SlideError, open_slide
from threads_search.wsi.slide import describe
from threads_search.wsi.thumbnail import thumbnail_source

TILE = 256
PINK = (200, 120, 170)
CONTENT_TILES = {(r, c) for r in range(4, 8) for c in range(2, 5)}  # (tile row, tile col)


def write_sparse_tiff(path: Path, side: int, mpp: float = 0.5) -> Path:
    """A single-level tiled TIFF of ``side`` x ``side`` px at ``mpp`` µm/px whose tiles are all
    missing (0 bytes: OpenSlide shows them as transparent) except ``CONTENT_TILES``, filled
    with one pink colour. 30000² px is about 0.1 MB on disk."""
    n = -(-side // TILE)
    blob = zlib.compress(np.full((TILE, TILE, 3), PINK, np.uint8).tobytes())

    def tiles():
        for r in range(n):
            for c in range(n):
                yield blob if (r, c) in CONTENT_TILES else b""

    with tifffile.TiffWriter(path) as tif:
        tif.write(
            tiles(),
            shape=(side, side, 3),
            dtype="uint8",
            tile=(TILE, TILE),
            photometric="rgb",
            compression="zlib",
            resolution=(1e4 / mpp, 1e4 / mpp),
            resolutionunit="CENTIMETER",
        )
    return path


_CHILD = textwrap.dedent(
    """
    import json, resource, sys
    resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))  # a regression fails, not swaps
    from threads_search.wsi import open_slide
    out = {}
    try:
        with open_slide(sys.argv[1]) as s:
            thumb, mpp = s.thumbnail(8.0)
        pink = (thumb[..., 1] < 200).nonzero()
        out.update(shape=list(thumb.shape), mpp=mpp, pink=[[int(a.min()), int(a.max())] for a in pink])
        from ui.images import slide_thumbnail  # what the UI shows of an uploaded slide
        out["ui_size"] = list(slide_thumbnail(sys.argv[1]).size)
    except Exception as e:
        out["error"] = str(e)
    # peak RSS of this process image: /proc VmHWM (getrusage's ru_maxrss keeps the forking
    # parent's peak across exec on Linux, so a big pytest process would be counted)
    try:
        with open("/proc/self/status") as f:
            hwm = [line.split()[1] for line in f if line.startswith("VmHWM:")]
        out["max_rss_mb"] = int(hwm[0]) / 1024
    except (OSError, IndexError):
        out["max_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(out))
    """
)


def test_tiny_file_claiming_30000_px_makes_its_thumbnail_in_bounded_memory(tmp_path):
    """A 0.1 MB single-level file claiming 30000 x 30000 px: OpenSlide's get_thumbnail read all
    of level 0 at once (7.1 GB RSS for 98 s in the features stage; under a 3 GB address-space
    limit it failed with the empty message "read — thumbnail: "; the UI's picture of an
    uploaded slide read it the same way). Read region by region, the process stays far below
    1.5 GB and the content lands where it is in the file."""
    path = write_sparse_tiff(tmp_path / "claims_30000.tiff", 30000)
    assert path.stat().st_size < 1_000_000
    res = subprocess.run(
        [sys.executable, "-c", _CHILD, str(path)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=Path(__file__).resolve().parents[1],  # ui/ is a top-level package of the repo
    )
    assert res.returncode == 0, res.stderr[-2000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert "error" not in out, out["error"]
    assert out["shape"] == [1875, 1875, 3] and out["mpp"] == pytest.approx(8.0)
    assert out["ui_size"] == [768, 768]
    assert out["max_rss_mb"] < 1536, f"peak RSS {out['max_rss_mb']:.0f} MB"
    f = 16  # 0.5 -> 8 µm/px
    r, c = zip(*CONTENT_TILES, strict=True)
    rows = [min(r) * TILE // f, (max(r) + 1) * TILE // f - 1]
    cols = [min(c) * TILE // f, (max(c) + 1) * TILE // f - 1]
    assert out["pink"] == [rows, cols]


def test_thumbnail_past_the_work_budget_is_refused_with_the_reason(tmp_path):
    """A file claiming 100000 x 100000 px with no reduced levels failed with the empty message
    "read: thumbnail: "; the thumbnail would decode 10 G px, so it is refused before reading
    anything, saying what is wrong and what to do."""
    path = write_sparse_tiff(tmp_path / "claims_100000.tiff", 100_000)
    with open_slide(path) as s, pytest.raises(SlideError) as e:
        s.thumbnail(8.0)
    err = e.value
    assert err.reason == "too-large" and "claims_100000.tiff" in str(err)
    for words in ("100000 x 100000 px", "no reduced-resolution levels", "10.00 G px", "pyramidal"):
        assert words in err.detail
    small = write_sparse_tiff(tmp_path / "claims_3000.tiff", 3000)
    with open_slide(small) as s:  # the budget is a parameter
        assert s.thumbnail(8.0)[0].shape == (187, 187, 3)
        with pytest.raises(SlideError, match="too-large"):
            s.thumbnail(8.0, max_read_px=2000**2)


def test_thumbnail_is_the_area_average_from_the_right_level(tmp_path):
    rgb = smooth_image(4096, 3072, seed=4)
    path = write_slide(tmp_path / "pyr.tiff", rgb, 0.25)  # levels at 1, 2, 4, 8 ...
    with open_slide(path) as s:
        assert thumbnail_source(s.level_dimensions, s.level_downsamples, (256, 192)) == (3, 2)
        assert thumbnail_source(s.level_dimensions, s.level_downsamples, (300, 225)) == (3, 1)
        thumb, mpp = s.thumbnail(4.0)  # 16x down
        assert thumb.shape == (192, 256, 3) and mpp == pytest.approx(4.0)
        assert np.abs(thumb.astype(float) - downsample(rgb, 16)).mean() < 3.0
        odd, _ = s.thumbnail(3.3)  # not a whole factor: block mean, then area resize
        assert odd.shape == (232, 310, 3)
        ov = s.overview(max_side=500)
        assert max(ov.shape[:2]) == 500


def test_error_text_is_never_empty():
    assert describe(MemoryError()) == "MemoryError (no message)"
    assert describe(OSError("bad tile")) == "OSError: bad tile"
    assert str(SlideError("x.svs", "read", describe(RuntimeError("")))).endswith("(no message)")
