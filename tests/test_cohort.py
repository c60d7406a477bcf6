"""The synthetic paired cohort: latent state, RNA, MAF, pairs, feature bags and painted slides."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from threads_search.synth.cohort import Cohort, load_cohort, make_cohort
from threads_search.synth.cohort_features import (
    feature_space,
    make_bag,
    patient_rows,
    read_signal_mask,
    write_feature_bags,
)
from threads_search.synth.cohort_slides import write_slides


@pytest.fixture(scope="module")
def cohort() -> Cohort:
    return make_cohort(n_patients=300, seed=11)


def test_deterministic_from_seed():
    a, b = make_cohort(n_patients=40, seed=5), make_cohort(n_patients=40, seed=5)
    for name in ("patients", "slides", "samples", "rna", "maf", "pairs"):
        pd.testing.assert_frame_equal(getattr(a, name), getattr(b, name))
    assert a.truth == b.truth
    c = make_cohort(n_patients=40, seed=6)
    assert not a.patients["subtype"].equals(c.patients["subtype"])
    assert not np.allclose(a.rna.iloc[:, 1:].to_numpy()[:5], c.rna.iloc[:, 1:].to_numpy()[:5])
    # the latent state does not depend on the size of the molecular data
    d = make_cohort(n_patients=40, seed=5, n_genes=200, n_panel=30)
    pd.testing.assert_series_equal(a.patients["subtype"], d.patients["subtype"])


def test_ids_are_tcga_shaped(cohort):
    from threads_search.molecular import patient_barcode

    for sid, pid in zip(cohort.pairs["sample_id"], cohort.pairs["patient_id"], strict=True):
        assert patient_barcode(sid) == pid
    for sid, pid in zip(cohort.slides["slide_id"], cohort.slides["patient_id"], strict=True):
        assert patient_barcode(sid) == pid
    assert cohort.patients["patient_id"].is_unique and cohort.slides["slide_id"].is_unique


def test_split_is_by_patient_with_requested_proportions(cohort):
    p = cohort.patients
    frac = p["split"].value_counts(normalize=True)
    for name, want in zip(("train", "val", "test"), (0.7, 0.15, 0.15), strict=True):
        assert abs(frac[name] - want) < 0.04, frac
    # every slide and pair of a patient carries the patient's split; each subtype in each split
    merged = cohort.slides.merge(p[["patient_id", "split"]], on="patient_id", suffixes=("", "_p"))
    assert (merged["split"] == merged["split_p"]).all()
    assert cohort.slides.groupby("patient_id")["split"].nunique().max() == 1
    assert (pd.crosstab(p["subtype"], p["split"]) > 0).all().all()
    multi = make_cohort(n_patients=50, slides_per_patient=(1, 3), split=(0.5, 0.25, 0.25), seed=2)
    counts = multi.slides.groupby("patient_id").size()
    assert counts.min() == 1 and counts.max() == 3
    assert multi.slides.groupby("patient_id")["split"].nunique().max() == 1
    assert abs((multi.patients["split"] == "train").mean() - 0.5) < 0.08


def test_rna_modules_follow_subtype_and_programmes(cohort):
    rna = cohort.rna.set_index("sample_id")
    assert (rna.to_numpy() > 0).all() and list(rna.columns) == cohort.truth["genes"]
    pat = cohort.samples.query("kind == 'rna'").merge(cohort.patients, on="patient_id")
    pat = pat.set_index("sample_id").loc[rna.index]
    logx = np.log1p(rna)
    for subtype, genes in cohort.truth["modules"].items():
        inside = (pat["subtype"] == subtype).to_numpy()
        score = logx[genes].mean(axis=1).to_numpy()
        t, pval = stats.ttest_ind(score[inside], score[~inside], equal_var=False)
        assert t > 0 and pval < 1e-10, (subtype, t, pval)
        assert score[inside].mean() - score[~inside].mean() > 0.5
    for prog, genes in cohort.truth["programme_genes"].items():
        r = [abs(np.corrcoef(logx[g], pat[prog])[0, 1]) for g in genes]
        assert np.mean(r) > 0.25, (prog, np.mean(r))
    house = logx[cohort.truth["housekeeping"]].std().mean()
    noise = logx[cohort.truth["genes"][:]].std().median()
    assert house < 0.5 * noise


def test_maf_has_silent_rows_and_subtype_dependent_rates(cohort):
    maf = cohort.maf
    assert (maf["Variant_Classification"] == "Silent").sum() > 20
    assert set(maf["Hugo_Symbol"]) <= set(cohort.truth["panel"])
    dna = cohort.dna_matrix()  # silent rows dropped
    dna_ids = set(cohort.samples.query("kind == 'dna'")["sample_id"])
    assert set(dna.index) == dna_ids  # every sequenced sample present, even with no mutation
    pat = cohort.samples.merge(cohort.patients, on="patient_id").set_index("sample_id")
    pat = pat.loc[dna.index]
    assert (dna["TP53"].to_numpy().astype(bool) == pat["TP53_mutated"].to_numpy()).all()
    # a gene mutated only silently is not mutated
    silent_only = maf.groupby(["Tumor_Sample_Barcode", "Hugo_Symbol"])["Variant_Classification"]
    silent_only = silent_only.agg(lambda v: (v == "Silent").all())
    for sample, gene in silent_only[silent_only].index[:20]:
        assert dna.loc[sample, gene] == 0
    rate = dna.groupby(pat["subtype"].to_numpy()).mean()
    assert rate.loc["subtype_A", "TP53"] - rate.loc["subtype_D", "TP53"] > 0.4
    for subtype, drivers in cohort.truth["drivers"].items():
        own = rate.loc[subtype, drivers].mean()
        other = rate.drop(index=subtype)[drivers].to_numpy().mean()
        assert own > other + 0.2, (subtype, own, other)


def test_programme_linked_genes_are_mutated_more_when_the_programme_is_high(cohort):
    dna = cohort.dna_matrix()
    pat = cohort.samples.merge(cohort.patients, on="patient_id").set_index("sample_id")
    pat = pat.loc[dna.index]
    linked = cohort.truth["programme_mutations"]
    assert set(linked) == set(cohort.programmes) and all(len(g) == 3 for g in linked.values())
    drivers = {g for genes in cohort.truth["drivers"].values() for g in genes}
    for prog, genes in linked.items():
        assert "TP53" not in genes and not drivers & set(genes)
        rate = dna[genes].mean(axis=1).to_numpy()
        hi, lo = pat[prog].to_numpy() > 0.5, pat[prog].to_numpy() < -0.5
        assert rate[hi].mean() > rate[lo].mean() + 0.25, (prog, rate[hi].mean(), rate[lo].mean())


def test_tp53_mutation_shows_in_the_tumour_patches_only():
    c = make_cohort(n_patients=80, seed=2)
    space = feature_space(c, 64)
    rows = patient_rows(c)
    tum, nor, y = [], [], []
    for s in c.slides.to_dict("records"):
        bag = make_bag(c, s, space, rows, (60, 80), noise=0.3)
        u = space.tp53 / np.linalg.norm(space.tp53)
        tum.append(bag["features"][bag["is_signal"]].mean(0) @ u)
        nor.append(bag["features"][~bag["is_signal"]].mean(0) @ u)
        y.append(bool(rows[s["patient_id"]][1]["TP53_mutated"]))
    tum, nor, y = np.array(tum), np.array(nor), np.array(y)
    assert 0.3 < y.mean() < 0.7  # both groups present
    assert tum[y].mean() - tum[~y].mean() > 0.8  # the a_TP53 = 1 shift, up to noise
    assert abs(nor[y].mean() - nor[~y].mean()) < 0.3


@pytest.mark.parametrize("modality", [(0.8, 0.1, 0.1), (0.5, 0.3, 0.2), (0.0, 1.0, 0.0)])
def test_modality_fractions(modality):
    n = 120
    c = make_cohort(n_patients=n, modality=modality, seed=3)
    p = c.patients
    assert (p["has_rna"] & p["has_dna"]).sum() == n - round(n * modality[1]) - round(
        n * modality[2]
    )
    assert (p["has_rna"] & ~p["has_dna"]).sum() == round(n * modality[1])
    assert (~p["has_rna"] & p["has_dna"]).sum() == round(n * modality[2])
    assert set(c.rna["sample_id"]) == {f"{x}-01R" for x in p.loc[p["has_rna"], "patient_id"]}
    assert set(c.maf["Tumor_Sample_Barcode"]) == {
        f"{x}-01D" for x in p.loc[p["has_dna"], "patient_id"]
    }
    kinds = c.pairs.groupby("patient_id")["kind"].agg(frozenset)
    want = p.set_index("patient_id").apply(
        lambda r: frozenset(k for k in ("rna", "dna") if r[f"has_{k}"]), axis=1
    )
    assert (kinds == want.loc[kinds.index]).all()
    with pytest.raises(ValueError, match="modality"):
        make_cohort(n_patients=10, modality=(0.5, 0.5, 0.5))


def test_write_is_readable_by_the_molecular_loaders(tmp_path):
    from threads_search.molecular import read_dna, read_metadata, read_pairs, read_rna_matrix

    c = make_cohort(n_patients=30, seed=4)
    paths = c.write(tmp_path / "cohort")
    assert not list((tmp_path / "cohort").glob(".*tmp*"))
    rna = read_rna_matrix(paths["rna"])
    assert rna.genes == c.truth["genes"] and rna.samples == list(c.rna["sample_id"])
    np.testing.assert_allclose(rna.values.to_numpy(), c.rna.iloc[:, 1:].to_numpy())
    dna = read_dna(paths["maf"])
    assert set(dna.index) == set(c.samples.query("kind == 'dna'")["sample_id"])
    pairs = read_pairs(paths["pairs"])
    assert len(pairs) == len(c.pairs)
    assert set(read_pairs(paths["pairs"], pair_by="patient")["slide_id"]) == set(
        c.slides["slide_id"]
    )
    meta = read_metadata(paths["metadata"])
    assert list(meta["patient_id"]) == list(c.patients["patient_id"])
    assert "subtype" in meta and "TP53_mutated" in meta and "subtype_index" not in meta
    doc = json.loads(paths["cohort"].read_text())
    assert doc["params"]["seed"] == 4 and doc["truth"]["panel"][0] == "TP53"
    again = load_cohort(tmp_path / "cohort")
    pd.testing.assert_frame_equal(again.rna, c.rna)
    c.write(tmp_path / "csv", rna_format="csv")
    assert read_rna_matrix(tmp_path / "csv" / "rna.csv").genes == c.truth["genes"]


def _probe_accuracy(x: np.ndarray, y: np.ndarray) -> float:
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    clf = make_pipeline(
        StandardScaler(), LogisticRegression(C=0.5, class_weight="balanced", max_iter=3000)
    )
    cv = StratifiedKFold(5, shuffle=True, random_state=0)
    return float(cross_val_score(clf, x, y, cv=cv).mean())


def test_feature_bags_layout_signal_and_difficulty(cohort, tmp_path):
    from threads_search.features import load_config, read_features

    fdir = tmp_path / "features"
    table = write_feature_bags(cohort, fdir, dim=64, n_patches=(100, 300))
    cfg = load_config(fdir)
    assert cfg["patch_encoder"] == "synthetic-features" and cfg["encoder_spec"]["dim"] == 64
    status = pd.read_parquet(fdir / "status.parquet")
    assert set(status["slide_id"]) == set(cohort.slides["slide_id"])
    assert (status["state"] == "done").all()
    assert not list((fdir / "h5").glob(".*tmp*"))

    mean, oracle, subtype, patch_x, patch_y = [], [], [], [], []
    truth = cohort.slides.set_index("slide_id")
    for i, row in enumerate(table.itertuples()):
        ff = read_features(row.path)
        assert ff.features.shape == (row.n_patches, 64) and ff.coords.dtype == np.int64
        assert 100 <= row.n_patches <= 300
        assert ff.attrs["encoder"] == "synthetic-features" and ff.attrs["patch_size_level0"] == 512
        assert (ff.coords % 512 == 0).all() and len(np.unique(ff.coords, axis=0)) == len(ff.coords)
        assert ff.coords.max() < ff.attrs["level0_width"]
        sig = read_signal_mask(row.path)
        assert abs(sig.mean() - truth.loc[row.slide_id, "signal_fraction"]) <= 1.0 / row.n_patches
        mean.append(ff.features.mean(0))
        oracle.append(ff.features[sig].mean(0))
        subtype.append(truth.loc[row.slide_id, "subtype"])
        if i < 40:
            patch_x.append(ff.features)
            patch_y.append(sig)
    assert 0.14 < table["signal_fraction"].mean() < 0.21  # drawn from (0.05, 0.3)
    assert table["signal_fraction"].min() >= 0.04 and table["signal_fraction"].max() <= 0.31

    y = np.array(subtype)
    acc_mean, acc_oracle = _probe_accuracy(np.array(mean), y), _probe_accuracy(np.array(oracle), y)
    chance = 1.0 / len(set(subtype))
    assert acc_oracle > 0.9, acc_oracle
    assert acc_mean < acc_oracle - 0.25, (acc_mean, acc_oracle)
    assert acc_mean > chance + 0.08, (acc_mean, chance)
    # signal patches are findable one by one (what an attention model keys on)
    from sklearn.linear_model import LogisticRegression

    px, py = np.concatenate(patch_x), np.concatenate(patch_y)
    half = len(px) // 2
    clf = LogisticRegression(max_iter=2000).fit(px[:half], py[:half])
    assert clf.score(px[half:], py[half:]) > 0.97

    # the file holds exactly what the generator makes (deterministic from the cohort seed)
    space = feature_space(cohort, 64)
    bag = make_bag(cohort, cohort.slides.iloc[0].to_dict(), space, n_patches=(100, 300))
    np.testing.assert_array_equal(bag["features"], read_features(table.path[0]).features)


def test_noise_sets_the_difficulty():
    c = make_cohort(n_patients=120, seed=1)
    y = c.slides["subtype"].to_numpy()
    rows = patient_rows(c)

    def oracle(noise: float) -> float:
        space = feature_space(c, 48)
        bags = [
            make_bag(c, s, space, rows, (60, 100), noise=noise) for s in c.slides.to_dict("records")
        ]
        return _probe_accuracy(np.array([b["features"][b["is_signal"]].mean(0) for b in bags]), y)

    assert oracle(3.0) < oracle(0.3) - 0.1


def test_pixel_slides_open_and_morphology_follows_subtype(tmp_path):
    from threads_search.wsi import open_slide

    c = make_cohort(n_patients=24, seed=7)
    pick = []
    for subtype in ("subtype_A", "subtype_B"):
        pick += list(c.slides.loc[c.slides["subtype"] == subtype, "slide_id"][:2])
    # No lymphocytic infiltrate here: it is a confounder of exactly this whole-slide measure.
    table = write_slides(
        c,
        tmp_path / "slides",
        width=1024,
        height=1024,
        workers=2,
        slide_ids=pick,
        inflammation=(0.0, 0.0),
    )
    dark = {}
    for row in table.itertuples():
        with open_slide(row.path) as s:
            assert s.dimensions == (1024, 1024) and abs(s.mpp - 0.5) < 1e-6
            rgb = s.read_region(0, 0, 0, (1024, 1024))[..., :3].astype(int)
        assert row.slide_id == row.path.rsplit("/", 1)[1].rsplit(".", 1)[0]
        tissue = rgb.min(-1) < 215
        nuclei = rgb.sum(-1) < 330  # dark purple haematoxylin
        dark[row.slide_id] = nuclei.sum() / max(tissue.sum(), 1)
        assert 0.2 <= row.tumour_fraction <= 0.4
    sub = c.slides.set_index("slide_id")["subtype"]
    a = [v for k, v in dark.items() if sub[k] == "subtype_A"]
    b = [v for k, v in dark.items() if sub[k] == "subtype_B"]
    assert min(a) > 1.5 * max(b), dark
    dens = table.set_index("slide_id")["nuclear_density"]
    assert dens[pick[0]] > dens[pick[-1]]
    assert (table["inflammation"] == 0).all()
    # By default the infiltrate varies from slide to slide, independently of the patient.
    from threads_search.synth.cohort_slides import slide_morphology

    infl = [slide_morphology(c, r).inflammation for r in c.slides.to_dict("records")]
    assert 0.0 <= min(infl) < 0.15 and 0.45 < max(infl) <= 0.6
