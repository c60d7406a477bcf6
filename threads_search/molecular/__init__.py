"""Molecular data: RNA expression matrices, DNA mutations (MAF or binary matrix), pairs, metadata.

- ``rna``: ``read_rna_matrix`` → :class:`RnaMatrix`; ``transform_units`` (tpm/counts/log → log
  space); ``gene_names`` (vectorised Ensembl-version stripping).
- ``normalizer``: :class:`RnaNormalizer` (per-gene z-score fitted on the training set,
  vectorised vocabulary alignment).
- ``dna``: ``read_maf`` / ``maf_to_matrix`` / ``read_binary_matrix`` / ``read_dna`` → binary
  sample × gene frame; ``multi_hot`` over a panel vocabulary.
- ``tables``: ``read_pairs`` (slide ↔ sample, optionally by TCGA patient barcode) and
  ``read_metadata``.
"""

from __future__ import annotations

from threads_search.errors import InputError


class MolecularDataError(InputError):
    """A molecular input is unusable; the message names the file, sample(s) and gene(s) at fault
    (a ``ValueError`` too)."""


class RnaUnitsError(MolecularDataError):
    """RNA values do not fit their declared ``units`` (negative tpm/counts values, or a profile
    with zero total counts). ``detail``: what is wrong; ``hint``: the library's advice (Python
    argument names), appended to the message; callers with better advice use ``detail``."""

    def __init__(self, detail: str, units: str, hint: str = "") -> None:
        super().__init__(detail + (f"; {hint}" if hint else ""))
        self.detail, self.units, self.hint = detail, units, hint


class MissingGenesWarning(UserWarning):
    """Genes of the model vocabulary are absent from a profile (filled with the training mean)."""


class UnknownGenesWarning(UserWarning):
    """Genes of an input are outside the model vocabulary / panel and are ignored."""


from threads_search.molecular.dna import (  # noqa: E402
    SILENT_CLASSIFICATIONS,
    as_dna_frame,
    maf_to_matrix,
    multi_hot,
    read_binary_matrix,
    read_dna,
    read_maf,
    validate_binary_matrix,
)
from threads_search.molecular.normalizer import RnaNormalizer  # noqa: E402
from threads_search.molecular.rna import (  # noqa: E402
    RnaMatrix,
    as_rna_frame,
    read_rna_matrix,
    strip_gene_version,
    transform_units,
)
from threads_search.molecular.tables import (  # noqa: E402
    patient_barcode,
    read_metadata,
    read_pairs,
    read_table,
)

__all__ = [
    "SILENT_CLASSIFICATIONS",
    "MissingGenesWarning",
    "MolecularDataError",
    "RnaMatrix",
    "RnaNormalizer",
    "RnaUnitsError",
    "UnknownGenesWarning",
    "as_dna_frame",
    "as_rna_frame",
    "maf_to_matrix",
    "multi_hot",
    "patient_barcode",
    "read_binary_matrix",
    "read_dna",
    "read_maf",
    "read_metadata",
    "read_pairs",
    "read_rna_matrix",
    "read_table",
    "strip_gene_version",
    "transform_units",
    "validate_binary_matrix",
]
