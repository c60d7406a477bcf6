"""The ``search``, ``classify`` and ``info`` CLI commands: plain functions returning an exit code
(0 ok, 2 error with a readable message on stderr) and ``register(app)`` adding them to a Typer
app. ``--format table`` prints a Rich table; ``json`` (records) and ``csv`` go to stdout, clean
for scripts (messages go to stderr)."""

from __future__ import annotations

import dataclasses
import json
import warnings
from collections.abc import Callable
from pathlib import Path

import pandas as pd

FORMATS = ("table", "json", "csv")
_TECHNICAL = {"path", "mpp", "width", "height", "n_patches", "tissue_area_mm2", "thumbnail"}


def _errors() -> tuple[type[BaseException], ...]:
    from threads_search.molecular import MolecularDataError
    from threads_search.vectorstore.store import IndexNotFoundError

    return (ValueError, FileNotFoundError, IndexNotFoundError, MolecularDataError, OSError)


# Library messages name Python arguments; a CLI user sees the flag that does the same thing
# (or no advice where the CLI has no such flag).
_CLI_WORDS = [
    (r"\bunits='(tpm|counts|log)'", r"--rna-units \1"),
    (r"\bpair_by='(sample|patient)'", r"--pair-by \1"),
    (r"\bexclude_same_patient=True\b", "--no-same-patient"),
    (r"\bexclude_same_patient=False\b", "--same-patient"),
    (r"\bmin_samples\b", "--min-samples"),
    (r"\bprototypes must be", "--prototypes must be"),
    (r"\bkind must be 'rna', 'dna' or None", "--kind must be rna or dna"),
    (r"\bk must be >= 1", "-k must be >= 1"),
    (r" or pass id_column=", ""),
    (r"; pass model= to open_index", "; re-run `threads-search index` to record one"),
]


def cli_message(message: str) -> str:
    """``message`` (a library error) in CLI words: ``units='log'`` → ``--rna-units log``,
    ``min_samples`` → ``--min-samples``, ``exclude_same_patient=False`` → ``--same-patient``;
    advice naming an argument the CLI does not have is dropped."""
    import re

    for pattern, repl in _CLI_WORDS:
        message = re.sub(pattern, repl, message)
    return message


def _guarded(fn: Callable[[], int]) -> int:
    from rich.console import Console
    from rich.markup import escape

    err = Console(stderr=True)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("default")
            return fn()
    except _errors() as e:
        msg = escape(cli_message(str(e)))
        err.print(f"[red]error:[/red] {msg}", highlight=False, markup=True, soft_wrap=True)
        return 2


def _emit(df: pd.DataFrame, fmt: str, title: str) -> None:
    import typer

    if fmt == "json":
        typer.echo(df.to_json(orient="records", force_ascii=False))
    elif fmt == "csv":
        typer.echo(df.to_csv(index=False), nl=False)
    else:
        from rich.console import Console
        from rich.table import Table

        table = Table(title=title)
        cols = [c for c in df.columns if c not in _TECHNICAL]
        for c in cols:
            table.add_column(str(c), justify="right" if c in ("rank", "score") else "left")
        for row in df[cols].itertuples(index=False):
            table.add_row(*[_cell(v) for v in row])
        Console().print(table)


def _cell(v) -> str:
    if isinstance(v, float):
        return "" if pd.isna(v) else f"{v:.4f}"
    return "" if v is None or (not isinstance(v, (list, dict)) and pd.isna(v)) else str(v)


def _pick_columns(df: pd.DataFrame, columns: str | None) -> pd.DataFrame:
    """``df`` limited to ``rank``, ``score`` and the comma-separated ``columns`` (in order)."""
    if not columns:
        return df
    want = [c.strip() for c in columns.split(",") if c.strip()]
    unknown = [c for c in want if c not in df.columns]
    if unknown:
        raise ValueError(
            f"--columns: no column {', '.join(map(repr, unknown))} in the results "
            f"(columns: {', '.join(map(str, df.columns))})"
        )
    lead = [c for c in ("rank", "score") if c in df.columns and c not in want]
    return df[lead + want]


def _check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise ValueError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")


def _rna_profile(path: Path, sample: str | None, units: str):
    """One sample of an RNA matrix file, read in ``units`` (the index's model's)."""
    from threads_search.molecular import read_rna_matrix

    m = read_rna_matrix(path, units=units)
    sid = _pick_sample(m.samples, sample, path, "--rna")
    return dataclasses.replace(m, values=m.values.loc[[sid]], metadata=m.metadata.loc[[sid]])


def _dna_profile(path: Path, sample: str | None):
    from threads_search.molecular import read_dna

    frame = read_dna(path)
    return frame.loc[_pick_sample(list(frame.index), sample, path, "--dna")]


def _pick_sample(samples: list, sample: str | None, path: Path, flag: str) -> str:
    if sample is None:
        if len(samples) == 1:
            return samples[0]
        raise ValueError(f"{flag} {path} holds {len(samples)} samples: choose one with --sample")
    if sample not in samples:
        ex = ", ".join(map(str, samples[:5]))
        raise ValueError(f"sample {sample!r} is not in {path} (samples: {ex}...)")
    return sample


def search_command(
    index_dir: Path, slide: str | None = None, rna: Path | None = None, dna: Path | None = None,
    sample: str | None = None, k: int = 10, where: str | None = None, fmt: str = "table",
    molecules: bool = False, same_patient: bool | None = None, columns: str | None = None,
) -> int:  # fmt: skip
    """``search``: by ``slide`` (id or path) → slides (or molecular samples with ``molecules``);
    by ``rna``/``dna`` profile files (+ ``sample`` to pick a row; RNA read in the model's units)
    or by an indexed ``sample`` id alone → slides. ``same_patient``: True keeps, False drops the
    query patient's own results; None: the API's default (dropped for slide → slide, kept for
    the cross-modal searches, where the patient's own pair is the expected match). ``columns``
    (comma-separated) keeps only those result columns, after ``rank`` and ``score``."""

    def run() -> int:
        from threads_search.query import open_index

        _check_format(fmt)
        if slide is not None and (rna or dna):
            raise ValueError("give either --slide or --rna/--dna, not both")
        if slide is None and not (rna or dna or sample):
            raise ValueError("give --slide ID_OR_PATH, or --rna/--dna FILE [--sample ID]")
        index = open_index(index_dir)
        excl = {} if same_patient is None else {"exclude_same_patient": not same_patient}
        if slide is not None:
            if molecules:
                df = index.search_molecules(slide, k, where, **excl)
            else:
                df = index.search_slides(slide, k, where, **excl)
            title = f"nearest {'molecular samples' if molecules else 'slides'} to {slide}"
        else:
            if rna or dna:
                q_rna = _rna_profile(rna, sample, index.model.rna_units) if rna else None
                q_dna = _dna_profile(dna, sample) if dna else None
            else:  # an indexed sample id: every kind it was indexed as
                kinds = set(index.molecular.loc[index.molecular["sample_id"] == sample, "kind"])
                if not kinds:
                    raise ValueError(f"--sample {sample!r} is not an indexed molecular sample")
                q_rna = sample if "rna" in kinds else None
                q_dna = sample if "dna" in kinds else None
            df = index.search_by_molecule(q_rna, q_dna, k, where, **excl)
            title = f"nearest slides to {sample or 'the profile'}"
        _emit(_pick_columns(df, columns), fmt, title)
        return 0

    return _guarded(run)


def classify_command(
    index_dir: Path, label: str, prototypes: str = "molecular", where: str | None = None,
    fmt: str = "table", min_samples: int = 5, kind: str | None = None,
) -> int:  # fmt: skip
    """``classify``: zero-shot prototypes of metadata column ``label`` (see
    ``Index.classify``); a summary (class sizes, excluded classes, accuracy when the slides
    carry ``label``) goes to stderr."""

    def run() -> int:
        from rich.console import Console

        from threads_search.query import open_index

        _check_format(fmt)
        df = open_index(index_dir).classify(label, prototypes, where, None, min_samples, kind)
        _emit(df, fmt, f"{label} by {prototypes} prototypes")
        err = Console(stderr=True)
        sizes = ", ".join(f"{c}: {n}" for c, n in df.attrs["class_sizes"].items())
        err.print(f"class sizes ({prototypes} prototypes): {sizes}", highlight=False)
        if df.attrs["excluded_classes"]:
            err.print(f"left out (< {min_samples}): {df.attrs['excluded_classes']}")
        if label in df.columns and df[label].notna().any():
            known = df[df[label].notna()]
            acc = float((known["predicted"].astype(str) == known[label].astype(str)).mean())
            err.print(f"accuracy on {len(known)} labelled slides: {acc:.3f}", highlight=False)
        return 0

    return _guarded(run)


def info_command(index_dir: Path, fmt: str = "table") -> int:
    """``info``: model, encoder, counts, FAISS type and measured recall, build date,
    generation."""

    def run() -> int:
        import typer

        from threads_search.query import open_index

        if fmt not in ("table", "json"):
            raise ValueError(f"--format must be table or json, got {fmt!r}")
        info = open_index(index_dir).info()
        if fmt == "json":
            typer.echo(json.dumps(info, indent=2, default=str))
            return 0
        from rich.console import Console
        from rich.table import Table

        table = Table(title=f"index {info['index_dir']}", show_header=False)
        table.add_column("key", style="bold")
        table.add_column("value")
        model = info["model"]
        pe = model.get("patch_encoder") or {}
        rows = {
            "generation": info["generation"], "built": info["built"],
            "format version": info["format_version"], "counts": info["counts"],
            "embedding dim": info["dim"], "model": model.get("path") or model.get("dir"),
            "model hash": model.get("hash"), "slide encoder": model.get("slide_encoder"),
            "patch encoder": pe.get("name") and f"{pe['name']} ({pe.get('dim')}-d, "
            f"{pe.get('patch_size')} px @ {pe.get('target_mpp')} µm/px)",
            "molecular encoders": ", ".join(model.get("molecular_encoders") or []) or None,
        }  # fmt: skip
        for name, f in info["faiss"].items():
            rec = f.get("recall_at_k")
            rec = f"{rec:.3f}" if isinstance(rec, float) else rec
            rows[f"FAISS {name}"] = f"{f.get('type')} {f.get('params') or ''} recall@{f.get('k')}" \
                f" = {rec}"  # fmt: skip
        rows["versions"] = info["versions"]
        for key, v in rows.items():
            table.add_row(key, "" if v is None else str(v))
        Console().print(table)
        return 0

    return _guarded(run)


def register(app) -> None:
    """Add ``search``, ``classify`` and ``info`` to the Typer ``app``."""
    import typer

    @app.command("search")
    def search(
        index_dir: Path = typer.Argument(..., help="INDEX_DIR written by `threads-search index`."),
        slide: str = typer.Option(None, "--slide", help="Indexed slide_id, or a slide/.h5 path."),
        rna: Path = typer.Option(None, "--rna", help="RNA matrix file (CSV/TSV/Parquet)."),
        dna: Path = typer.Option(None, "--dna", help="MAF or binary mutation matrix file."),
        sample: str = typer.Option(
            None, "--sample", help="Sample in --rna/--dna; alone: an indexed sample_id."
        ),
        k: int = typer.Option(10, "-k", "--k", min=1, help="How many results."),
        where: str = typer.Option(None, "--where", help="SQL filter on metadata columns."),
        fmt: str = typer.Option("table", "--format", help="table | json | csv"),
        molecules: bool = typer.Option(
            False, "--molecules", help="With --slide: return molecular samples, not slides."
        ),
        same_patient: bool = typer.Option(
            None,
            "--same-patient/--no-same-patient",
            help="Keep / drop results from the query's own patient [default: dropped for "
            "--slide → slides; kept for molecule → slides and --slide --molecules, where the "
            "patient's own pair is the expected match].",
        ),
        columns: str = typer.Option(
            None, "--columns", help="Comma-separated result columns to show (after rank, score)."
        ),
    ) -> None:
        """Find the slides nearest to a slide, an RNA profile or a DNA profile.

        Example: threads-search search idx/ --slide TCGA-XX-0001-DX1 --where "site = 'B'"
        --columns slide_id,patient_id,subtype
        """
        raise typer.Exit(
            search_command(
                index_dir, slide, rna, dna, sample, k, where, fmt, molecules, same_patient, columns
            )  # fmt: skip
        )

    @app.command("classify")
    def classify(
        index_dir: Path = typer.Argument(..., help="INDEX_DIR written by `threads-search index`."),
        label: str = typer.Option(..., "--label", help="Metadata column holding the classes."),
        prototypes: str = typer.Option(
            "molecular", "--prototypes", help="molecular | slide (leave-one-out)."
        ),
        where: str = typer.Option(None, "--where", help="SQL filter choosing the slides."),
        fmt: str = typer.Option("table", "--format", help="table | json | csv"),
        min_samples: int = typer.Option(
            5, "--min-samples", min=1, help="Leave out classes with fewer prototype samples."
        ),
        kind: str = typer.Option(
            None, "--kind", help="rna | dna: molecular prototypes of one kind."
        ),
    ) -> None:
        """Zero-shot classification of slides by class prototypes (molecular prompting)."""
        raise typer.Exit(
            classify_command(index_dir, label, prototypes, where, fmt, min_samples, kind)
        )

    @app.command("info")
    def info(
        index_dir: Path = typer.Argument(..., help="INDEX_DIR written by `threads-search index`."),
        fmt: str = typer.Option("table", "--format", help="table | json"),
    ) -> None:
        """Show an index: model, encoder, counts, FAISS type and measured recall, build date."""
        raise typer.Exit(info_command(index_dir, fmt))
