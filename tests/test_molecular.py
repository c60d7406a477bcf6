"""Molecular data (RNA matrices, units, normaliser, DNA MAF/binary, pairs, metadata) and the
molecular-encoder contract for every registered encoder. Faults met in real archives:
test_molecular_faults.py."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pandas as pd
import pytest
import torch

from threads_search.models.molecular_encoders import (
    create_molecular_encoder,
    list_molecular_encoders,
)
from threads_search.molecular import (
    MissingGenesWarning,
    MolecularDataError,
    RnaNormalizer,
    UnknownGenesWarning,
    maf_to_matrix,
    multi_hot,
    read_binary_matrix,
    read_dna,
    read_maf,
    read_metadata,
    read_pairs,
    read_rna_matrix,
    strip_gene_version,
    transform_units,
)

# --- molecular encoders ------------------------------------------------------------------------


@pytest.mark.parametrize("name", list_molecular_encoders())
def test_molecular_encoder_contract(name):
    torch.manual_seed(0)
    enc = create_molecular_encoder(name, 40, hidden_dims=(32, 32)).eval()
    x = torch.randn(5, 40)
    with torch.no_grad():
        a, b = enc(x), enc(x)
    assert a.shape == (5, 1024) and a.dtype == torch.float32
    assert torch.equal(a, b) and torch.isfinite(a).all()
    assert not torch.allclose(a[0], a[1])
    assert enc.modality in ("rna", "dna") and enc.name == name
    data = json.loads(json.dumps(enc.config.to_dict()))
    assert type(enc.config).from_dict(data) == enc.config
    again = create_molecular_encoder(name, data.pop("in_dim"), **data).eval()
    again.load_state_dict(enc.state_dict())
    with torch.no_grad():
        assert torch.equal(again(x), a)
    with pytest.raises(ValueError, match=r"\[B, 40\]"):
        enc(torch.randn(2, 39))


# --- RNA ------------------------------------------------------------------------------------


def _write(df: pd.DataFrame, path, index=False):
    if str(path).endswith(".parquet"):
        df.to_parquet(path, index=index)
    else:
        df.to_csv(path, sep="\t" if str(path).endswith(".tsv") else ",", index=index)
    return path


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".parquet"])
def test_units_transforms(tmp_path, suffix):
    df = pd.DataFrame(
        {"sample_id": ["s1", "s2"], "TP53": [10.0, 0.0], "EGFR": [30.0, 5.0], "MYC": [60.0, 15.0]}
    )
    path = _write(df, tmp_path / f"rna{suffix}")
    raw = df.set_index("sample_id").to_numpy()
    tpm = read_rna_matrix(path, units="tpm")
    assert tpm.genes == ["TP53", "EGFR", "MYC"] and tpm.samples == ["s1", "s2"]
    np.testing.assert_allclose(tpm.log_values().to_numpy(), np.log1p(raw))
    counts = read_rna_matrix(path, units="counts").log_values().to_numpy()
    cpm = raw / raw.sum(axis=1, keepdims=True) * 1e6
    np.testing.assert_allclose(counts, np.log1p(cpm))
    assert counts[0, 0] == pytest.approx(np.log1p(1e5))  # 10 of 100 counts
    log = read_rna_matrix(path, units="log").log_values().to_numpy()
    np.testing.assert_array_equal(log, raw)
    with pytest.raises(ValueError, match="units"):
        read_rna_matrix(path, units="fpkm")


def test_negative_tpm_is_rejected_naming_sample():
    df = pd.DataFrame({"A": [1.0, -2.0]}, index=["ok", "neg"])
    with pytest.raises(MolecularDataError, match="neg.*A.*units='log'"):
        transform_units(df, "tpm")
    assert transform_units(df, "log").equals(df)


def test_ensembl_versions_are_stripped_and_duplicates_summed(tmp_path):
    assert strip_gene_version("ENSG00000141510.12") == "ENSG00000141510"
    assert strip_gene_version("ENSG00000002586.18_PAR_Y") == "ENSG00000002586_PAR_Y"
    assert strip_gene_version("TP53.1") == "TP53.1"
    df = pd.DataFrame(
        {
            "sample_id": ["a", "b"],
            "ENSG00000141510.12": [1.0, 2.0],
            "ENSG00000141510.3": [3.0, 4.0],
            "ENSG00000146648.18": [5.0, 6.0],
        }
    )
    path = _write(df, tmp_path / "ens.csv")
    m = read_rna_matrix(path, units="tpm")
    assert m.genes == ["ENSG00000141510", "ENSG00000146648"]
    np.testing.assert_array_equal(m.values["ENSG00000141510"].to_numpy(), [4.0, 6.0])
    with pytest.raises(MolecularDataError, match="ENSG00000141510.*more than once"):
        read_rna_matrix(path, units="log")


@pytest.mark.parametrize("bad", ["", "inf"])
def test_missing_or_infinite_values_name_the_sample_and_gene(tmp_path, bad):
    path = tmp_path / "nan.csv"
    path.write_text(f"sample_id,G1,G2\nfine,1,2\nbroken_7,3,{bad}\n")
    with pytest.raises(MolecularDataError, match="broken_7.*G2") as e:
        read_rna_matrix(path)
    assert "fine" not in str(e.value)


def test_id_column_rules(tmp_path):
    df = pd.DataFrame({"G1": [1.0, 2.0], "G2": [3.0, 4.0]}, index=["007", "008"])
    m = read_rna_matrix(_write(df, tmp_path / "idx.csv", index=True))  # unnamed first column
    assert m.samples == ["007", "008"] and m.genes == ["G1", "G2"]
    pq = read_rna_matrix(_write(df, tmp_path / "idx.parquet", index=True))
    assert pq.samples == ["007", "008"] and pq.genes == ["G1", "G2"]
    with pytest.raises(MolecularDataError, match="no 'sample_id' column"):
        read_rna_matrix(_write(df, tmp_path / "noid.csv"))
    (tmp_path / "dup.csv").write_text("sample_id,G1\nx,1\nx,2\n")
    with pytest.raises(MolecularDataError, match="duplicate sample ids x"):
        read_rna_matrix(tmp_path / "dup.csv")
    (tmp_path / "zeros.csv").write_text("sample_id,G1\n001,1\n")
    assert read_rna_matrix(tmp_path / "zeros.csv").samples == ["001"]


def test_gene_selection_and_metadata_columns(tmp_path):
    df = pd.DataFrame(
        {
            "sample_id": ["a", "b"],
            "G1": [1.0, 2.0],
            "G2": [3.0, 4.0],
            "Age": [50, 60],
            "smoker": [True, False],
            "site": ["x", "y"],
            "score": [0.1, 0.2],
        }
    )
    path = _write(df, tmp_path / "m.csv")
    m = read_rna_matrix(path, exclude=["score"])
    assert m.genes == ["G1", "G2"]
    assert set(m.ignored_columns) == {"Age", "smoker", "site", "score"}
    assert list(m.metadata["Age"]) == [50, 60]
    assert read_rna_matrix(path, genes=["G2"]).genes == ["G2"]
    with pytest.raises(MolecularDataError, match="non-numeric.*site"):
        read_rna_matrix(path, genes=["G1", "site"])
    with pytest.raises(MolecularDataError, match="not in file: NOPE"):
        read_rna_matrix(path, genes=["G1", "NOPE"])


def test_normalizer_fit_save_load_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    train = pd.DataFrame(rng.normal(5, 2, (40, 6)), columns=[f"G{i}" for i in range(6)])
    train["G5"] = 3.0  # constant gene: std floored
    norm = RnaNormalizer.fit(train, units="tpm")
    z = norm.transform(train)
    assert z.dtype == np.float32 and z.shape == (40, 6)
    np.testing.assert_allclose(z[:, :5].mean(axis=0), 0, atol=1e-5)
    np.testing.assert_allclose(z[:, :5].std(axis=0), 1, atol=1e-4)
    assert norm.std[5] == norm.std_floor and np.all(z[:, 5] == 0)
    norm.save(tmp_path / "rna_normalization.json")
    back = RnaNormalizer.load(tmp_path / "rna_normalization.json")
    assert back.genes == norm.genes and back.units == "tpm" and back.n_samples == 40
    np.testing.assert_array_equal(back.mean, norm.mean)
    np.testing.assert_array_equal(back.std, norm.std)
    np.testing.assert_array_equal(back.transform(train), z)
    # profiles in another column order align to the vocabulary
    shuffled = train[list(reversed(train.columns))]
    np.testing.assert_array_equal(back.transform(shuffled), z)


def test_gse7390_real_file(real_dir, tmp_path):
    from threads_search.models.bundle import build_model

    path = real_dir / "gse7390_breast_expression.csv"
    m = read_rna_matrix(path, units="log")
    header = path.read_text().splitlines()[0].split(",")
    probes = [c for c in header if c.endswith("_at")]
    assert len(probes) == 76 and m.genes == probes
    assert len(m) == 198 and {"age", "er", "grade"} <= set(m.ignored_columns)
    log = m.log_values()
    norm = RnaNormalizer.fit(log, units="log")
    assert norm.genes == probes and np.all(norm.std > 0)
    model = build_model(
        {"name": "test-encoder", "dim": 8},
        slide_encoder="mean",
        normalizer=norm,
        rna_config={"hidden_dims": [64]},
    )
    assert model.rna_units == "log"  # taken from the normaliser
    emb = model.embed_rna(m)
    assert emb.shape == (198, 1024) and np.isfinite(emb).all()
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)
    rng = np.random.default_rng(0)
    drop30 = rng.choice(probes, size=int(0.3 * 76), replace=False)
    with pytest.warns(MissingGenesWarning, match=f"{len(drop30)} of the model's 76 genes"):
        part = model.embed_rna(m.values.drop(columns=drop30))
    assert part.shape == (198, 1024) and np.isfinite(part).all()
    drop60 = rng.choice(probes, size=int(0.6 * 76), replace=False)
    with pytest.raises(MolecularDataError, match=r"covers 31 of the model's 76 genes \(40.8%\)"):
        model.embed_rna(m.values.drop(columns=drop60))


# --- DNA ------------------------------------------------------------------------------------

MAF_TEXT = """#version 2.4
#another comment
Hugo_Symbol\tEntrez_Gene_Id\tTumor_Sample_Barcode\tVariant_Classification
TP53\t7157\tTCGA-AA-0001-01A\tMissense_Mutation
KRAS\t3845\tTCGA-AA-0001-01A\tSilent
PIK3CA\t5290\tTCGA-AA-0002-01A\tIntron
BRCA1\t672\tTCGA-AA-0002-01A\t3'UTR
Unknown\t0\tTCGA-AA-0002-01A\tMissense_Mutation
KRAS\t3845\tTCGA-AA-0003-01A\tNonsense_Mutation
TP53\t7157\tTCGA-AA-0003-01A\tFrame_Shift_Del
TP53\t7157\tTCGA-AA-0003-01A\tSplice_Site
"""


def test_maf_drops_silent_variants_and_keeps_every_sample(tmp_path):
    path = tmp_path / "muts.maf"
    path.write_text(MAF_TEXT)
    maf = read_maf(path)
    assert len(maf) == 8
    mat = maf_to_matrix(maf)
    assert list(mat.index) == ["TCGA-AA-0001-01A", "TCGA-AA-0002-01A", "TCGA-AA-0003-01A"]
    assert list(mat.columns) == ["KRAS", "TP53"]  # PIK3CA/BRCA1 silent only, Unknown dropped
    assert mat.loc["TCGA-AA-0001-01A"].tolist() == [0, 1]  # KRAS there is Silent
    assert mat.loc["TCGA-AA-0002-01A"].tolist() == [0, 0]
    assert mat.loc["TCGA-AA-0003-01A"].tolist() == [1, 1]
    assert read_dna(path).equals(mat)
    (tmp_path / "bad.maf").write_text("Hugo_Symbol\tTumor_Sample_Barcode\nTP53\tx\n")
    with pytest.raises(MolecularDataError, match="Variant_Classification"):
        read_maf(tmp_path / "bad.maf")


def test_binary_matrix_validation(tmp_path):
    (tmp_path / "ok.csv").write_text("sample_id,TP53,KRAS\ns1,1,0\ns2,0,0\n")
    m = read_binary_matrix(tmp_path / "ok.csv")
    assert m.dtypes.unique().tolist() == [np.int8] and m.loc["s1"].tolist() == [1, 0]
    assert read_dna(tmp_path / "ok.csv").equals(m)
    (tmp_path / "two.csv").write_text("sample_id,TP53,KRAS\ns1,1,0\ns2,0,2\n")
    with pytest.raises(MolecularDataError, match=r"\(s2, KRAS\) = 2"):
        read_binary_matrix(tmp_path / "two.csv")
    (tmp_path / "nan.csv").write_text("sample_id,TP53,KRAS\ns1,,0\n")
    with pytest.raises(MolecularDataError, match=r"\(s1, TP53\)"):
        read_binary_matrix(tmp_path / "nan.csv")
    bools = pd.DataFrame({"TP53": [True, False]}, index=["a", "b"])
    assert multi_hot(bools, ["KRAS", "TP53"]).tolist() == [[0, 1], [0, 0]]


def test_multi_hot_panel_order_and_outside_genes():
    mat = pd.DataFrame({"TP53": [1, 0], "EGFR": [1, 1], "ZZZ1": [0, 0]}, index=["a", "b"])
    with pytest.warns(UnknownGenesWarning, match="1 mutated gene.*EGFR"):
        x = multi_hot(mat, ["KRAS", "TP53", "BRAF"])
    assert x.dtype == np.float32 and x.tolist() == [[0, 1, 0], [0, 0, 0]]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # unmutated genes outside the panel are not reported
        multi_hot(mat[["TP53", "ZZZ1"]], ["TP53"])


# --- pairs and metadata -----------------------------------------------------------------------


def test_pairs_by_sample_and_by_patient(tmp_path):
    a, b = "TCGA-A1-A0SB", "TCGA-B2-0001"
    df = pd.DataFrame(
        {
            "slide_id": [f"{a}-01Z-00-DX1", f"{a}-01Z-00-DX2", None, f"{b}-01Z"],
            "sample_id": [f"{a}-01A-11R", None, f"{a}-01A-11D", f"{b}-01A"],
        }
    )
    path = _write(df, tmp_path / "pairs.csv")
    with pytest.raises(MolecularDataError, match="empty on rows 3, 4"):
        read_pairs(path)
    pairs = read_pairs(path, pair_by="patient")
    got = set(zip(pairs.slide_id, pairs.sample_id, pairs.patient_id, strict=True))
    assert got == {
        ("TCGA-A1-A0SB-01Z-00-DX1", "TCGA-A1-A0SB-01A-11R", a),
        ("TCGA-A1-A0SB-01Z-00-DX1", "TCGA-A1-A0SB-01A-11D", a),
        ("TCGA-A1-A0SB-01Z-00-DX2", "TCGA-A1-A0SB-01A-11R", a),
        ("TCGA-A1-A0SB-01Z-00-DX2", "TCGA-A1-A0SB-01A-11D", a),
        ("TCGA-B2-0001-01Z", "TCGA-B2-0001-01A", b),
    }
    direct = read_pairs(_write(df.dropna(), tmp_path / "p.parquet"))
    assert list(direct.slide_id) == ["TCGA-A1-A0SB-01Z-00-DX1", "TCGA-B2-0001-01Z"]
    (tmp_path / "short.csv").write_text("slide_id,sample_id\nslideA,rnaA\n")
    with pytest.raises(MolecularDataError, match="'slideA' is not a TCGA barcode"):
        read_pairs(tmp_path / "short.csv", pair_by="patient")
    (tmp_path / "own.csv").write_text("slide_id,sample_id,patient_id\nslideA,,p1\n,rnaA,p1\n")
    own = read_pairs(tmp_path / "own.csv", pair_by="patient")
    assert own.to_dict("records") == [
        {"slide_id": "slideA", "sample_id": "rnaA", "patient_id": "p1"}
    ]
    (tmp_path / "noslide.csv").write_text("sample_id\nx\n")
    with pytest.raises(MolecularDataError, match=r"missing column\(s\) \['slide_id'\]"):
        read_pairs(tmp_path / "noslide.csv")


def test_metadata_loader(tmp_path):
    (tmp_path / "meta.csv").write_text("patient_id,sample_id,label\n0042,s1,LumA\n0043,s2,Basal\n")
    meta = read_metadata(tmp_path / "meta.csv")
    assert meta["patient_id"].tolist() == ["0042", "0043"] and meta["label"].tolist()[1] == "Basal"
    (tmp_path / "none.csv").write_text("case,label\n1,a\n")
    with pytest.raises(MolecularDataError, match="at least one of the columns"):
        read_metadata(tmp_path / "none.csv")
    (tmp_path / "dup.csv").write_text("slide_id,label\nA,x\nA,y\n")
    with pytest.raises(MolecularDataError, match="duplicate slide_id A"):
        read_metadata(tmp_path / "dup.csv")
    with pytest.raises(FileNotFoundError, match="missing.csv"):
        read_metadata(tmp_path / "missing.csv")
