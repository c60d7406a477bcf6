"""CLI start-up time: ``threads-search --help`` and ``--version`` (and ``train --help``, the
command with most options) against ``python -c pass`` measured in the same run.

Each command runs as a fresh process (``python -m threads_search ...`` with this checkout first
on ``PYTHONPATH``, as the ``threads-search`` console script imports the same module), ``--rounds``
times, interleaved (every round runs every command, in a rotating order) so machine load hits
them alike. Reported per command: median and min wall time (s), and the median ratio to the
baseline of the same round. Target (issue 13): ``--help`` ≤ 0.5 s. The heavy libraries a
command loads (pandas, DuckDB, pyarrow, FAISS, torch, numpy) are listed from one extra run.

Usage: python bench/cli_startup.py [--rounds 15]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import print_table, write_results  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("pandas", "duckdb", "pyarrow", "faiss", "torch", "numpy")
COMMANDS = {
    "python -c pass (baseline)": ["-c", "pass"],
    "threads-search --version": ["-m", "threads_search", "--version"],
    "threads-search --help": ["-m", "threads_search", "--help"],
    "threads-search train --help": ["-m", "threads_search", "train", "--help"],
}


def _env() -> dict:
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{path}" if path else str(ROOT)}


def _run(args: list[str]) -> float:
    t = time.perf_counter()
    subprocess.run([sys.executable, *args], env=_env(), check=True, capture_output=True, cwd=ROOT)
    return time.perf_counter() - t


def _heavy_loaded(args: list[str]) -> list[str]:
    """The heavy libraries loaded once the command has run (from ``sys.modules``)."""
    if args[:1] == ["-c"]:
        return []
    code = (
        "import json, sys\nfrom threads_search.cli import app\n"
        f"try:\n    app({args[2:]!r}, prog_name='threads-search')\nexcept SystemExit:\n    pass\n"
        f"print(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}} & {set(HEAVY)!r})))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=_env(), check=True, capture_output=True, text=True
    )
    return json.loads(out.stdout.splitlines()[-1])


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rounds", type=int, default=15)
    args = ap.parse_args(argv)
    names = list(COMMANDS)
    for name in names:  # warm the page cache and the bytecode caches
        _run(COMMANDS[name])
    times: dict[str, list[float]] = {name: [] for name in names}
    ratios: dict[str, list[float]] = {name: [] for name in names}
    for r in range(args.rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        took = {name: _run(COMMANDS[name]) for name in order}
        for name in names:
            times[name].append(took[name])
            ratios[name].append(took[name] / took[names[0]])
    rows = [
        {
            "command": name,
            "median s": statistics.median(times[name]),
            "min s": min(times[name]),
            "x baseline": statistics.median(ratios[name]),
            "heavy modules": ", ".join(_heavy_loaded(COMMANDS[name])) or "none",
        }
        for name in names
    ]
    print_table(f"CLI start-up, {args.rounds} interleaved rounds (fresh process each)", rows)
    help_s = rows[names.index("threads-search --help")]["median s"]
    print(f"threads-search --help: {help_s:.3f} s median (target ≤ 0.5 s)")
    out = write_results("cli_startup", {"args": vars(args), "rows": rows, "times": times})
    print(f"wrote {out}")
    return {"rows": rows}


if __name__ == "__main__":
    main()
