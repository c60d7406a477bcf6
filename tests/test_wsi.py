"""Slide reading on real files written by the synthetic generator and read back by OpenSlide."""

from __future__ import annotations

import os

import numpy as np
import pytest
from conftest import smooth_image

from threads_search.synth import downsample, write_broken_slides, write_slide
from threads_search.wsi import SlideError, load_mpp_csv, lookup_override, open_slide, resolve_mpp


@pytest.mark.parametrize("fmt, vendor, factor", [("tiff", "generic-tiff", 2), ("svs", "aperio", 4)])
def test_round_trip_levels_mpp_vendor(tmp_path, fmt, vendor, factor):
    rgb = smooth_image(3000, 2100, seed=1)
    path = write_slide(tmp_path / f"x.{fmt}", rgb, 0.25, fmt=fmt)
    with open_slide(path) as s:
        assert s.vendor == vendor
        assert s.dimensions == (3000, 2100)
        assert s.mpp == pytest.approx(0.25)
        assert s.mpp_info.source == "openslide.mpp" and not s.mpp_info.estimated
        assert s.level_count >= 2
        for i, ds in enumerate(s.level_downsamples):
            assert ds == pytest.approx(factor**i, rel=0.01)
            assert s.level_mpp(i) == pytest.approx(0.25 * factor**i, rel=0.01)
        if fmt == "svs":
            assert {"thumbnail", "macro"} <= set(s.associated_images)
            assert s.associated_image("macro").shape[2] == 3
        summary = s.summary()
        assert summary["width"] == 3000 and summary["vendor"] == vendor


def test_read_patch_at_target_mpp_matches_reference(tmp_path):
    rgb = smooth_image(2048, 2048, seed=2)
    path = write_slide(tmp_path / "fine.tiff", rgb, 0.25)
    with open_slide(path) as s:
        assert s.best_level(0.5) == 1  # 0.5 µm/px level exists: read directly
        assert s.best_level(0.75) == 1  # coarser target: the finest level still ≤ target
        assert s.best_level(0.1) == 0  # finer than level 0: upsample from level 0
        patch = s.read_patch(256, 512, patch_size=512, target_mpp=0.5)
        assert patch.shape == (512, 512, 3) and patch.dtype == np.uint8
        # 512 px @ 0.5 µm/px = 1024 level-0 px at 0.25 µm/px, halved.
        ref = downsample(rgb[512 : 512 + 1024, 256 : 256 + 1024], 2)
        assert np.abs(patch.astype(float) - ref).mean() < 4.0
        # A target between levels: read from level 1 and resized exactly to patch_size.
        p2 = s.read_patch(0, 0, patch_size=256, target_mpp=1.0)
        assert p2.shape == (256, 256, 3)
        ref2 = downsample(rgb[:1024, :1024], 4)
        assert np.abs(p2.astype(float) - ref2).mean() < 4.0
        # Outside the slide is white, not black or transparent.
        edge = s.read_patch(2048 - 256, 0, patch_size=512, target_mpp=0.5)
        assert edge[:, 300:].min() > 240


@pytest.mark.parametrize("fmt", ["tiff", "svs"])
def test_fast_region_path_equals_public_openslide_read(tmp_path, fmt):
    """The reader's one-pass ARGB → RGB path gives exactly OpenSlide's public pixels, and
    regions reaching outside the slide (transparent) come out white, written in place."""
    import openslide
    from PIL import Image

    rgb = smooth_image(1500, 1100, seed=7)
    path = write_slide(tmp_path / f"f.{fmt}", rgb, 0.25, fmt=fmt)
    osr = openslide.OpenSlide(str(path))
    with open_slide(path) as s:
        assert s._pixels.fast  # little-endian machine with openslide-python's low-level API
        for x, y, level, w, h in [
            (100, 200, 0, 300, 200),
            (0, 0, 1, 256, 256),
            (1400, 1000, 0, 256, 256),
        ]:
            rgba = osr.read_region((x, y), level, (w, h))
            white = Image.new("RGB", rgba.size, (255, 255, 255))
            white.paste(rgba, mask=rgba.getchannel("A"))
            want = np.asarray(white)
            got = s.read_region(x, y, level, (w, h))
            assert got.flags.writeable and np.array_equal(got, want)
            slot = np.zeros((h, w, 3), np.uint8)
            assert s.read_region(x, y, level, (w, h), out=slot) is slot
            assert np.array_equal(slot, want)
        # The last region is 100 x 100 px of slide, the rest white.
        assert got[:100, :100].std() > 0 and got[100:].min() == 255 and got[:, 100:].min() == 255
    osr.close()


def test_patch_from_coarser_scanner_is_upsampled(tmp_path):
    rgb = smooth_image(1024, 1024, seed=3)
    path = write_slide(tmp_path / "coarse.svs", rgb, 1.0, fmt="svs")
    with open_slide(path) as s:
        patch = s.read_patch(0, 0, patch_size=512, target_mpp=0.5)
        assert patch.shape == (512, 512, 3)
        # 512 px @ 0.5 covers 256 µm = 256 px at 1.0 µm/px.
        ref = np.asarray(
            __import__("PIL.Image", fromlist=["Image"])
            .fromarray(rgb[:256, :256])
            .resize((512, 512))
        )
        assert np.abs(patch.astype(float) - ref).mean() < 5.0


def test_mpp_resolution_chain():
    assert resolve_mpp({}, override=0.3).source == "override"
    props = {"openslide.mpp-x": "0.2521", "openslide.mpp-y": "0.2521", "aperio.MPP": "0.9"}
    info = resolve_mpp(props)
    assert info.mpp == pytest.approx(0.2521) and info.source == "openslide.mpp"
    assert resolve_mpp({"aperio.MPP": "0.499"}).source == "aperio.MPP"
    philips = resolve_mpp({"philips.DICOM_PIXEL_SPACING": "0.00025 0.00025"})
    assert philips.mpp == pytest.approx(0.25)
    cm = resolve_mpp(
        {
            "tiff.ResolutionUnit": "centimeter",
            "tiff.XResolution": "20000",
            "tiff.YResolution": "20000",
        }
    )
    assert cm.mpp == pytest.approx(0.5) and cm.source == "tiff.resolution"
    inch = resolve_mpp(
        {"tiff.ResolutionUnit": "inch", "tiff.XResolution": "101600", "tiff.YResolution": "101600"}
    )
    assert inch.mpp == pytest.approx(0.25)
    # Resolution unit "none" (tifffile's default) is not a physical size.
    assert resolve_mpp({"tiff.ResolutionUnit": "none", "tiff.XResolution": "1"}) is None
    est = resolve_mpp({"openslide.objective-power": "20"})
    assert est.mpp == pytest.approx(0.5) and est.estimated
    assert resolve_mpp({"aperio.AppMag": "40"}).mpp == pytest.approx(0.25)
    assert resolve_mpp({"openslide.mpp-x": "nan", "openslide.mpp-y": "0"}) is None
    with pytest.raises(ValueError, match="override"):
        resolve_mpp({}, override=1e6)


def test_mpp_csv_and_lookup(tmp_path):
    csv = tmp_path / "mpp.csv"
    csv.write_text("slide,mpp\ncase_1,0.25\ncase_2.svs,0.5\n")
    table = load_mpp_csv(csv)
    assert lookup_override(table, "/data/case_1.tiff", "case_1") == 0.25
    assert lookup_override(table, "/data/case_2.svs", "case_2") == 0.5
    assert lookup_override(table, "/data/case_3.svs", "case_3") is None
    bad = tmp_path / "bad.csv"
    bad.write_text("name,resolution\na,1\n")
    with pytest.raises(ValueError, match="slide,mpp"):
        load_mpp_csv(bad)
    bad.write_text("slide,mpp\na,zero\n")
    with pytest.raises(ValueError, match="plausible"):
        load_mpp_csv(bad)


def test_mpp_csv_problems_are_user_errors_naming_the_file(tmp_path):
    """A missing or undecodable mpp CSV was a FileNotFoundError / UnicodeDecodeError: shown by
    the CLI as a bug. Now a ThreadsSearchError naming the file (built-in bases kept)."""
    from threads_search.errors import MissingError, ThreadsSearchError
    from threads_search.wsi import MppError

    with pytest.raises(MissingError, match="mpp CSV .*nowhere.csv does not exist"):
        load_mpp_csv(tmp_path / "nowhere.csv")
    latin = tmp_path / "latin.csv"
    latin.write_bytes("slide,mpp\ncaf\u00e9,0.5\n".encode("latin-1"))
    with pytest.raises(MppError, match="latin.csv: not a readable 'slide,mpp' CSV"):
        load_mpp_csv(latin)
    with pytest.raises(MppError) as e:
        load_mpp_csv(tmp_path)  # a folder
    assert isinstance(e.value, ThreadsSearchError) and isinstance(e.value, ValueError)


def test_objective_power_only_is_an_estimate(tmp_path):
    path = write_slide(tmp_path / "mag.svs", smooth_image(1024, 768), None, fmt="svs", app_mag=20)
    with open_slide(path) as s:
        assert s.mpp == pytest.approx(0.5)
        assert s.mpp_info.estimated and "objective-power" in s.mpp_info.source


def test_missing_resolution_and_override(tmp_path):
    path = write_slide(tmp_path / "nores.tiff", smooth_image(1024, 768), None)
    with pytest.raises(SlideError) as e:
        open_slide(path)
    assert (
        e.value.reason == "no-mpp" and "--mpp-csv" in str(e.value) and "nores.tiff" in str(e.value)
    )
    with open_slide(path, mpp=0.5) as s:
        assert s.mpp == 0.5 and s.mpp_info.source == "override"


@pytest.mark.parametrize(
    "name, reason",
    [
        ("truncated", "corrupt"),
        ("zero_bytes", "empty"),
        ("wrong_extension", "unsupported"),
        ("text_as_tiff", "unsupported"),
        ("untiled", "unsupported"),
        ("no_resolution", "no-mpp"),
    ],
)
def test_broken_files_raise_slide_error(tmp_path_factory, name, reason):
    files = write_broken_slides(tmp_path_factory.mktemp("broken"))
    with pytest.raises(SlideError) as e:
        open_slide(files[name])
    assert e.value.reason == reason
    assert files[name].name in str(e.value)
    assert len(e.value.detail) > 10  # a readable explanation, not just a code


def test_missing_file(tmp_path):
    with pytest.raises(SlideError, match="no such file"):
        open_slide(tmp_path / "nope.svs")


def test_fifo_is_not_a_regular_file(tmp_path):
    """A named pipe was reported as "the file is 0 bytes" (and opening it would block)."""
    fifo = tmp_path / "pipe.svs"
    os.mkfifo(fifo)
    with pytest.raises(SlideError) as e:
        open_slide(fifo)
    assert e.value.reason == "unsupported" and "pipe.svs" in str(e.value)
    assert "FIFO" in e.value.detail and "not a regular file" in e.value.detail
    assert "0 bytes" not in str(e.value)


def test_implausible_mpp_is_refused_or_ignored(tmp_path):
    """Any µm/px up to 100 was accepted: a wrong 90 µm/px override gave 144,787 patches for a
    1536 px slide, and a 300 dpi TIFF tag (84.7 µm/px) was taken as the scan resolution."""
    for bad in (90, 25.0, 0.001):
        with pytest.raises(ValueError, match=r"not a plausible.*0.02–20 µm/px"):
            resolve_mpp({}, override=bad)
    assert resolve_mpp({}, override=4.0).mpp == 4.0  # downsampled copies are plausible
    dpi300 = {"tiff.ResolutionUnit": "inch", "tiff.XResolution": "300", "tiff.YResolution": "300"}
    assert resolve_mpp(dpi300) is None  # treated as absent: the no-mpp error asks for it
    path = write_slide(tmp_path / "s.tiff", smooth_image(1024, 768), 0.5)
    with pytest.raises(SlideError) as e:
        open_slide(path, mpp=90)
    assert e.value.reason == "bad-mpp" and "s.tiff" in str(e.value) and "unit" in e.value.detail
    csv = tmp_path / "mpp.csv"
    csv.write_text("slide,mpp\ns,90\n")
    with pytest.raises(ValueError, match=r"mpp.csv:2: mpp '90' is not a plausible"):
        load_mpp_csv(csv)


def test_truncated_level_data_fails_on_read_with_slide_error(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 255, (1024, 1024, 3), dtype=np.uint8)
    path = write_slide(tmp_path / "holes.tiff", rgb, 0.5, min_side=10_000)  # one level only
    data = bytearray(path.read_bytes())
    data[4096 : len(data) // 2] = b"\x00" * (len(data) // 2 - 4096)  # wipe tile data
    path.write_bytes(bytes(data))
    try:
        s = open_slide(path)
    except SlideError as e:  # detected at open: also acceptable
        assert e.reason == "corrupt"
        return
    with s, pytest.raises(SlideError) as e:
        for y in range(0, 1024, 256):
            for x in range(0, 1024, 256):
                s.read_patch(x, y, 256, 0.5)
    assert e.value.reason == "read"
    assert "level 0" in e.value.detail and len(e.value.detail.split(":", 1)[1].strip()) > 5
