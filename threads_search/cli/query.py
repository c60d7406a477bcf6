"""The ``search``, ``classify`` and ``info`` commands on an INDEX_DIR. ``--format table`` prints a
Rich table; ``json`` (records) and ``csv`` go to stdout, clean for scripts (messages go to
stderr). pandas and the index are imported when a command runs."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import typer

from threads_search.cli.errors import add_command
from threads_search.errors import InputError

if TYPE_CHECKING:
    import pandas as pd

Format = Literal["table", "json", "csv"]
_TECHNICAL = {
    "path",
    "mpp",
    "width",
    "height",
    "n_patches",
    "tissue_area_mm2",
    "thumbnail",
    "crop",
}
_INDEX_DIR = typer.Argument(..., help="INDEX_DIR written by `threads-search index`.")


def _emit(df: pd.DataFrame, fmt: str, title: str) -> None:
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
    import pandas as pd

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
        raise InputError(
            f"--columns: no column {', '.join(map(repr, unknown))} in the results "
            f"(columns: {', '.join(map(str, df.columns))})"
        )
    lead = [c for c in ("rank", "score") if c in df.columns and c not in want]
    return df[lead + want]


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
        raise InputError(f"{flag} {path} holds {len(samples)} samples: choose one with --sample")
    if sample not in samples:
        ex = ", ".join(map(str, samples[:5]))
        raise InputError(f"sample {sample!r} is not in {path} (samples: {ex}...)")
    return sample


def search(
    index_dir: Path = _INDEX_DIR,
    slide: str | None = typer.Option(
        None, "--slide", help="Indexed slide_id, or a slide/.h5 path."
    ),
    rna: Path | None = typer.Option(None, "--rna", help="RNA matrix file (CSV/TSV/Parquet)."),
    dna: Path | None = typer.Option(None, "--dna", help="MAF or binary mutation matrix file."),
    sample: str | None = typer.Option(
        None, "--sample", help="Sample in --rna/--dna; alone: an indexed sample_id."
    ),
    k: int = typer.Option(10, "-k", "--k", min=1, help="How many results."),
    where: str | None = typer.Option(None, "--where", help="SQL filter on metadata columns."),
    fmt: Format = typer.Option("table", "--format", help="How to print the results."),
    molecules: bool = typer.Option(
        False, "--molecules", help="With --slide: return molecular samples, not slides."
    ),
    same_patient: bool | None = typer.Option(
        None,
        "--same-patient/--no-same-patient",
        help="Keep / drop results from the query's own patient [default: dropped for "
        "--slide → slides; kept for molecule → slides and --slide --molecules, where the "
        "patient's own pair is the expected match].",
    ),
    columns: str | None = typer.Option(
        None, "--columns", help="Comma-separated result columns to show (after rank, score)."
    ),
    image: Path | None = typer.Option(
        None,
        "--image",
        help="Region search by a photo of a field (png/jpg): the indexed patches most like it, "
        "from every slide.",
    ),
    image_mpp: float | None = typer.Option(
        None,
        "--image-mpp",
        help="With --image: its µm per pixel (e.g. 0.25 for a 40x camera image) [default: "
        "0.5, said when assumed].",
    ),
    region: str | None = typer.Option(
        None,
        "--region",
        metavar="SLIDE:x,y,w,h",
        help="Region search by a region of a slide: an indexed slide_id (or a slide file) and "
        "a box in level-0 px. The region's own patches are left out.",
    ),
    per_slide: int | None = typer.Option(
        None, "--per-slide", min=1, help="With --image/--region: at most N hits per slide."
    ),
    aggregate: Literal["slide"] | None = typer.Option(
        None,
        "--aggregate",
        help="With --image/--region: rank slides, by the mean over the query patches of each "
        "one's best match in the slide.",
    ),
    checkpoint: Path | None = typer.Option(
        None,
        "--checkpoint",
        help="Weights of the index's patch encoder when it is a pretrained one (uni, "
        "conch_v15, ...): needed to encode pixels (--image, --region of a slide file, "
        "--slide FILE); the built-in hed-texture needs none.",
    ),
) -> None:
    """Find the slides nearest to a slide, an RNA profile or a DNA profile, or the regions
    most like a region (--region) or a photo of a field (--image).

    By --slide (id or path) → slides (or molecular samples with --molecules); by --rna/--dna
    profile files (+ --sample to pick a row; RNA read in the model's units) or by an indexed
    --sample id alone → slides.

    Example: threads-search search idx/ --slide TCGA-XX-0001-DX1 --where "site = 'B'"
    --columns slide_id,patient_id,subtype

    Example: threads-search search idx/ --region TCGA-XX-0001-DX1:20480,11264,1024,1024 -k 20
    --per-slide 3
    """
    from threads_search.query import open_index

    if image is not None or region is not None:
        if slide is not None or rna or dna or sample or molecules:
            raise InputError("--image/--region search regions: not with --slide/--rna/--dna")
        if image is not None and region is not None:
            raise InputError("give either --image or --region, not both")
        with _warnings_shown():
            index = open_index(index_dir, checkpoint=checkpoint)
            query = str(image) if image is not None else _parse_region(region)
            df = index.search_regions(
                query, k, where, per_slide, aggregate, image_mpp=image_mpp, crops=fmt != "table"
            )
        for note in [df.attrs.get("note")] if df.attrs.get("note") else []:
            typer.echo(f"note: {note}", err=True)
        what = "slides" if aggregate else "regions"
        title = f"{what} most like {image or region} ({df.attrs.get('query_patches')} patches)"
        _emit(_pick_columns(df, columns), fmt, title)
        return
    if image_mpp is not None or per_slide is not None or aggregate is not None:
        raise InputError("--image-mpp, --per-slide and --aggregate go with --image or --region")
    if slide is not None and (rna or dna):
        raise InputError("give either --slide or --rna/--dna, not both")
    if slide is None and not (rna or dna or sample):
        raise InputError("give --slide ID_OR_PATH, or --rna/--dna FILE [--sample ID]")
    with _warnings_shown():
        index = open_index(index_dir, checkpoint=checkpoint)
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
                    raise InputError(f"--sample {sample!r} is not an indexed molecular sample")
                q_rna = sample if "rna" in kinds else None
                q_dna = sample if "dna" in kinds else None
            df = index.search_by_molecule(q_rna, q_dna, k, where, **excl)
            title = f"nearest slides to {sample or 'the profile'}"
    _emit(_pick_columns(df, columns), fmt, title)


def classify(
    index_dir: Path = _INDEX_DIR,
    label: str = typer.Option(..., "--label", help="Metadata column holding the classes."),
    prototypes: str = typer.Option(
        "molecular", "--prototypes", help="molecular | slide (leave-one-out)."
    ),
    where: str | None = typer.Option(None, "--where", help="SQL filter choosing the slides."),
    fmt: Format = typer.Option("table", "--format", help="How to print the results."),
    min_samples: int = typer.Option(
        5, "--min-samples", min=1, help="Leave out classes with fewer prototype samples."
    ),
    kind: str | None = typer.Option(
        None, "--kind", help="rna | dna: molecular prototypes of one kind."
    ),
) -> None:
    """Zero-shot classification of slides by class prototypes (molecular prompting).

    A summary (class sizes, classes left out, accuracy when the slides carry --label) goes to
    stderr.
    """
    from rich.console import Console

    from threads_search.query import open_index

    with _warnings_shown():
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


def _parse_region(text: str):
    """``SLIDE:x,y,w,h`` → ``(slide, (x, y, w, h))``; InputError when it is not that."""
    slide, _, box = text.rpartition(":")
    parts = box.split(",")
    if not slide or len(parts) != 4 or not all(p.strip().isdigit() for p in parts):
        raise InputError(
            f"--region {text!r}: give SLIDE:x,y,w,h (a slide_id or slide file, then a box in "
            "level-0 px), e.g. S1:2048,1024,1024,1024"
        )
    return slide, tuple(int(p) for p in parts)


def info(
    index_dir: Path = _INDEX_DIR,
    fmt: Literal["table", "json"] = typer.Option("table", "--format", help="How to print it."),
    batch_column: str | None = typer.Option(
        None,
        "--batch-column",
        help="Metadata column whose batch effect to measure (site, scanner...) [default: "
        "site when the slides have it, else the TCGA tissue source site of TCGA slide ids].",
    ),
    label_column: list[str] = typer.Option(
        [], "--label-column", help="A label the embedding should encode instead (repeatable)."
    ),
    batch_effects: bool = typer.Option(
        True, "--batch-effects/--no-batch-effects", help="Measure the batch effect at all."
    ),
) -> None:
    """Show an index: model, encoder, counts, FAISS type and measured recall, build date.

    Batch effects (a second table; "batch_effects" in JSON): how well the slide embeddings
    predict --batch-column (linear-probe balanced accuracy, share of the 10 nearest slides of
    another patient with the same value, its chance level and the lift over it) beside each
    --label-column, with a warning when the batch is more predictable than every label. Shown
    by default when the slides have a `site` column (or TCGA-shaped ids); --no-batch-effects
    skips it.
    """
    from threads_search.query import open_index
    from threads_search.query.batch import default_column

    if not batch_effects and (batch_column or label_column):
        raise InputError("--no-batch-effects cannot go with --batch-column / --label-column")
    with _warnings_shown():
        index = open_index(index_dir)
        info = index.info()
        column = batch_column
        if column is None and batch_effects and len(index.slides):
            column = default_column(index.slides)
        if column is None and label_column:
            raise InputError(
                "--label-column needs a batch column: the slides have no `site` column (nor "
                "TCGA-shaped ids); name one with --batch-column"
            )
        if column is not None:
            info["batch_effects"] = index.batch_effects(column, label_column)
    if fmt == "json":
        typer.echo(json.dumps(info, indent=2, default=str))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"index {info['index_dir']}", show_header=False)
    table.add_column("key", style="bold")
    table.add_column("value")
    for key, v in _info_rows(info).items():
        table.add_row(key, "" if v is None else str(v))
    console = Console()
    console.print(table)
    if "batch_effects" in info:
        _print_batch_effects(console, info["batch_effects"])


def _print_batch_effects(console, report: dict) -> None:
    """The "batch effects" table and, in yellow, the warning."""
    from rich.table import Table

    from threads_search.eval.batch_effects import column_note

    n = report["n_measured"]
    sampled = f", a sample of {n} of {report['n_slides']} slides" if n < report["n_slides"] else ""
    table = Table(
        title="batch effects",
        caption=f"kNN: {report['k']} nearest slides (cosine), "
        f"{'other patients only' if report['exclude_same'] else 'self excluded'}{sampled}",
    )
    for col in ("column", "role", "n", "probe (chance)", "kNN same", "chance", "lift", "note"):
        table.add_column(col, no_wrap=col in ("probe (chance)", "lift"))

    def pct(v) -> str:
        return "—" if v is None else f"{v:.0%}"

    for r in report["columns"].values():
        probe = r["probe_balanced_accuracy"]
        probe = "—" if probe is None else f"{probe:.2f} ({r['probe_chance']:.2f})"
        note = column_note(r)
        table.add_row(
            r["column"],
            r["role"],
            str(r["n_used"]),
            probe,
            pct(r["knn_same_share"]),
            pct(r["knn_chance"]),
            "—" if r["knn_lift"] is None else f"{r['knn_lift']:+.2f}",
            note,
        )
    console.print(table)
    if report.get("warning"):
        console.print(f"warning: {report['warning']}", style="yellow", soft_wrap=True)


def _info_rows(info: dict) -> dict:
    model = info["model"]
    pe = model.get("patch_encoder") or {}
    rows = {
        "generation": info["generation"],
        "built": info["built"],
        "format version": info["format_version"],
        "counts": info["counts"],
        "embedding dim": info["dim"],
        "model": model.get("path") or model.get("dir"),
        "model hash": model.get("hash"),
        "slide encoder": model.get("slide_encoder"),
        "patch encoder": pe.get("name")
        and f"{pe['name']} ({pe.get('dim')}-d, "
        f"{pe.get('patch_size')} px @ {pe.get('target_mpp')} µm/px)",
        "molecular encoders": ", ".join(model.get("molecular_encoders") or []) or None,
    }
    for name, f in info["faiss"].items():
        rec = f.get("recall_at_k")
        rec = f"{rec:.3f}" if isinstance(rec, float) else rec
        rows[f"FAISS {name}"] = (
            f"{f.get('type')} {f.get('params') or ''} recall@{f.get('k')} = {rec}"
        )
        if f.get("choice"):
            rows[f"FAISS {name} chosen"] = f["choice"]
    r = info.get("regions")
    rows["region index"] = (
        f"{r['count']} patches of {r['slides']} slides, {r['dim']}-d, FAISS {r['type']}, "
        f"{r['bytes_per_patch']:.0f} bytes/patch on disk"
        if r
        else f"none, region search is off: {info.get('regions_missing')}"
    )
    if r:
        rows["region search compares"] = r["projection"]["reason"]
    rows["versions"] = info["versions"]
    return rows


@contextlib.contextmanager
def _warnings_shown():
    """Library warnings (e.g. a class left out of the prototypes) shown once each, whatever
    filters the environment set."""
    with warnings.catch_warnings():
        warnings.simplefilter("default")
        yield


def register(app: typer.Typer) -> None:
    """Add ``search``, ``classify`` and ``info`` to the Typer ``app``."""
    for command in (search, classify, info):
        add_command(app, command)
