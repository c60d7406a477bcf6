"""The query commands (``search``, ``classify``, ``info``) on the fixtures' indexes: output
formats, filters, flags, and one-line errors with exit code 2."""

from __future__ import annotations

import json
from io import StringIO

import numpy as np
import pandas as pd
import pytest
import query_fixtures
from query_fixtures import invoke

from threads_search.query import SmallClassWarning, open_index
from threads_search.vectorstore.writer import write_generation

cli, hand, modelled = query_fixtures.cli, query_fixtures.hand, query_fixtures.modelled


def test_cli_search_formats(hand, cli):
    index, _ = hand
    root = index.root
    r = invoke(cli, "search --slide P004-DX1 -k 3 --format json", root)
    assert r.exit_code == 0, r.output
    rows = json.loads(r.stdout)
    want = index.search_slides("P004-DX1", k=3)
    assert [x["slide_id"] for x in rows] == list(want["slide_id"])
    r = invoke(cli, "search --slide P004-DX1 --format csv --where", root, "site = 'C'")
    got = pd.read_csv(StringIO(r.stdout))
    assert r.exit_code == 0 and set(got["site"]) == {"C"} and len(got) == 10
    r = invoke(cli, "search --slide P004-DX1", root)
    assert r.exit_code == 0 and want["slide_id"].iloc[0] in r.stdout
    r = invoke(cli, "search --sample P008-R -k 2 --format json", root)
    assert {x["slide_id"] for x in json.loads(r.stdout)} == {"P008-DX1", "P008-DX2"}
    r = invoke(cli, "search --slide P004-DX1 --molecules --same-patient -k 2 --format json", root)
    assert {x["sample_id"] for x in json.loads(r.stdout)} == {"P004-R", "P004-D"}
    r = invoke(cli, "search --slide P004-DX1 -k 3 --format csv --columns", root, "slide_id, site")
    got = pd.read_csv(StringIO(r.stdout))
    assert r.exit_code == 0 and list(got.columns) == ["rank", "score", "slide_id", "site"]
    assert list(got["slide_id"]) == list(want["slide_id"])


def test_cli_classify_info_and_errors(hand, cli):
    index, _ = hand
    root = index.root
    r = invoke(cli, "classify --label subtype --format json --min-samples 3", root)
    assert r.exit_code == 0, r.output
    rows = json.loads(r.stdout)
    assert len(rows) == 60 and all(x["predicted"] == x["subtype"] for x in rows)
    assert "accuracy on 60 labelled slides: 1.000" in r.stderr
    r = invoke(cli, "classify --label subtype --prototypes slide --where", root, "site = 'A'")
    assert r.exit_code == 0 and "P000-DX1" in r.stdout
    r = invoke(cli, "info", root)
    assert r.exit_code == 0 and "flat" in r.stdout and index.manifest["generation"] in r.stdout
    r = invoke(cli, "info --format json", root)
    assert json.loads(r.stdout)["counts"] == {"slides": 60, "molecular": 45}
    for command, where, msg in (
        ("search --slide zzz", root, "neither a slide_id"),
        ("search --slide P001-DX1 --where x;DROP", root, "';'"),
        ("search", root, "give --slide"),
        ("search --slide a", f"{root}-missing", "index.json is missing"),
        ("classify --label nope", root, "no column 'nope'"),
        ("search --slide P001-DX1 --format xml", root, "--format"),
        ("search --slide P001-DX1 --columns slide_id,nope", root, "no column 'nope'"),
    ):
        r = invoke(cli, command, where)
        assert r.exit_code == 2, (command, r.output)
        assert msg in r.stderr, (command, r.stderr)


def test_cli_same_patient_flag_and_flag_names_in_errors(hand, cli):
    """--same-patient/--no-same-patient reach every search; library advice naming a Python
    argument (min_samples) reads as the CLI flag (--min-samples)."""
    index, _ = hand
    r = invoke(cli, "search --sample P008-R -k 4 --no-same-patient --format json", index.root)
    assert r.exit_code == 0, r.output
    assert "P008" not in {x["patient_id"] for x in json.loads(r.stdout)}
    with pytest.warns(SmallClassWarning):
        r = invoke(cli, "classify --label subtype --min-samples 100", index.root)
    assert r.exit_code == 2
    err = " ".join(r.stderr.split())
    assert "lower --min-samples" in err and "min_samples" not in err


def test_cli_search_profile_files(modelled, cli, tmp_path):
    index, cohort, _, _ = modelled
    rna_file = tmp_path / "rna.csv"
    cohort.rna.to_csv(rna_file, index=False)
    sid = cohort.rna["sample_id"].iloc[2]
    r = invoke(cli, "search -k 1 --format json --rna", index.root, str(rna_file), "--sample", sid)
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)[0]["patient_id"] == sid[:12]
    r = invoke(cli, "search --rna", index.root, str(rna_file))
    assert r.exit_code == 2 and "choose one with --sample" in r.stderr


def test_metadata_named_like_result_columns_keeps_results_valid(tmp_path, cli):
    """An index whose slide table has ``score``/``rank`` columns (written before they were
    renamed at index time): results carry them as meta_score/meta_rank, and --format json works
    (before: two 'score' columns, and to_json refused the frame)."""
    rng = np.random.default_rng(0)
    slides = pd.DataFrame(
        {"slide_id": [f"S{i}" for i in range(6)], "score": range(6), "rank": list("abcdef")}
    )
    write_generation(tmp_path / "idx", slides, rng.normal(size=(6, 8)).astype(np.float32))
    df = open_index(tmp_path / "idx").search_slides("S0", k=3)
    assert list(df.columns[:2]) == ["rank", "score"] and df["rank"].tolist() == [1, 2, 3]
    assert {"meta_score", "meta_rank"} <= set(df.columns) and df.columns.is_unique
    r = invoke(cli, "search --slide S0 -k 3 --format json", tmp_path / "idx")
    assert r.exit_code == 0, r.output
    assert [x["slide_id"] for x in json.loads(r.stdout)] == list(df["slide_id"])
