"""``threads-search evaluate`` through the CLI on indexes with known ground truth: every task kind
and baseline on a synthetic cohort indexed by the real pipeline (``test_evaluate_fixtures``),
zero-shot and molecular retrieval on the hand-made index of ``query_fixtures`` (slides and
molecular samples placed around class centres), the one-line errors, and the survival model on
real expression data (GSE7390)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import query_fixtures
from test_evaluate_fixtures import eval_index  # noqa: F401 - the session fixture
from typer.testing import CliRunner

from threads_search.cli import app
from threads_search.evaluation.baselines import MEAN, THREADS, UNTRAINED

hand = query_fixtures.hand
runner = CliRunner()
FAST = ["--folds", "3", "--bootstrap", "60", "--draws", "2"]


def _evaluate(index_dir, labels, out, *tasks, extra=FAST):
    args = ["evaluate", str(index_dir), "--labels", str(labels), "--out", str(out)]
    for t in tasks:
        args += ["--task", t]
    return runner.invoke(app, [*args, *extra])


@pytest.fixture(scope="module")
def report(eval_index, tmp_path_factory):  # noqa: F811
    """One CLI run of every kind on the indexed synthetic cohort."""
    out = tmp_path_factory.mktemp("eval_report")
    r = _evaluate(
        eval_index["index"],
        eval_index["labels"],
        out,
        "subtype=subtype",
        "os=os_months,os_event:survival",
        "hidden=hidden_os_months,hidden_os_event:survival",
        "ret=subtype:retrieval",
        "fs=subtype:fewshot",
        "pairs=rna,dna:molecular",
    )
    assert r.exit_code == 0, r.output
    return json.loads((out / "report.json").read_text()), out, r.output


def _task(rep, name):
    return next(t for t in rep["tasks"] if t["task"] == name)


def test_report_files_table_and_baselines(report):
    rep, out, output = report
    assert rep["models"] == [THREADS, MEAN, UNTRAINED]
    assert rep["bag_source"] == "h5"  # the features the index was built from
    assert rep["labels"]["slides_joined"] == rep["n_slides"] == 90
    md = (out / "report.md").read_text()
    for name in ("subtype", "os", "hidden", "ret", "fs", "pairs"):
        assert f"| {name} (" in md
        assert name in output
    for png in ("subtype_classification", "os_survival", "hidden_survival", "fs_fewshot"):
        assert (out / f"{png}.png").stat().st_size > 5000
    # THREADS minus each baseline, with a paired interval around the difference
    vs = _task(rep, "subtype")["vs"]["balanced_accuracy"]
    m = _task(rep, "subtype")["metrics"]["balanced_accuracy"]
    for base in (MEAN, UNTRAINED):
        d = vs[base]
        assert d["diff"] == pytest.approx(m[THREADS]["value"] - m[base]["value"])
        assert d["lo"] <= d["diff"] <= d["hi"]


def test_classification_beats_chance_with_intervals(report):
    t = _task(report[0], "subtype")
    assert t["n_classes"] == 4 and t["n_patients"] == 90
    for model, v in t["metrics"]["balanced_accuracy"].items():
        assert v["lo"] <= v["value"] <= v["hi"]
        assert v["lo"] > 0.25, model  # 4 balanced subtypes: chance 0.25
    cm = np.array(t["confusion"]["matrix"])
    assert cm.sum() == 90 and np.trace(cm) > 45


def test_survival_high_where_shown_and_chance_where_hidden(report):
    """``os`` is driven by programme_1, which the slides show; ``hidden_os`` by a factor no
    modality shows."""
    shown = _task(report[0], "os")["metrics"]["c_index"]
    hidden = _task(report[0], "hidden")["metrics"]["c_index"]
    for model in (THREADS, MEAN):
        assert shown[model]["value"] > 0.62 and shown[model]["lo"] > 0.5, shown[model]
        assert abs(hidden[model]["value"] - 0.5) < 0.1, hidden[model]
        assert hidden[model]["lo"] < 0.5 < hidden[model]["hi"]
    assert _task(report[0], "os")["n_events"] > 10


def test_retrieval_definitions_and_fewshot_curve(report):
    ret = _task(report[0], "ret")["metrics"]
    for model in (THREADS, MEAN, UNTRAINED):
        v = {k: ret[k][model]["value"] for k in ret}
        # at k = 1 the three Patho-Bench metrics coincide; acc@k grows with k
        assert v["acc@1"] == pytest.approx(v["mMV@1"]) == pytest.approx(v["mAP@1"])
        assert v["acc@1"] <= v["acc@5"] <= v["acc@10"] <= 1.0
    fs = _task(report[0], "fs")
    assert fs["shots"] == [1, 2, 4, 8, 16]
    for model, curve in fs["curves"].items():
        assert curve[-1]["balanced_accuracy_mean"] > curve[0]["balanced_accuracy_mean"], model


def test_molecular_retrieval_with_cca_baseline(report):
    t = _task(report[0], "pairs")
    assert set(t["n_queries"]) == {"rna", "dna"} and t["n_queries"]["rna"] == 90
    r10 = t["metrics"]["RNA→slide R@10"]
    assert set(r10) == {THREADS, "CCA"}
    # the slides show the subtype and programmes the RNA carries: CCA on the training pairs
    # finds a patient's slide far above chance (about 10 / 30 slides per fold)
    assert r10["CCA"]["value"] > 0.6
    d = t["vs"]["RNA→slide R@10"]["CCA"]
    assert d["diff"] == pytest.approx(r10[THREADS]["value"] - r10["CCA"]["value"])


def _hand_labels(index, path):
    s = index.slides[["slide_id", "patient_id", "subtype"]]  # patients reach their samples
    s.to_csv(path, index=False)
    return path


def test_zero_shot_and_molecular_on_known_space(hand, tmp_path):
    """Slides and molecular samples of a class share a centre: molecular prompting and
    RNA→slide retrieval must work; the missing baselines are named, not fatal."""
    index, _ = hand
    labels = _hand_labels(index, tmp_path / "labels.csv")
    r = _evaluate(
        index.root, labels, tmp_path / "out", "zs=subtype:zeroshot", "m=rna:molecular", extra=FAST
    )
    assert r.exit_code == 0, r.output
    rep = json.loads((tmp_path / "out" / "report.json").read_text())
    zs = _task(rep, "zs")["metrics"]["balanced_accuracy"]
    assert list(zs) == [THREADS] and zs[THREADS]["value"] > 0.8
    mol = _task(rep, "m")["metrics"]["RNA→slide R@1"]
    assert mol[THREADS]["value"] > 0.8  # a sample sits next to its patient's slides
    assert any("left out" in n for n in rep["notes"])  # no patch features, no model bundle
    assert "left out" in r.output


@pytest.mark.parametrize(
    ("tasks", "edit", "expect"),
    [
        (["x=nope"], None, "no column 'nope' in the labels"),
        (["x=subtype:magic"], None, "unknown kind 'magic'"),
        (["x=subtype"], "rare", "too few samples per class"),
        (["x=t,e:survival"], "no_events", "no events among the 60 joined slides"),
        (["x=subtype"], "elsewhere", "joined none of the index's 60 slides (0 joined"),
        (["x=age"], None, "is numeric with 30 values; name a kind"),
        (["x=subtype", "x=subtype:retrieval"], None, "task names must differ: x given twice"),
    ],
)
def test_one_line_errors(hand, tmp_path, tasks, edit, expect):
    index, _ = hand
    s = index.slides[["slide_id", "patient_id", "subtype", "age"]].copy()
    s["t"], s["e"] = np.arange(len(s)) + 1.0, 0 if edit == "no_events" else 1
    if edit == "rare":
        s.loc[s.index[:2], "subtype"] = "rare"  # one patient's two slides
    if edit == "elsewhere":
        s["slide_id"] = "OTHER-" + s["slide_id"]
        s = s.drop(columns="patient_id")
    s.to_csv(tmp_path / "labels.csv", index=False)
    r = _evaluate(index.root, tmp_path / "labels.csv", tmp_path / "out", *tasks)
    assert r.exit_code == 2, r.output
    assert expect in r.output
    assert "Traceback" not in r.output and len(r.output.strip().splitlines()) == 1


@pytest.mark.real
def test_cox_on_real_expression_beats_chance(real_dir):
    """GSE7390: 198 breast-cancer patients, 76 probes, distant metastasis (``time`` in days,
    ``event``); a penalised Cox model on the expression, cross-validated, must clearly beat 0.5
    (published analyses of this cohort report about 0.6-0.7)."""
    from threads_search.evaluation.survival import check_outcome, survival
    from threads_search.evaluation.tasks import patient_folds

    d = pd.read_csv(real_dir / "gse7390_breast_expression.csv")
    x = d.filter(regex=r"^X\d").to_numpy(np.float64)
    assert x.shape == (198, 76)
    t, e = check_outcome("dm", d["time"], d["event"], 5)
    g = d["sample_id"].to_numpy()
    folds = patient_folds(e.astype(int), g, 5, seed=0)
    noise = np.random.default_rng(0).normal(size=x.shape)
    res = survival({"expression": x, "noise": noise}, t, e, g, folds, 200, 0)
    c = res["metrics"]["c_index"]
    assert c["expression"]["value"] > 0.57 and c["expression"]["lo"] > 0.5, c
    assert abs(c["noise"]["value"] - 0.5) < 0.1
    assert res["n_events"] == int(d["event"].sum())


def test_split_column_scores_the_test_patients_only(eval_index, tmp_path):  # noqa: F811
    """``--split``: train on train (and val) patients, score the cohort's test patients."""
    r = _evaluate(
        eval_index["index"],
        eval_index["labels"],
        tmp_path,
        "subtype=subtype",
        "os=os_months,os_event:survival",
        extra=["--split", "split", "--bootstrap", "30", "--no-baselines"],
    )
    assert r.exit_code == 0, r.output
    rep = json.loads((tmp_path / "report.json").read_text())
    n_test = int((eval_index["cohort"].patients["split"] == "test").sum())
    assert rep["settings"]["split"] == "split" and rep["models"] == [THREADS]
    assert np.array(_task(rep, "subtype")["confusion"]["matrix"]).sum() == n_test
    assert len(_task(rep, "os")["km"]["time"]) == n_test
    assert "split column 'split'" in r.output


def test_help_documents_the_task_syntax():
    r = runner.invoke(app, ["evaluate", "--help"], env={"COLUMNS": "200"})
    assert r.exit_code == 0
    for text in ("NAME=COLUMN[:kind]", "NAME=TIME,EVENT:survival", "NAME=rna,dna:molecular"):
        assert text in r.output
    r = runner.invoke(app, ["--help"], env={"COLUMNS": "200"})
    assert " evaluate " in r.output and " export " in r.output


def test_demo_step_prints_the_command_and_headline_table(eval_index):  # noqa: F811
    """The demo's evaluate step (on this fixture's INDEX_DIR layout: ROOT/index)."""
    from rich.console import Console

    from threads_search.cli.demo import EVAL_TASKS, _evaluate

    console = Console(record=True, width=200)
    steps = []
    rep = _evaluate(eval_index["root"], eval_index["labels"], console, lambda i, t: steps.append(i))
    text = console.export_text()
    assert steps == [6]
    assert f"threads-search evaluate {eval_index['index']} --labels {eval_index['labels']}" in text
    assert [t["task"] for t in rep["tasks"]] == [t.split("=")[0] for t in EVAL_TASKS]
    assert "balanced_accuracy" in text and "macro_f1" not in text  # headline: first metric only
    assert (eval_index["root"] / "report" / "report.md").is_file()


def test_batch_effects_beside_the_labels(hand, tmp_path):
    """A batch the embedding encodes (``scanner``, here a copy of the class) is reported as
    predictable, above a label it does not encode (random per patient), with a warning; a batch
    it does not encode (the index's ``site``, independent of the class centres) stays near
    chance without one. Both tables reach the terminal and report.md."""
    index, _ = hand
    s = index.slides[["slide_id", "patient_id", "subtype"]].copy()
    rng = np.random.default_rng(0)
    noise = {p: rng.choice(["a", "b"]) for p in s["patient_id"].unique()}
    s["noise"] = s["patient_id"].map(noise)
    s["scanner"] = s["subtype"].map({"class_0": "S1", "class_1": "S2", "class_2": "S3"})
    s.to_csv(tmp_path / "labels.csv", index=False)
    out = tmp_path / "out"
    r = _evaluate(
        index.root,
        tmp_path / "labels.csv",
        out,
        "n=noise",
        extra=[*FAST, "--no-baselines", "--batch", "site", "--batch", "scanner"],
    )
    assert r.exit_code == 0, r.output
    rep = json.loads((out / "report.json").read_text())
    site, scanner = rep["batch_effects"]
    assert (site["column"], scanner["column"]) == ("site", "scanner")
    b = site["models"][THREADS]
    assert b["batch"]["probe_balanced_accuracy"] < b["batch"]["probe_chance"] + 0.25
    assert b["warning"] is None
    b = scanner["models"][THREADS]
    assert b["batch"]["probe_balanced_accuracy"] > 0.9 and b["batch"]["knn_same_share"] > 0.9
    assert b["labels"]["noise"]["probe_balanced_accuracy"] < 0.75
    assert b["warning"] and b["warning"].startswith("scanner is more predictable")
    assert (
        "batch effects" in r.output and "warning: THREADS: scanner is more predictable" in r.output
    )
    assert "## Batch effects" in (out / "report.md").read_text()
    bad = _evaluate(
        index.root, tmp_path / "labels.csv", out, "n=noise", extra=[*FAST, "--batch", "nope"]
    )
    assert bad.exit_code == 2 and "batch column 'nope' is neither in the labels" in bad.output
