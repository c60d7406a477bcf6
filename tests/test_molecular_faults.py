"""Molecular inputs from real archives: faults that were silent or misleading before (repeated
gene headers, text cells, Latin-1 files, MAFs without barcodes, conflicting pairs, metadata
names differing in case), and the vectorised RNA alignment against a reference."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

from threads_search.molecular import (
    MissingGenesWarning,
    MolecularDataError,
    RnaNormalizer,
    as_dna_frame,
    as_rna_frame,
    read_dna,
    read_metadata,
    read_pairs,
    read_rna_matrix,
    strip_gene_version,
    transform_units,
)


def test_repeated_gene_header_is_merged_by_the_units_rule(tmp_path):
    """pandas reads a header ``TP53,...,TP53`` as TP53 and TP53.1 (the second then matched no
    model gene and was dropped silently); it is the same gene: summed for tpm/counts like
    colliding Ensembl versions, refused for log."""
    path = tmp_path / "dup.csv"
    path.write_text("sample_id,TP53,EGFR,TP53\na,1,5,2\nb,3,6,4\n")
    m = read_rna_matrix(path, units="tpm")
    assert m.genes == ["TP53", "EGFR"]
    np.testing.assert_array_equal(m.values["TP53"].to_numpy(), [3.0, 7.0])
    with pytest.raises(MolecularDataError, match="TP53.*more than once.*log-scale"):
        read_rna_matrix(path, units="log")
    (tmp_path / "dupid.csv").write_text("sample_id,G1,sample_id\na,1,a\n")
    with pytest.raises(MolecularDataError, match="'sample_id'.*more than once"):
        read_rna_matrix(tmp_path / "dupid.csv")
    (tmp_path / "meta.csv").write_text("slide_id,site,site\nS1,A,B\n")
    with pytest.raises(MolecularDataError, match="meta.csv.*'site'.*more than once"):
        read_metadata(tmp_path / "meta.csv")


def test_text_cell_in_a_gene_column_is_an_error_naming_it(tmp_path):
    """One text cell made the whole gene column non-numeric: the gene was dropped for every
    sample and later reported as 'absent'."""
    path = tmp_path / "rna.csv"
    path.write_text("sample_id,G1,G2,subtype\ns1,1,2,LumA\ns2,3,n.d.,Basal\ns3,4,5,LumB\n")
    with pytest.raises(MolecularDataError, match=r"rna\.csv.*sample 's2', gene 'G2' = 'n\.d\.'"):
        read_rna_matrix(path)
    ok = read_rna_matrix(path, exclude=["G2"])  # a text column that is not a gene: still fine
    assert ok.genes == ["G1"] and ok.ignored_columns == ["G2", "subtype"]
    frame = pd.DataFrame({"G1": [1.0, 2.0, 3.0], "G2": [1.0, "n.d.", 2.0]}, index=["a", "b", "c"])
    with pytest.raises(MolecularDataError, match="sample 'b', gene 'G2' = 'n.d.'"):
        as_rna_frame(frame)
    with pytest.raises(MolecularDataError, match="sample 'profile', gene 'G2' = 'high'"):
        transform_units(as_rna_frame({"G1": 1.0, "G2": "high"})[0], "tpm")


def test_latin1_file_error_names_the_file_and_the_fix(tmp_path):
    path = tmp_path / "clinical.csv"
    path.write_bytes("slide_id,site\nS1,Zürich\n".encode("latin-1"))
    with pytest.raises(MolecularDataError) as e:
        read_metadata(path)
    msg = str(e.value)
    assert str(path) in msg and "not UTF-8" in msg and "line 2" in msg and "save it as UTF-8" in msg


def test_maf_without_barcode_is_reported_as_a_maf(tmp_path):
    path = tmp_path / "muts.tsv"
    path.write_text("Hugo_Symbol\tVariant_Classification\tSample\nTP53\tMissense_Mutation\tx\n")
    with pytest.raises(MolecularDataError, match="looks like a MAF.*no Tumor_Sample_Barcode"):
        read_dna(path)
    rows = pd.DataFrame({"Hugo_Symbol": ["TP53"], "Variant_Classification": ["Silent"]})
    with pytest.raises(MolecularDataError, match="looks like a MAF.*Tumor_Sample_Barcode"):
        as_dna_frame(rows)


def test_pairs_giving_one_slide_two_patients_is_an_error(tmp_path):
    path = tmp_path / "pairs.csv"
    path.write_text("slide_id,sample_id,patient_id\nS1,R1,P1\nS1,R2,P2\nS2,R3,P3\n")
    with pytest.raises(MolecularDataError, match="slide 'S1': patients 'P1', 'P2'"):
        read_pairs(path)
    path.write_text("slide_id,sample_id,patient_id\nS1,R1,P1\nS1,,P2\n")
    with pytest.raises(MolecularDataError, match="slide 'S1': patients 'P1', 'P2'"):
        read_pairs(path, pair_by="patient")
    path.write_text("slide_id,sample_id,patient_id\nS1,R1,P1\nS2,R1,P2\n")
    with pytest.raises(MolecularDataError, match="sample 'R1': patients 'P1', 'P2'"):
        read_pairs(path)


def test_metadata_names_differing_only_in_case_are_refused(tmp_path):
    (tmp_path / "m.csv").write_text("slide_id,site,Site\nS1,SITE_1,SITE_2\n")
    with pytest.raises(MolecularDataError, match="'site' and 'Site' differ only in case"):
        read_metadata(tmp_path / "m.csv")
    (tmp_path / "ids.csv").write_text("Slide_ID,site\nS1,A\n")
    with pytest.raises(MolecularDataError, match="rename it to 'slide_id'"):
        read_metadata(tmp_path / "ids.csv")


def _reference_z(norm, frame, units):
    """The pre-vectorisation algorithm (per-column pandas), kept here as the reference."""
    log = transform_units(frame, units)
    cols = [strip_gene_version(c) for c in log.columns]
    values = log.set_axis(cols, axis=1)
    values = values.loc[:, ~values.columns.duplicated()].reindex(columns=norm.genes)
    arr = values.fillna(pd.Series(norm.mean, index=norm.genes)).to_numpy(dtype=np.float64)
    return np.clip((arr - norm.mean) / norm.std, -norm.clip, norm.clip).astype(np.float32)


@pytest.mark.parametrize("units", ["tpm", "counts", "log"])
def test_vectorised_alignment_matches_the_reference(units):
    rng = np.random.default_rng(3)
    genes = [f"ENSG{i:011d}" for i in range(40)]
    norm = RnaNormalizer.fit(pd.DataFrame(rng.normal(2, 1, (10, 40)), columns=genes), units)
    # versions, 30 of 40 vocabulary genes, 5 genes outside it, a shuffled order
    cols = [f"{g}.{i % 7}" for i, g in enumerate(genes[:30])] + [f"OTHER{i}" for i in range(5)]
    frame = pd.DataFrame(rng.uniform(0, 50, (3, 35)), columns=cols, index=["a", "b", "c"])
    frame = frame[list(rng.permutation(cols))]
    with pytest.warns(MissingGenesWarning, match="10 of the model's 40 genes"):
        got = norm.transform_raw(frame, units)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MissingGenesWarning)
        want = _reference_z(norm, frame, units)
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(norm.transform(transform_units(frame, units)), want, atol=1e-6)
        aligned = norm.align(transform_units(frame, units))
    assert list(aligned.columns) == genes
    np.testing.assert_allclose(aligned.iloc[:, 35:].to_numpy(), np.tile(norm.mean[35:], (3, 1)))
    if units != "log":  # a vocabulary gene given twice: summed like the matrix reader does
        twice = frame.rename(columns={cols[1]: cols[0]})  # two vocabulary genes
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", MissingGenesWarning)
            np.testing.assert_allclose(
                norm.transform_raw(twice, units), _reference_z(norm, twice, units), atol=1e-6
            )
