"""``ui.display`` on its own (no index, no browser): which metadata columns the UI shows and in
which order, their labels (with ``ui_display.json`` overrides and its warnings), number
formats, the case line, the shown/technical split; and the facet ordering and slider steps of
``ui.facets`` built on it."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from ui import display, display_file, facets


@pytest.fixture
def frame() -> pd.DataFrame:
    """A result-like table whose bookkeeping and technical columns come first."""
    return pd.DataFrame(
        {
            "rank": [1, 2],
            "score": [0.98765, 0.5],
            "slide_id": ["S1", "S2"],
            "path": ["/srv/slides/S1.svs", "/srv/slides/S2.svs"],
            "split": ["test", "train"],
            "mpp": [0.2527, 0.5],
            "width": [98304, 1536],
            "n_patches": [1200, 22],
            "patient_id": ["P-01", None],
            "fold": [0, 1],
            "age": [61.0, np.nan],
            "site": ["site_2", "site_1"],
            "oncotree_code": ["LUAD", "LUSC"],
            "tissue_area_mm2": [153.456, 0.2945],
        }
    )


def test_default_column_order_puts_diagnosis_first_and_internals_out(frame):
    cols = display.default_columns(frame.columns)
    assert cols == ["oncotree_code", "site", "age", "split", "fold"]
    assert display.caption_columns(frame.columns) == ["oncotree_code", "site", "age"]
    assert display.caption_columns(frame.columns, limit=2) == ["oncotree_code", "site"]
    assert {display.role(c) for c in ("path", "mpp", "width", "n_patches")} == {"technical"}
    assert display.role("tissue_area_mm2") == "technical"
    assert display.role("case_uuid") == display.role("split") == "bookkeeping"
    assert display.role("primary_diagnosis") == "diagnosis"


def test_split_hides_technical_columns_in_their_own_part(frame):
    shown, tech = display.split(frame)
    assert list(shown.columns) == [
        "rank",
        "slide_id",
        "score",
        "patient_id",
        "oncotree_code",
        "site",
        "age",
        "split",
        "fold",
    ]
    assert list(tech.columns) == [
        "slide_id",
        "path",
        "mpp",
        "width",
        "n_patches",
        "tissue_area_mm2",
    ]
    chosen = display.DisplayConfig(columns=("site", "mpp", "nope"))
    shown, tech = display.split(frame, chosen)
    assert list(shown.columns) == ["rank", "slide_id", "score", "patient_id", "site", "mpp"]
    assert "mpp" not in tech.columns and "oncotree_code" in tech.columns
    # a configured choice is taken as is, bookkeeping included
    assert display.caption_columns(frame.columns, display.DisplayConfig(("split",))) == ["split"]


def test_labels_units_and_overrides():
    assert display.label("tissue_area_mm2", with_unit=True) == "Tissue area (mm²)"
    assert display.label("mpp", with_unit=True) == "Resolution (µm/px)"
    assert display.label("primary_site") == "Primary site"
    assert display.label("n_slides") == "Number of slides"
    assert display.label("TP53_mutated") == "TP53 mutated"
    assert display.label("tumor_size_um", with_unit=True) == "Tumor size (µm)"
    cfg = display.DisplayConfig(labels={"site": "Hospital"})
    assert display.label("site", cfg) == "Hospital"
    assert display.label("site") == "Site"


def test_number_formatting():
    assert display.format_value(0.294464) == "0.294"
    assert display.format_value(0.2527, "µm/px") == "0.253 µm/px"
    assert display.format_value(np.int64(98304), "px") == "98,304 px"
    assert display.format_value(153.456) == "153"
    assert display.format_value(12345.678) == "12,346"
    assert display.format_value(np.float32(-0.000123456)) == "-0.000123"
    assert display.format_value(np.bool_(True)) == "yes"
    assert display.format_value(float("nan")) == display.format_value(None) == "—"
    assert display.format_value(pd.NA) == "—"
    assert display.format_value("LUAD") == "LUAD"
    assert display.value_text("tissue_area_mm2", 0.29471) == "0.295 mm²"


def test_case_line(frame):
    assert display.case_line(frame.iloc[0]) == "LUAD · site_2 · patient P-01"
    assert display.case_line(frame.iloc[1]) == "LUSC · site_1"  # no patient known
    assert display.case_line({"slide_id": "S", "split": "test", "mpp": 0.5}) == ""
    cfg = display.DisplayConfig(columns=("age", "site"))
    assert display.case_line(frame.iloc[0], cfg) == "Age 61 · site_2 · patient P-01"
    assert display.caption_lines(frame.iloc[1]) == ["OncoTree code: LUSC", "Site: site_1"]


def test_config_file_sets_columns_and_labels(tmp_path, frame):
    (tmp_path / display.CONFIG_NAME).write_text(
        json.dumps({"columns": ["site", "oncotree_code"], "labels": {"oncotree_code": "OncoTree"}})
    )
    cfg = display_file.load_config(tmp_path, frame.columns)
    assert cfg.warning is None
    assert cfg.columns == ("site", "oncotree_code")
    assert display.label("oncotree_code", cfg) == "OncoTree"
    assert display.caption_columns(frame.columns, cfg) == ["site", "oncotree_code"]
    assert display_file.load_config(tmp_path / "elsewhere") == display.DisplayConfig()


@pytest.mark.parametrize(
    "content, expect",
    [
        ("{not json", "not readable JSON"),
        ('["site"]', "expected a JSON object"),
        ('{"columns": "site"}', '"columns" must be a list'),
        ('{"columns": ["site", "diagnosis_x"]}', "unknown columns: diagnosis_x"),
        ('{"labels": {"site": 3}}', '"labels" without a text label: site'),
        ('{"labels": ["site"]}', '"labels" must be an object'),
        ('{"colums": ["site"]}', "unknown keys 'colums'"),
    ],
)
def test_bad_config_file_is_ignored_with_a_clear_warning(tmp_path, frame, content, expect):
    path = tmp_path / display.CONFIG_NAME
    path.write_text(content)
    cfg = display_file.load_config(tmp_path, frame.columns)
    assert cfg.warning and expect in cfg.warning and str(path) in cfg.warning
    assert cfg.columns in (None, ("site",))  # what was valid is kept
    assert all(isinstance(v, str) for v in cfg.labels.values())


def test_facets_put_descriptive_columns_first_and_round_slider_steps(frame):
    found = facets.facets_for(frame.drop(columns=["rank", "score"]))
    main, more = facets.ordered(found)
    assert [f.column for f in main] == ["oncotree_code", "site", "split", "fold"]  # age: 1 value
    tech = {"slide_id", "patient_id", "mpp", "width", "n_patches", "tissue_area_mm2"}
    assert {f.column for f in more} == tech
    assert facets.nice_step(0.291, 0.2972) == pytest.approx(1e-4)
    assert facets.nice_step(0.0, 153.0) == pytest.approx(2.0)
    assert facets.nice_step(-1.55, 0.9) == pytest.approx(0.05)
