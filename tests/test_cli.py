"""The CLI as one package: every command in --help in one style (``train`` included), a fast
start that imports nothing heavy, ``--version``, and one error handling — a ThreadsSearchError
is one line and exit code 2, anything else a bug shown with its traceback (exit code 1)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from threads_search._version import __version__
from threads_search.cli import app
from threads_search.errors import InputError
from trainer.cli import main as train_main

ROOT = Path(__file__).resolve().parent.parent
HEAVY = {"pandas", "duckdb", "pyarrow", "faiss", "torch", "numpy", "h5py", "tqdm"}
COMMANDS = [
    "demo",
    "features",
    "encoders",
    "train",
    "index",
    "search",
    "classify",
    "info",
    "ui",
    "evaluate",
    "export",
]
TRAIN_OPTIONS = [
    "--features",
    "--pairs",
    "--rna",
    "--rna-units",
    "--dna",
    "--metadata",
    "--pair-by",
    "--out",
    "--slide-encoder",
    "--heads",
    "--head-dim",
    "--attn-dim",
    "--dropout",
    "--bag-by",
    "--epochs",
    "--batch-size",
    "--max-patches",
    "--lr",
    "--weight-decay",
    "--warmup-epochs",
    "--accum-steps",
    "--grad-clip",
    "--temperature",
    "--val-fraction",
    "--min-train-items",
    "--select-metric",
    "--patience",
    "--seed",
    "--device",
    "--threads",
    "--resume",
    "--stop-after-epochs",
    "--quiet",
]


def _python(code: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT, timeout=120
    )


def test_help_and_version_import_nothing_heavy():
    """`--help`, `--version` and each command's `--help` load no pandas, DuckDB, pyarrow, FAISS,
    torch or numpy (before: pandas and pyarrow came with the query commands' module)."""
    runs = [["--version"], ["--help"]] + [[c, "--help"] for c in COMMANDS]
    code = f"""
import json, sys
from threads_search.cli import app
codes = []
for args in {runs!r}:
    try:
        app(args, prog_name="threads-search")
    except SystemExit as e:
        codes.append(e.code)
heavy = sorted(m for m in sys.modules if m.split(".")[0] in {sorted(HEAVY)!r})
print(json.dumps({{"codes": codes, "heavy": heavy}}))
"""
    res = _python(code)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0] == __version__
    got = json.loads(lines[-1])
    assert got["codes"] == [0] * len(runs)
    assert got["heavy"] == []


def test_version_option_prints_the_version():
    """`threads-search --version` prints the version (before: "Missing command", exit 2)."""
    res = _python(
        "import sys; sys.argv = ['threads-search', '--version']\nfrom threads_search.cli import main; main()"
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == __version__


def test_every_command_is_listed_and_train_help_shows_every_option_in_panels():
    runner = CliRunner()
    res = runner.invoke(app, ["--help"], env={"COLUMNS": "200"})
    assert res.exit_code == 0
    for name in COMMANDS:
        assert f" {name} " in res.output, name
    res = runner.invoke(app, ["train", "--help"], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    out = res.output
    for option in TRAIN_OPTIONS:
        assert f" {option} " in out, option
    for panel in ("Inputs and output", "Model", "Training"):  # rich panels, as every command
        assert f"╭─ {panel} ─" in out, panel
    assert (
        "[default: 20]" in out and "[default: tpm]" in out and "[default: val_mean_recall]" in out
    )
    assert "Model selection" in out and "checkpoints/state.pt" in out  # the epilog
    # The query commands come in the same style (one registration for every command).
    res = runner.invoke(app, ["search", "--help"], env={"COLUMNS": "200"})
    assert res.exit_code == 0 and "╭─ Options ─" in res.output and "table|json|csv" in res.output


def test_train_main_runs_the_typer_command():
    assert train_main(["--help"]) == 0
    assert train_main(["--features", "x"]) == 2  # a missing option: usage error, exit code 2


@pytest.fixture
def info_fails(monkeypatch):
    """``threads-search info`` whose index opening raises the exception given."""

    def fail_with(error: BaseException) -> None:
        def open_index(*args, **kwargs):
            raise error

        monkeypatch.setattr("threads_search.query.open_index", open_index)

    return fail_with


def test_a_threads_search_error_is_one_line_and_exit_code_2(info_fails):
    info_fails(InputError("index [bold]x[/bold] was made with units='log'; " + "word " * 40))
    res = CliRunner().invoke(app, ["info", "somewhere"], env={"COLUMNS": "80"})
    assert res.exit_code == 2
    assert res.stderr.count("\n") == 1 and "Traceback" not in res.stderr
    # rich markup in the message is printed as is; library words become the CLI's flag
    assert res.stderr.startswith("error: index [bold]x[/bold] was made with --rna-units log;")


@pytest.mark.parametrize("error", [RuntimeError("boom"), ValueError("boom"), KeyError("boom")])
def test_any_other_exception_is_a_bug_with_exit_code_1(info_fails, error):
    """Before, ``info`` reported a ValueError as a user error (exit code 2, one line)."""
    info_fails(error)
    res = CliRunner().invoke(app, ["info", "somewhere"])
    assert res.exit_code == 1
    assert type(res.exception) is type(error)
    assert "error:" not in res.stderr


def test_a_bug_prints_its_traceback():
    code = """
import sys
import threads_search.query
def open_index(*args, **kwargs):
    raise ValueError("an internal invariant broke")
threads_search.query.open_index = open_index
sys.argv = ["threads-search", "info", "somewhere"]
from threads_search.cli import main
main()
"""
    res = _python(code)
    assert res.returncode == 1
    assert "Traceback" in res.stderr and "an internal invariant broke" in res.stderr
    assert "error:" not in res.stderr


def test_train_main_reports_user_errors_and_raises_bugs(monkeypatch, capsys, tmp_path):
    args = ["--features", str(tmp_path), "--pairs", "p.csv", "--out", str(tmp_path / "m")]
    assert train_main([*args, "--rna", "r.csv", "--slide-encoder", "nope"]) == 2
    assert "--slide-encoder 'nope': use one of mean, threads" in capsys.readouterr().err
    assert train_main([*args, "--rna", "r.csv"]) == 2  # no config.json: not a FEATURES_DIR
    assert "is not a FEATURES_DIR" in capsys.readouterr().err

    def broken(*a, **k):
        raise ValueError("a bug")

    monkeypatch.setattr("trainer.loop.train", broken)
    with pytest.raises(ValueError, match="a bug"):  # before: "error: a bug", exit code 2
        train_main([*args, "--rna", "r.csv"])


def test_bad_choices_are_usage_errors():
    runner = CliRunner()
    for args in (
        ["search", "idx", "--slide", "a", "--format", "xml"],
        ["info", "idx", "--format", "csv"],
        ["features", "s.svs", "--out", "f", "--dtype", "float64"],
        ["features", "s.svs", "--out", "f", "--patch-encoder", "nope"],
        ["features", "--out", "f"],
    ):
        res = runner.invoke(app, args, env={"COLUMNS": "200"})
        assert res.exit_code == 2, (args, res.output)
        assert "Traceback" not in res.output and "Usage:" in res.output, args


def test_nothing_imports_tqdm():
    """Progress is rich only."""
    folders = ("threads_search", "indexer", "trainer", "ui", "bench")
    sources = [p for d in folders for p in (ROOT / d).rglob("*.py")]
    users = [str(p) for p in sources if "import tqdm" in (t := p.read_text()) or "from tqdm" in t]
    assert users == []
