"""Synthetic multi-site cohorts: site batch effect scale, per-site stain looks, site confounded
with the subtype in chosen splits (issue 14, item 4)."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from skimage.color import rgb2lab

from threads_search.errors import ConfigError
from threads_search.synth.cohort import home_site, load_cohort, make_cohort
from threads_search.synth.cohort_features import STAIN_NORM, feature_space, make_bag, patient_rows
from threads_search.synth.cohort_slides import site_stain, slide_morphology, write_slides
from threads_search.synth.paint import Morphology, paint_tissue

FRAMES = ("patients", "slides", "samples", "rna", "maf", "pairs")
# columns added after the digests were frozen, from their own random stream (survival outcomes)
ADDED_LATER = ("hidden_risk", "os_months", "os_event", "hidden_os_months", "hidden_os_event")


def _digest(c) -> str:
    """Hash of every frame, one painted slide's pixels and one feature bag of cohort ``c``."""
    h = hashlib.sha256()
    for name in FRAMES:
        df = getattr(c, name)
        df = df.drop(columns=[col for col in ADDED_LATER if col in df.columns])
        h.update(name.encode())
        h.update(",".join(map(str, df.columns)).encode())
        h.update(pd.util.hash_pandas_object(df, index=True).to_numpy().tobytes())
    sl = c.slides.to_dict("records")[0]
    m = slide_morphology(c, sl)
    p = paint_tissue(384, 384, 0.5, seed=int(sl["seed"]), morphology=m, tissue_fraction=0.5)
    h.update(p.rgb.tobytes())
    bag = make_bag(c, sl, feature_space(c, 64), patient_rows(c), (50, 80))
    h.update(bag["features"].tobytes())
    return h.hexdigest()[:16]


def test_default_cohort_is_bit_identical_to_before_site_options():
    # frozen before site_effect became a multiplier and stain_shift / confound_site existed
    assert _digest(make_cohort(n_patients=24, seed=3)) == "eba0412abd2b1b3e"
    explicit = make_cohort(
        n_patients=30,
        n_sites=5,
        slides_per_patient=(1, 3),
        seed=7,
        site_effect=1.0,
        stain_shift=0.0,
        confound_site=0.0,
    )
    assert _digest(explicit) == "a138690e9a334bd4"


def test_confounded_site_is_the_home_site_with_probability_p_in_chosen_splits():
    n_sites, p = 4, 0.8
    base = make_cohort(n_patients=6000, n_genes=40, n_panel=12, n_sites=n_sites, seed=1)
    c = make_cohort(
        n_patients=6000, n_genes=40, n_panel=12, n_sites=n_sites, confound_site=p, seed=1
    )
    pat = c.patients
    home = pat["site_index"].to_numpy() == home_site(pat["subtype_index"], n_sites)
    share = pd.Series(home).groupby(pat["split"].to_numpy()).mean()
    want = p + (1 - p) / n_sites  # home with p, else uniform (which hits home 1/n_sites)
    assert abs(share["train"] - want) < 0.03 and abs(share["val"] - want) < 0.04, share
    assert abs(share["test"] - 1 / n_sites) < 0.04, share
    # test sites stay uniform; latent state and splits are those of the unconfounded cohort
    assert pat.loc[pat["split"] == "test", "site"].value_counts(normalize=True).min() > 0.2
    for col in ("subtype", "programme_1", "split", "TP53_mutated"):
        pd.testing.assert_series_equal(pat[col], base.patients[col])
    test = pat["split"] == "test"
    assert (pat.loc[test, "site"] == base.patients.loc[test, "site"]).all()
    # ids, slides and samples follow the new site
    codes = pat["patient_id"].str[5:7]
    assert (codes == pat["site_index"].map(lambda s: f"{s + 1:02d}")).all()
    slides = c.slides.merge(pat[["patient_id", "site"]], on="patient_id", suffixes=("", "_p"))
    assert (slides["site"] == slides["site_p"]).all()

    only_train = make_cohort(
        n_patients=2000, n_sites=n_sites, confound_site=1.0, confound_splits=("train",), seed=2
    ).patients
    home = only_train["site_index"] == home_site(only_train["subtype_index"], n_sites)
    assert home[only_train["split"] == "train"].all()
    assert abs(home[only_train["split"] == "val"].mean() - 1 / n_sites) < 0.06


def _painted_as_site(c, slide: dict, site: int, size: int = 256) -> np.ndarray:
    """The pixels of ``slide`` painted as if its patient were at site index ``site``."""
    c.patients.loc[c.patients["patient_id"] == slide["patient_id"], "site_index"] = site
    m = slide_morphology(c, slide)
    return paint_tissue(size, size, 0.5, seed=int(slide["seed"]), morphology=m).rgb


def test_site_effect_zero_removes_site_differences_of_painted_slides():
    for effect in (0.0, 1.0):
        c = make_cohort(n_patients=6, n_sites=3, site_effect=effect, seed=4)
        slide = c.slides.to_dict("records")[0]
        rgb = [_painted_as_site(c, slide, s) for s in range(3)]
        lab = [rgb2lab(x).reshape(-1, 3).mean(0) for x in rgb]
        gap = max(np.linalg.norm(lab[i] - lab[j]) for i in range(3) for j in range(i))
        if effect == 0:
            assert all(np.array_equal(rgb[0], x) for x in rgb[1:])  # site has no trace at all
        else:
            assert gap > 1.0, gap  # the mild hue / haematoxylin shift shows in LAB


def test_site_effect_zero_removes_rna_and_feature_site_offsets():
    kw = dict(n_patients=600, n_genes=120, n_panel=12, n_sites=3, seed=6)
    none, mild = make_cohort(site_effect=0.0, **kw), make_cohort(**kw)
    site = none.patients.set_index("patient_id").loc[none.rna["sample_id"].str[:12], "site_index"]
    # share of genes whose per-site means differ (one-way ANOVA across sites, p < 0.01)
    for c, lo, hi in ((none, 0.0, 0.05), (mild, 0.5, 1.0)):
        logx = np.log(c.rna.iloc[:, 1:].to_numpy() + 1e-3)
        pvals = stats.f_oneway(*(logx[site.to_numpy() == s] for s in range(3))).pvalue
        assert lo <= (pvals < 0.01).mean() <= hi
    # the same draws otherwise: the log ratio is one offset per site and gene (sd 0.25)
    ratio = np.log(mild.rna.iloc[:, 1:].to_numpy() + 1e-3) - np.log(
        none.rna.iloc[:, 1:].to_numpy() + 1e-3
    )
    hk = mild.rna.columns[1:].isin(mild.truth["housekeeping"])  # high: rounding negligible
    per_site = [ratio[site.to_numpy() == s][:, hk] for s in range(3)]
    assert max(float(r.std(0).max()) for r in per_site) < 1e-3
    offsets = np.stack([r.mean(0) for r in per_site])
    assert 0.1 < offsets.std() < 0.5

    c = make_cohort(n_patients=6, n_sites=3, site_effect=0.0, seed=4)
    space = feature_space(c, 64)
    assert not space.site.any() and space.stain is None
    slide = c.slides.to_dict("records")[0]
    bags = []
    for s in range(3):
        c.patients.loc[c.patients["patient_id"] == slide["patient_id"], "site_index"] = s
        bags.append(make_bag(c, slide, space, patient_rows(c), (30, 40))["features"])
    assert all(np.array_equal(bags[0], b) for b in bags[1:])
    assert np.allclose(np.linalg.norm(feature_space(mild, 64).site, axis=1), 1.0)


def _site_colours(stain_shift: float, per_site: int = 6) -> tuple[float, float]:
    """(within-site sd, between-site sd) of slides' mean tissue colour in LAB a*b*."""
    c = make_cohort(n_patients=80, n_sites=4, stain_shift=stain_shift, seed=2)
    by_site: dict[str, list] = {}
    for sl in c.slides.to_dict("records"):
        if len(by_site.setdefault(sl["site"], [])) < per_site:
            m = slide_morphology(c, sl)
            p = paint_tissue(256, 256, 0.5, seed=int(sl["seed"]), morphology=m, tissue_fraction=0.5)
            by_site[sl["site"]].append(rgb2lab(p.rgb[p.tissue_mask][None])[0, :, 1:].mean(0))
    groups = [np.array(v) for v in by_site.values()]
    within = np.sqrt(np.mean([g.var(0, ddof=1).sum() for g in groups]))
    between = np.sqrt(np.array([g.mean(0) for g in groups]).var(0, ddof=1).sum())
    return float(within), float(between)


def test_stain_shift_moves_site_colour_much_more_than_within_site_jitter():
    w0, b0 = _site_colours(0.0)
    w1, b1 = _site_colours(1.0)
    # measured (within / between sd, LAB a*b*): without 6.1 / 3.1, with stain_shift=1 5.1 / 13.1
    assert b0 < w0 and b1 > 2 * w1, (w0, b0, w1, b1)
    assert b1 > 3 * b0


def test_site_stain_looks_are_deterministic_distinct_and_in_range():
    assert site_stain(3, 1, 0.0) == {
        "stain_vectors": None,
        "h_scale": 1.0,
        "e_scale": 1.0,
        "tint": (1.0, 1.0, 1.0),
    }
    looks = [site_stain(3, s, 1.0) for s in range(6)]
    assert looks == [site_stain(3, s, 1.0) for s in range(6)]
    assert looks != [site_stain(4, s, 1.0) for s in range(6)]
    base = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11]])
    for look in looks:
        vecs = np.array(look["stain_vectors"])
        cos = (vecs * base).sum(1) / np.linalg.norm(vecs, axis=1) / np.linalg.norm(base, axis=1)
        angle = np.degrees(np.arccos(np.clip(cos, -1, 1)))
        assert ((angle > 15 - 1e-3) & (angle < 25 + 1e-3)).all(), angle
        for k in ("h_scale", "e_scale"):
            assert np.exp(-0.35) - 1e-9 <= look[k] <= np.exp(0.35) + 1e-9
        assert all(0.95 - 1e-9 <= t <= 1.05 + 1e-9 for t in look["tint"])
        Morphology(stain_vectors=look["stain_vectors"], tint=look["tint"]).validate()
    pairs = [(a, b) for a in range(6) for b in range(a)]
    assert min(np.abs(np.subtract(looks[a]["tint"], looks[b]["tint"])).max() for a, b in pairs)


def test_stain_shift_in_feature_bags_is_a_fixed_per_site_shift():
    c = make_cohort(n_patients=6, n_sites=3, stain_shift=0.5, seed=4)
    space = feature_space(c, 64)
    assert np.allclose(np.linalg.norm(space.stain, axis=1), STAIN_NORM * 0.5)
    slide = c.slides.to_dict("records")[0]
    means = []
    for s in range(3):
        c.patients.loc[c.patients["patient_id"] == slide["patient_id"], "site_index"] = s
        means.append(make_bag(c, slide, space, patient_rows(c), (30, 40))["features"].mean(0))
    for a, b in ((0, 1), (1, 2)):  # same draws: the bags differ by exactly the site terms
        want = space.stain[a] - space.stain[b] + space.site[a] - space.site[b]
        assert np.allclose(means[a] - means[b], want, atol=1e-5)


def test_site_options_are_deterministic_and_survive_write_and_load(tmp_path):
    kw = dict(n_patients=40, n_sites=4, stain_shift=0.7, confound_site=0.6, seed=9)
    a, b = make_cohort(**kw), make_cohort(**kw, confound_splits=["train", "val"])
    for name in FRAMES:
        pd.testing.assert_frame_equal(getattr(a, name), getattr(b, name))
    a.write(tmp_path / "c")
    back = load_cohort(tmp_path / "c")
    assert back.params == a.params
    for name in FRAMES:
        pd.testing.assert_frame_equal(getattr(a, name), getattr(back, name))
    # a cohort.json written before these options stored site_effect as the RNA offset sd
    d = make_cohort(n_patients=20, seed=1)
    d.write(tmp_path / "old")
    doc = json.loads((tmp_path / "old" / "cohort.json").read_text())
    for key in ("stain_shift", "confound_site", "confound_splits"):
        del doc["params"][key]
    doc["params"]["site_effect"] = 0.25
    (tmp_path / "old" / "cohort.json").write_text(json.dumps(doc))
    pd.testing.assert_frame_equal(load_cohort(tmp_path / "old").rna, d.rna)


def test_stained_slides_are_written_through_the_process_pool(tmp_path):
    from threads_search.wsi import open_slide

    c = make_cohort(n_patients=12, n_sites=3, stain_shift=1.0, seed=5)
    pick = [c.slides.loc[c.slides["site"] == s, "slide_id"].iloc[0] for s in ("site_1", "site_2")]
    table = write_slides(c, tmp_path, 512, 512, workers=2, slide_ids=pick)
    colours = []
    for row in table.itertuples():
        assert row.stain_vectors is not None and row.tint != (1.0, 1.0, 1.0)
        with open_slide(row.path) as s:
            rgb = s.read_region(0, 0, 0, (512, 512))[..., :3]
        colours.append(rgb2lab(rgb[rgb.min(-1) < 215][None])[0, :, 1:].mean(0))
    assert np.linalg.norm(colours[0] - colours[1]) > 5


@pytest.mark.parametrize(
    "kwargs",
    [
        {"confound_site": 1.5},
        {"confound_site": -0.1},
        {"stain_shift": -1.0},
        {"site_effect": -0.5},
        {"confound_splits": ("train", "holdout")},
    ],
)
def test_bad_site_options_are_refused(kwargs):
    with pytest.raises(ConfigError):
        make_cohort(n_patients=10, **kwargs)


def test_bad_stain_look_is_refused():
    with pytest.raises(ConfigError, match="tint"):
        paint_tissue(64, 64, morphology=Morphology(tint=(2.0, 1.0, 1.0)))
    with pytest.raises(ConfigError, match="stain_vectors"):
        paint_tissue(64, 64, morphology=Morphology(stain_vectors=((1, 1, 1),)))
