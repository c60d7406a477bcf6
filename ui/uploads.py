"""Uploads: checked (extension, size), written to a private temporary folder, deleted after use;
and the molecular queries built from them (RNA profile, mutations, gene signature).

Single-file slide formats only: multi-file ones (MRXS, VMS/VMU, DICOM folders) cannot come
through one upload and are searched from the archive instead.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import tempfile
import weakref
from pathlib import Path

import numpy as np
import pandas as pd

from threads_search.errors import InputError

SLIDE_UPLOAD_EXTENSIONS = (".svs", ".tif", ".tiff", ".ndpi", ".scn", ".svslide", ".bif")
RNA_UPLOAD_EXTENSIONS = (".csv", ".tsv", ".txt", ".parquet")
DNA_UPLOAD_EXTENSIONS = (".maf", ".tsv", ".txt", ".csv", ".parquet")
SIGNATURE_SHIFT = 2.0  # standard deviations up/down for signature genes


class UploadError(InputError):
    """An upload was refused or could not be read; the message says which file and why (a
    ``ThreadsSearchError`` and a ``ValueError``)."""


class UploadStore:
    """A private temporary folder (mode 0700, files 0600) for one browser session's uploads.
    Files are deleted by :meth:`delete`; the folder goes when the store is garbage-collected
    (the session ended), :meth:`close` is called, or the process exits."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="threads-search-ui-"))
        os.chmod(self.dir, 0o700)
        self._finalizer = weakref.finalize(self, shutil.rmtree, str(self.dir), True)

    def save(self, name: str, data: bytes, allowed: tuple[str, ...], max_mb: int) -> Path:
        """Write an upload; refuse other extensions and files above ``max_mb`` MiB."""
        check_name(name, allowed)
        suffix = Path(name).suffix.lower()
        if len(data) > max_mb * 2**20:
            raise UploadError(
                f"{name}: {len(data) / 2**20:.0f} MiB is above the {max_mb} MiB limit"
            )
        if not data:
            raise UploadError(f"{name}: the file is empty")
        stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(name).stem)[:80] or "upload"
        path = self.dir / f"{secrets.token_hex(4)}-{stem}{suffix}"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return path

    def delete(self, path: str | Path | None) -> None:
        if path is not None:
            Path(path).unlink(missing_ok=True)

    def files(self) -> list[Path]:
        return sorted(self.dir.iterdir()) if self.dir.exists() else []

    def close(self) -> None:
        self._finalizer()


def check_name(name: str, allowed: tuple[str, ...]) -> None:
    """Refuse (``UploadError``) a file whose extension is not in ``allowed``."""
    suffix = Path(name).suffix.lower()
    if suffix not in allowed:
        raise UploadError(
            f"{name}: file type {suffix or '(none)'} is not accepted here; "
            f"use one of {', '.join(allowed)}"
        )


def refusal(upload, allowed: tuple[str, ...]) -> str | None:
    """Why an uploaded file (a Streamlit ``UploadedFile`` or None) is refused by its name, or
    None. The upload widgets accept any file so that a refused one replaces the previous file
    instead of sitting next to it; this says why it cannot be used."""
    if upload is None:
        return None
    try:
        check_name(upload.name, allowed)
    except UploadError as e:
        return str(e)
    return None


def display_name(path: str | Path) -> str:
    """The user's file name of a stored upload (without the random prefix)."""
    name = Path(path).name
    return name.split("-", 1)[1] if "-" in name else name


def scrub(message: str, path: str | Path) -> str:
    """``message`` with the private temporary path of an upload replaced by its file name."""
    return str(message).replace(str(path), display_name(path))


# -- molecular queries ----------------------------------------------------------------------
def read_rna_upload(path: Path, units: str):
    """An uploaded RNA matrix → ``RnaMatrix`` (one or more samples)."""
    from threads_search.molecular import read_rna_matrix

    try:
        return read_rna_matrix(path, units=units)
    except (ValueError, KeyError, OSError) as e:
        msg = scrub(e, path)
        raise UploadError(f"{display_name(path)}: not a readable RNA profile: {msg}") from None


def one_rna_sample(matrix, sample: str | None = None):
    """The ``RnaMatrix`` restricted to ``sample`` (or its only sample)."""
    from threads_search.molecular import RnaMatrix

    if sample is None:
        if len(matrix) != 1:
            raise UploadError(f"the RNA file holds {len(matrix)} samples; choose one")
        sample = matrix.samples[0]
    values = matrix.values.loc[[sample]]
    return RnaMatrix(values, matrix.units, matrix.metadata.loc[[sample]], [], matrix.source)


def read_dna_upload(path: Path) -> pd.DataFrame:
    """An uploaded MAF or binary matrix → binary sample x gene frame (int8, index sample_id)."""
    from threads_search.molecular import read_dna

    try:
        matrix = read_dna(path)
    except (ValueError, KeyError, OSError) as e:
        raise UploadError(
            f"{display_name(path)}: not a readable MAF or mutation matrix: {scrub(e, path)}"
        ) from None
    if matrix.empty:
        raise UploadError(f"{display_name(path)}: no sample with mutations in the file")
    return matrix


def panel_genes(genes: list[str], panel: list[str]) -> tuple[list[str], list[str]]:
    """(panel names of the mutated ``genes``, genes not in the panel). Raises ``UploadError``
    naming the panel when no gene is in it: a search on an empty mutation profile would rank
    slides by nothing."""
    found, unknown = match_genes(genes, panel)
    if not found:
        shown = ", ".join(panel[:20]) + (f", … ({len(panel)} in all)" if len(panel) > 20 else "")
        given = ", ".join(genes[:10]) + (" …" if len(genes) > 10 else "")
        raise UploadError(
            f"none of the mutated genes ({given or 'none given'}) is in the model's "
            f"{len(panel)}-gene DNA panel: {shown}. A search needs at least one panel gene."
        )
    return found, unknown


def mutated_genes(matrix: pd.DataFrame, sample) -> list[str]:
    """The genes marked mutated (non-zero) for ``sample`` in a binary sample x gene frame."""
    row = matrix.loc[sample]
    return [str(g) for g, v in row.items() if pd.notna(v) and v]


def parse_genes(text: str) -> list[str]:
    """Gene symbols from free text (commas, spaces, semicolons or new lines), order kept."""
    return list(dict.fromkeys(g for g in re.split(r"[\s,;]+", text or "") if g))


def match_genes(genes: list[str], vocabulary: list[str]) -> tuple[list[str], list[str]]:
    """(vocabulary names of ``genes`` matched case-insensitively, genes not in it)."""
    by_upper = {g.upper(): g for g in vocabulary}
    found = [by_upper[g.upper()] for g in genes if g.upper() in by_upper]
    return list(dict.fromkeys(found)), [g for g in genes if g.upper() not in by_upper]


def signature_profile(normalizer, up: list[str], down: list[str]):
    """An RNA profile (``RnaMatrix`` in log units) at the training mean for every vocabulary
    gene, ``SIGNATURE_SHIFT`` standard deviations above it for ``up`` genes and below for
    ``down`` genes. Returns (profile, unknown genes). Raises ``UploadError`` when no gene of
    the signature is in the model's vocabulary."""
    from threads_search.molecular import RnaMatrix

    genes = list(normalizer.genes)
    up_k, up_u = match_genes(up, genes)
    down_k, down_u = match_genes(down, genes)
    both = set(up_k) & set(down_k)
    if both:
        raise UploadError(f"genes listed both up and down: {', '.join(sorted(both))}")
    if not up_k and not down_k:
        ex = ", ".join(genes[:5])
        raise UploadError(
            f"none of the signature genes is in the model's {len(genes)}-gene RNA vocabulary "
            f"(e.g. {ex}); unknown: {', '.join((up_u + down_u)[:10])}"
        )
    mean, std = np.asarray(normalizer.mean, np.float64), np.asarray(normalizer.std, np.float64)
    values = pd.Series(mean.copy(), index=genes)
    pos = {g: i for i, g in enumerate(genes)}
    for g in up_k:
        values[g] = mean[pos[g]] + SIGNATURE_SHIFT * std[pos[g]]
    for g in down_k:
        values[g] = mean[pos[g]] - SIGNATURE_SHIFT * std[pos[g]]
    frame = values.to_frame("signature").T.rename_axis("sample_id")
    meta = pd.DataFrame(index=frame.index)
    return RnaMatrix(frame, "log", meta, [], "gene signature"), up_u + down_u


# -- progress of embedding an uploaded slide --------------------------------------------------
STAGES = {  # stage → (start, end) of its share of the bar, text
    "reading": (0.0, 0.05, "Reading the slide"),
    "tissue": (0.05, 0.1, "Finding tissue"),
    "patches": (0.1, 0.9, "Embedding patches"),
    "slide": (0.9, 0.95, "Embedding the slide"),
    "search": (0.95, 1.0, "Searching the index"),
}


class EmbedProgress:
    """The stages of embedding an uploaded slide (``STAGES``: reading the slide, finding
    tissue, patches n of N, embedding the slide, searching) as a fraction of the work (0..1)
    and a line of text, passed to ``show(fraction, text)`` (e.g. a progress bar's update).
    Callable as ``encode_slide_file``'s ``progress(stage, done, total)``; ``seen`` keeps each
    text shown, in order."""

    def __init__(self, show) -> None:
        self.show = show
        self.seen: list[str] = []

    def __call__(self, stage: str, done: int = 0, total: int = 1) -> None:
        lo, hi, text = STAGES[stage]
        if stage == "patches":
            text = f"{text}: {done} of {total}"
        self.seen.append(text + "…")
        self.show(lo + (hi - lo) * done / max(1, total), text + "…")
