"""A synthetic paired slide + molecular cohort with known ground truth.

Each patient has a latent state: a categorical ``subtype`` (``subtype_A``...), continuous
``programme_1..P`` (standard normal), a hospital ``site`` (``site_1``...; a mild batch effect in
every modality scaled by ``site_effect``, optionally a strong per-site stain look ``stain_shift``
and a site confounded with the subtype in chosen splits ``confound_site``; see
:func:`make_cohort`) and ``TP53_mutated`` (rate depends on the subtype). From it come an RNA profile
(TPM-like), DNA mutations (MAF rows; see :mod:`threads_search.synth.cohort_molecular`), and slides,
either as patch-feature bags (:func:`~threads_search.synth.cohort_features.write_feature_bags`)
or as painted pyramidal TIFF/SVS files
(:func:`~threads_search.synth.cohort_slides.write_slides`).

Identifiers are TCGA-shaped, so pairing by the 12-character patient barcode works:
patient ``SYNT-01-0001`` (``01`` = site), RNA sample ``SYNT-01-0001-01R``, DNA sample
``SYNT-01-0001-01D``, slides ``SYNT-01-0001-DX1``, ``-DX2``... Patients are split into
train/val/test (stratified by subtype), so every slide and sample of a patient is in one split.
Everything is deterministic from ``seed``; independent parts draw from independent streams, so
e.g. changing ``n_genes`` leaves the patients' latent states unchanged.
"""

from __future__ import annotations

import json
import string
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from threads_search.atomic import atomic_path
from threads_search.errors import ConfigError, InputError, MissingError
from threads_search.synth import cohort_molecular as mol

FORMAT = "threads-search-synthetic-cohort"
SPLITS = ("train", "val", "test")
_STREAMS = {"latent": 1, "rna_roles": 2, "rna": 3, "dna": 4, "slides": 5, "sites": 6, "survival": 7}
RNA_SITE_SD = 0.25  # natural-log sd of the per-site, per-gene RNA offset at site_effect=1


def subtype_names(n_subtypes: int) -> list[str]:
    """``subtype_A``, ``subtype_B``... (``subtype_27``... past 26)."""
    return [
        f"subtype_{string.ascii_uppercase[k]}" if n_subtypes <= 26 else f"subtype_{k + 1:02d}"
        for k in range(n_subtypes)
    ]


@dataclass
class Cohort:
    """A generated cohort. Frames:

    - ``patients``: patient_id, subtype, subtype_index, programme_1..P, site, site_index,
      TP53_mutated, split, has_rna, has_dna, n_slides, and the survival outcomes of
      :func:`add_survival` (one row per patient)
    - ``slides``: slide_id, patient_id, slide_index, signal_fraction (share of the slide's
      tissue that is tumour and carries the signal), seed, subtype, site, split
    - ``samples``: sample_id, patient_id, kind (rna|dna)
    - ``rna``: sample_id + one TPM column per gene; ``maf``: MAF rows (silent ones included)
    - ``pairs``: slide_id, sample_id, patient_id, kind — every slide × every molecular sample
      of its patient (a both-modality patient with 2 slides has 4 rows)

    ``truth``: gene roles (RNA modules per subtype, programme genes, ...), DNA panel, driver
    genes, programme-linked mutated genes and mutation rates. ``params``: the arguments of
    :func:`make_cohort`.
    """

    params: dict
    patients: pd.DataFrame = field(repr=False)
    slides: pd.DataFrame = field(repr=False)
    samples: pd.DataFrame = field(repr=False)
    rna: pd.DataFrame = field(repr=False)
    maf: pd.DataFrame = field(repr=False)
    pairs: pd.DataFrame = field(repr=False)
    truth: dict = field(repr=False)

    @property
    def seed(self) -> int:
        return int(self.params["seed"])

    @property
    def subtypes(self) -> list[str]:
        return subtype_names(int(self.params["n_subtypes"]))

    @property
    def programmes(self) -> list[str]:
        return [f"programme_{p + 1}" for p in range(int(self.params["n_programmes"]))]

    @property
    def metadata(self) -> pd.DataFrame:
        """Patient-level metadata: patient_id, subtype, programme_*, site, TP53_mutated, split,
        has_rna, has_dna, n_slides."""
        return self.patients.drop(columns=["subtype_index", "site_index"])

    def dna_matrix(self) -> pd.DataFrame:
        """Binary DNA sample × panel gene frame (int8), silent rows dropped, every panel gene a
        column (index ``sample_id``)."""
        from threads_search.molecular import maf_to_matrix

        m = maf_to_matrix(self.maf)
        return m.reindex(columns=self.truth["panel"], fill_value=0).astype(np.int8)

    def write(self, out_dir: str | Path, rna_format: str = "parquet") -> dict[str, Path]:
        """Write ``rna.parquet`` (or ``rna.csv``), ``mutations.maf`` (tab-separated, one
        ``#version`` line), ``pairs.csv``, ``metadata.csv`` (patient-level), ``slides.csv`` and
        ``cohort.json`` (params + truth), each atomically; ``cohort.json`` comes last. Returns
        the paths by name (rna, maf, pairs, metadata, slides, cohort)."""
        if rna_format not in ("parquet", "csv"):
            raise ConfigError(f"rna_format must be 'parquet' or 'csv', got {rna_format!r}")
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = {
            "rna": out / f"rna.{rna_format}",
            "maf": out / "mutations.maf",
            "pairs": out / "pairs.csv",
            "metadata": out / "metadata.csv",
            "slides": out / "slides.csv",
            "cohort": out / "cohort.json",
        }

        def atomic(path: Path, write) -> None:
            with atomic_path(path) as tmp:
                write(tmp)

        if rna_format == "parquet":
            atomic(paths["rna"], lambda p: self.rna.to_parquet(p, index=False))
        else:
            atomic(paths["rna"], lambda p: self.rna.to_csv(p, index=False))

        def maf(p: Path) -> None:
            with open(p, "w", newline="") as f:
                f.write("#version 2.4\n")
                self.maf.to_csv(f, sep="\t", index=False)

        atomic(paths["maf"], maf)
        atomic(paths["pairs"], lambda p: self.pairs.to_csv(p, index=False))
        atomic(paths["metadata"], lambda p: self.metadata.to_csv(p, index=False))
        atomic(paths["slides"], lambda p: self.slides.to_csv(p, index=False))
        doc = {"format": FORMAT, "params": self.params, "truth": self.truth}
        atomic(paths["cohort"], lambda p: p.write_text(json.dumps(doc, indent=2)))
        return paths


def load_cohort(out_dir: str | Path) -> Cohort:
    """Regenerate the cohort a :meth:`Cohort.write` folder was made from (its ``cohort.json``
    parameters; generation is deterministic)."""
    path = Path(out_dir) / "cohort.json"
    if not path.exists():
        raise MissingError(f"no cohort.json in {out_dir} (not a synthetic cohort folder)")
    doc = json.loads(path.read_text())
    if doc.get("format") != FORMAT:
        raise InputError(f"{path}: format {doc.get('format')!r} is not {FORMAT!r}")
    params = dict(doc["params"])
    keys = ("modality", "split", "signal_fraction", "slides_per_patient", "subtype_weights")
    for k in (*keys, "confound_splits"):
        if isinstance(params.get(k), list):
            params[k] = tuple(params[k])
    if "stain_shift" not in params and "site_effect" in params:
        # written before site_effect became a multiplier: it was the RNA offset sd
        params["site_effect"] = float(params["site_effect"]) / RNA_SITE_SD
    return make_cohort(**params)


def _fractions(values, n: int, what: str) -> tuple[float, ...]:
    v = tuple(float(x) for x in values)
    if len(v) != n or min(v) < 0 or abs(sum(v) - 1.0) > 1e-6:
        raise ConfigError(f"{what} must be {n} non-negative fractions summing to 1, got {values}")
    return v


def _range(values, what: str, lo: float, hi: float) -> tuple[float, float]:
    a, b = (values, values) if np.isscalar(values) else tuple(values)
    if not lo <= a <= b <= hi:
        raise ConfigError(f"{what}={values}: need {lo} <= min <= max <= {hi}")
    return float(a), float(b)


def _stratified_split(subtype: np.ndarray, fractions, rng) -> np.ndarray:
    """Per subtype, patients in random order get train/val/test by their position quantile."""
    out = np.empty(len(subtype), dtype=object)
    edges = np.cumsum(fractions)
    for k in np.unique(subtype):
        idx = np.flatnonzero(subtype == k)
        idx = idx[rng.permutation(len(idx))]
        q = (np.arange(len(idx)) + 0.5) / len(idx)
        out[idx] = np.array(SPLITS, dtype=object)[np.minimum(np.searchsorted(edges, q), 2)]
    return out


def home_site(subtype_index, n_sites: int):
    """The "home" site index of subtype index ``k``: ``k mod n_sites`` (scalar or array)."""
    return np.asarray(subtype_index) % n_sites


def _confound(site, subtype, splits, n_sites, p, confound_splits, rng) -> np.ndarray:
    """Site indices with, for patients in ``confound_splits``, the subtype's home site with
    probability ``p`` (else the uniformly drawn ``site`` kept): P(home) = p + (1 - p) / n_sites
    there, 1 / n_sites elsewhere."""
    u = rng.random(len(site))  # one draw per patient: the split does not change the stream
    take = np.isin(splits, list(confound_splits)) & (u < p)
    return np.where(take, home_site(subtype, n_sites), site)


SURVIVAL_LOG_HR = 1.5  # log hazard ratio per sd of the risk factor
SURVIVAL_FOLLOW_UP = 120.0  # months: administrative censoring


def add_survival(patients: pd.DataFrame, progs: np.ndarray, rng: np.random.Generator) -> None:
    """Add two survival outcomes (months, event 1 = death / 0 = censored) to ``patients``:

    - ``os_months`` / ``os_event``: driven by ``programme_1`` (which the slides, RNA and DNA
      show), hazard ``0.02 * exp(SURVIVAL_LOG_HR * programme_1)`` per month (no programme: no
      effect);
    - ``hidden_os_months`` / ``hidden_os_event``: the same model driven by ``hidden_risk`` (a
      standard-normal factor no modality shows, also written as a column): an embedding cannot
      predict it (c-index ~ 0.5).

    Exponential event times; censoring uniform on [0, 2 x follow-up], capped at
    ``SURVIVAL_FOLLOW_UP``. Drawn from its own stream: other columns do not change."""
    n = len(patients)
    hidden = rng.standard_normal(n)
    shown = progs[:, 0] if progs.shape[1] else np.zeros(n)
    patients["hidden_risk"] = hidden
    for name, risk in (("os", shown), ("hidden_os", hidden)):
        t = rng.exponential(1.0, n) / (0.02 * np.exp(SURVIVAL_LOG_HR * risk))
        c = np.minimum(rng.uniform(0, 2 * SURVIVAL_FOLLOW_UP, n), SURVIVAL_FOLLOW_UP)
        patients[f"{name}_months"] = np.round(np.minimum(t, c), 2)
        patients[f"{name}_event"] = (t <= c).astype(np.int64)


def make_cohort(
    n_patients: int = 150,
    n_subtypes: int = 4,
    n_programmes: int = 3,
    n_genes: int = 300,
    n_panel: int = 50,
    slides_per_patient: int | tuple[int, int] = 1,
    modality: tuple[float, float, float] = (0.8, 0.1, 0.1),
    signal_fraction: float | tuple[float, float] = (0.05, 0.3),
    noise: float = 1.0,
    n_sites: int = 3,
    split: tuple[float, float, float] = (0.7, 0.15, 0.15),
    subtype_weights: tuple[float, ...] | None = None,
    rna_effect: float = 1.5,
    rna_noise: float = 0.5,
    site_effect: float = 1.0,
    seed: int = 0,
    stain_shift: float = 0.0,
    confound_site: float = 0.0,
    confound_splits: tuple[str, ...] = ("train", "val"),
) -> Cohort:
    """Generate a cohort (see the module docstring).

    ``modality``: fractions of patients with (RNA and DNA, RNA only, DNA only), counts rounded.
    ``slides_per_patient``: a count or an inclusive (min, max) range drawn per patient.
    ``signal_fraction``: (min, max) share of each slide's tissue carrying the tumour signal, drawn
    per slide. ``noise``: patch-level noise of feature bags (difficulty; see
    ``write_feature_bags``). ``rna_effect``/``rna_noise``: subtype module up-regulation and
    per-gene noise, natural-log units. ``split``: train/val/test fractions of patients.
    ``subtype_weights``: subtype prevalences (uniform).

    Sites (``n_sites`` hospitals, a patient's site is uniform unless confounded):

    - ``site_effect`` (>= 0) scales the mild batch effect of every modality: per-site RNA offsets
      (sd ``0.25 * site_effect`` natural-log units per gene), the painted slides' stain hue and
      haematoxylin shift (``cohort_slides``) and the feature bags' site offset
      (``cohort_features``). 0 removes every site difference; DNA has none.
    - ``stain_shift`` (>= 0; 1 = strong) gives every site a fixed scanner/lab look on painted
      slides (stain vectors rotated, H and E intensities scaled, a glass/tissue tint; ranges in
      :func:`~threads_search.synth.cohort_slides.site_stain`) and, for feature bags, a per-site
      shift of every patch feature of norm ``STAIN_NORM * stain_shift``.
    - ``confound_site`` in [0, 1]: in ``confound_splits`` a patient's site is its subtype's home
      site (subtype k → site k mod n_sites) with this probability, else the uniform draw kept (so
      P(home) = p + (1 - p) / n_sites there); other splits stay uniform. The confounded sites
      come from their own random stream: latent states and splits are as without it."""
    if n_patients < 1 or n_subtypes < 2 or n_programmes < 0 or n_sites < 1:
        raise ConfigError(
            f"need n_patients >= 1, n_subtypes >= 2, n_programmes >= 0, n_sites >= 1 (got "
            f"{n_patients}, {n_subtypes}, {n_programmes}, {n_sites})"
        )
    if n_sites > 99:
        raise ConfigError(f"n_sites={n_sites}: at most 99 sites (two-digit site code)")
    modality = _fractions(modality, 3, "modality (both, rna_only, dna_only)")
    split = _fractions(split, 3, "split (train, val, test)")
    weights = _fractions(
        subtype_weights or [1.0 / n_subtypes] * n_subtypes, n_subtypes, "subtype_weights"
    )
    if not (site_effect >= 0 and stain_shift >= 0 and 0.0 <= confound_site <= 1.0):
        raise ConfigError(
            f"need site_effect >= 0, stain_shift >= 0 and 0 <= confound_site <= 1 (got "
            f"{site_effect}, {stain_shift}, {confound_site})"
        )
    confound_splits = (confound_splits,) if isinstance(confound_splits, str) else confound_splits
    bad = [s for s in confound_splits if s not in SPLITS]
    if bad:
        raise ConfigError(f"confound_splits {bad} unknown: choose from {SPLITS}")
    sig_lo, sig_hi = _range(signal_fraction, "signal_fraction", 0.0, 1.0)
    spp_lo, spp_hi = _range(slides_per_patient, "slides_per_patient", 1, 99)
    params = dict(
        n_patients=n_patients,
        n_subtypes=n_subtypes,
        n_programmes=n_programmes,
        n_genes=n_genes,
        n_panel=n_panel,
        slides_per_patient=[int(spp_lo), int(spp_hi)],
        modality=list(modality),
        signal_fraction=[sig_lo, sig_hi],
        noise=float(noise),
        n_sites=n_sites,
        split=list(split),
        subtype_weights=list(weights),
        rna_effect=rna_effect,
        rna_noise=rna_noise,
        site_effect=float(site_effect),
        seed=int(seed),
        stain_shift=float(stain_shift),
        confound_site=float(confound_site),
        confound_splits=list(confound_splits),
    )

    def stream(name: str) -> np.random.Generator:
        return np.random.default_rng([int(seed), _STREAMS[name]])

    # ---- latent state
    rng = stream("latent")
    subtype = rng.choice(n_subtypes, n_patients, p=weights)
    progs = rng.standard_normal((n_patients, n_programmes))
    site = rng.integers(0, n_sites, n_patients)
    n_rna_only = round(modality[1] * n_patients)
    n_dna_only = min(round(modality[2] * n_patients), n_patients - n_rna_only)
    order = rng.permutation(n_patients)
    has_rna = np.ones(n_patients, bool)
    has_dna = np.ones(n_patients, bool)
    has_dna[order[:n_rna_only]] = False
    has_rna[order[n_rna_only : n_rna_only + n_dna_only]] = False
    splits = _stratified_split(subtype, split, rng)
    n_slides = rng.integers(int(spp_lo), int(spp_hi) + 1, n_patients)
    if confound_site > 0 and n_sites > 1:
        site = _confound(
            site, subtype, splits, n_sites, confound_site, confound_splits, stream("sites")
        )

    rng_dna = stream("dna")
    panel = mol.panel_genes(n_panel)
    rates = mol.mutation_rates(panel, n_subtypes, rng_dna, n_programmes=n_programmes)
    mutated = mol.draw_mutations(subtype, rates["rates"], rng_dna, progs, rates["programme_cols"])

    names = subtype_names(n_subtypes)
    pids = [f"SYNT-{s + 1:02d}-{i + 1:04d}" for i, s in enumerate(site)]
    patients = pd.DataFrame(
        {"patient_id": pids, "subtype": [names[k] for k in subtype], "subtype_index": subtype}
    )
    for p in range(n_programmes):
        patients[f"programme_{p + 1}"] = progs[:, p]
    patients["site"] = [f"site_{s + 1}" for s in site]
    patients["site_index"] = site
    patients["TP53_mutated"] = mutated[:, 0]
    patients["split"] = splits
    patients["has_rna"] = has_rna
    patients["has_dna"] = has_dna
    patients["n_slides"] = n_slides
    add_survival(patients, progs, stream("survival"))

    # ---- slides
    rng_s = stream("slides")
    rows = []
    for i, pid in enumerate(pids):
        for j in range(int(n_slides[i])):
            row = dict(slide_id=f"{pid}-DX{j + 1}", patient_id=pid, slide_index=j)
            row["signal_fraction"] = float(rng_s.uniform(sig_lo, sig_hi))
            row["seed"] = int(rng_s.integers(0, 2**31 - 1))
            row.update(subtype=names[subtype[i]], site=f"site_{site[i] + 1}", split=splits[i])
            rows.append(row)
    slides = pd.DataFrame(rows)

    # ---- molecular samples
    rna_ids = [f"{pid}-01R" for pid in pids]
    dna_ids = [f"{pid}-01D" for pid in pids]
    samples = pd.DataFrame(
        [(rna_ids[i], pid, "rna") for i, pid in enumerate(pids) if has_rna[i]]
        + [(dna_ids[i], pid, "dna") for i, pid in enumerate(pids) if has_dna[i]],
        columns=["sample_id", "patient_id", "kind"],
    )
    roles = mol.gene_roles(n_genes, n_subtypes, n_programmes, stream("rna_roles"))
    rna_samples = [rna_ids[i] for i in np.flatnonzero(has_rna)]
    dna_samples = [dna_ids[i] for i in np.flatnonzero(has_dna)]
    rna = mol.make_rna(
        patients[has_rna].reset_index(drop=True),
        rna_samples,
        roles,
        stream("rna"),
        effect=rna_effect,
        noise=rna_noise,
        site_effect=RNA_SITE_SD * site_effect,
    )
    maf = mol.make_maf(mutated[has_dna], dna_samples, panel, rng_dna)

    pairs = slides[["slide_id", "patient_id"]].merge(samples, on="patient_id", how="inner")
    pairs = pairs[["slide_id", "sample_id", "patient_id", "kind"]].reset_index(drop=True)

    truth = {
        "genes": roles["genes"],
        "housekeeping": roles["housekeeping"],
        "modules": dict(zip(names, roles["modules"], strict=True)),
        "programme_genes": {f"programme_{p + 1}": g for p, g in enumerate(roles["programmes"])},
        "p53_targets": roles["p53_targets"],
        "panel": panel,
        "drivers": dict(zip(names, rates["drivers"], strict=True)),
        "programme_mutations": {
            f"programme_{p + 1}": g for p, g in enumerate(rates["programme_genes"])
        },
        "mutation_rates": {n: rates["rates"][k].round(4).tolist() for k, n in enumerate(names)},
    }
    return Cohort(params, patients, slides, samples, rna, maf, pairs, truth)
