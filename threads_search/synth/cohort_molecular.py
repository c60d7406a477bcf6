"""RNA expression and DNA mutations of a synthetic cohort, drawn from each patient's latent state.

RNA (TPM-like, positive): ``log TPM[g] = base[g] + effect * [g in module(subtype)]
+ sum_p programme_p * loading[p, g] + tp53_effect * [g in p53 targets] * TP53_mutated
+ site_offset[site, g] + noise * N(0, 1)``. Gene roles: house-keeping genes (high, stable), one
module per subtype (up-regulated in that subtype), programme genes (loadings on the continuous
programmes), a few p53 targets (down when TP53 is mutated) and pure noise genes.

DNA (MAF rows): per patient each panel gene is mutated with a subtype-dependent probability
(``base`` rate, raised for the subtype's driver genes; TP53 has its own per-subtype rate and is
the patient's ``TP53_mutated`` truth); three genes per continuous programme are mutated more
often the higher the programme. A mutated gene gets one non-silent row (sometimes two); any
panel gene can also get passenger rows of a silent class (``Silent``, ``Intron``,
``3'UTR``, ``5'UTR``) that a loader must drop. Every DNA sample has at least one row (a silent
one if it carries no mutation), so a MAF reader sees it as sequenced.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from threads_search.errors import ConfigError

HOUSEKEEPING = ["ACTB", "GAPDH", "RPLP0", "TBP", "B2M", "PGK1", "HPRT1", "PPIA", "GUSB", "YWHAZ"]
MODULE_SYMBOLS = [  # real-looking symbols placed first in each subtype module (A, B, C, D)
    ["ESR1", "PGR", "FOXA1", "XBP1"],
    ["ERBB2", "GRB7", "STARD3"],
    ["KRT5", "KRT14", "KRT17", "SOX10"],
    ["MKI67", "TOP2A", "CCNB1", "AURKA"],
]
PROGRAMME_SYMBOLS = [  # programme_1 immune, programme_2 stromal, programme_3 hypoxia-like
    ["PTPRC", "CD3E", "CD8A", "CD19"],
    ["COL1A1", "COL3A1", "VIM", "FAP"],
    ["VEGFA", "CA9", "SLC2A1"],
]
P53_TARGETS = ["CDKN1A", "MDM2", "BAX", "FAS", "GADD45A", "TP53I3"]
PANEL = [  # real cancer genes, TP53 first
    "TP53",
    "PIK3CA",
    "KRAS",
    "PTEN",
    "APC",
    "BRAF",
    "EGFR",
    "CDH1",
    "GATA3",
    "MAP3K1",
    "ARID1A",
    "KMT2D",
    "KMT2C",
    "NF1",
    "RB1",
    "CDKN2A",
    "SMAD4",
    "FBXW7",
    "CTNNB1",
    "NRAS",
    "IDH1",
    "ATM",
    "BRCA1",
    "BRCA2",
    "ERBB3",
    "NOTCH1",
    "FGFR3",
    "KEAP1",
    "STK11",
    "SPOP",
    "CHD4",
    "AKT1",
    "MTOR",
    "TSC1",
    "VHL",
    "PBRM1",
    "SETD2",
    "BAP1",
    "NFE2L2",
    "RNF43",
    "TCF7L2",
    "SOX9",
    "ACVR2A",
    "CIC",
    "FUBP1",
    "ATRX",
    "POLE",
    "RUNX1",
    "CBFB",
    "TBX3",
]
NON_SILENT = {  # classification: (weight, Variant_Type)
    "Missense_Mutation": (0.60, "SNP"),
    "Nonsense_Mutation": (0.12, "SNP"),
    "Frame_Shift_Del": (0.10, "DEL"),
    "Frame_Shift_Ins": (0.05, "INS"),
    "Splice_Site": (0.06, "SNP"),
    "In_Frame_Del": (0.04, "DEL"),
    "In_Frame_Ins": (0.03, "INS"),
}
SILENT = {"Silent": 0.7, "Intron": 0.1, "3'UTR": 0.1, "5'UTR": 0.1}
_AA = "ACDEFGHIKLMNPQRSTVWY"


def gene_roles(n_genes: int, n_subtypes: int, n_programmes: int, rng) -> dict:
    """Names and roles of the RNA genes (matrix column order = ``genes``): ``housekeeping``,
    ``modules`` (one list per subtype), ``programmes`` (one list per programme),
    ``p53_targets``, ``noise``; each about 5 / 8 / 8 / 2 % of ``n_genes`` (rest noise)."""
    n_house = max(2, round(0.05 * n_genes))
    n_mod = max(3, round(0.08 * n_genes))
    n_prog = max(3, round(0.08 * n_genes))
    n_p53 = min(len(P53_TARGETS), max(2, round(0.02 * n_genes)))
    need = n_house + n_subtypes * n_mod + n_programmes * n_prog + n_p53
    if need > n_genes:
        raise ConfigError(
            f"n_genes={n_genes} too small for {n_subtypes} subtype modules and {n_programmes} "
            f"programmes (needs at least {need}; try n_genes={int(need / 0.8) + 1})"
        )
    counter = iter(range(1, 10**7))

    def names(k: int, symbols: list[str]) -> list[str]:
        return [symbols[i] if i < len(symbols) else f"GENE{next(counter):04d}" for i in range(k)]

    roles = {
        "housekeeping": names(n_house, HOUSEKEEPING),
        "modules": [
            names(n_mod, MODULE_SYMBOLS[k] if k < len(MODULE_SYMBOLS) else [])
            for k in range(n_subtypes)
        ],
        "programmes": [
            names(n_prog, PROGRAMME_SYMBOLS[p] if p < len(PROGRAMME_SYMBOLS) else [])
            for p in range(n_programmes)
        ],
        "p53_targets": P53_TARGETS[:n_p53],
    }
    roles["noise"] = names(n_genes - need, [])
    genes = (
        roles["housekeeping"]
        + [g for m in roles["modules"] for g in m]
        + [g for m in roles["programmes"] for g in m]
        + roles["p53_targets"]
        + roles["noise"]
    )
    roles["genes"] = [genes[i] for i in rng.permutation(len(genes))]
    return roles


def make_rna(
    patients: pd.DataFrame,
    sample_ids: list[str],
    roles: dict,
    rng,
    effect: float = 1.5,
    noise: float = 0.5,
    site_effect: float = 0.25,
    tp53_effect: float = 1.0,
) -> pd.DataFrame:
    """TPM-like matrix: ``sample_id`` + one float column per gene (``roles['genes']`` order);
    ``patients`` rows align with ``sample_ids`` (natural-log effects, see module docstring).
    ``site_effect``: sd of the per-site, per-gene offsets (0: none; the stream is consumed the
    same either way, so the other draws do not change)."""
    genes = roles["genes"]
    col = {g: i for i, g in enumerate(genes)}
    n, g = len(patients), len(genes)
    base = rng.normal(1.5, 1.2, g)
    sd = np.full(g, noise)
    house = [col[x] for x in roles["housekeeping"]]
    base[house] = rng.normal(6.0, 0.5, len(house))
    sd[house] = 0.1 * noise
    n_sites = int(patients["site_index"].max()) + 1 if n else 1
    site_off = rng.normal(0.0, site_effect, (max(n_sites, 1), g))
    prog_cols = [c for c in patients.columns if c.startswith("programme_")]
    loadings = np.zeros((len(prog_cols), g))
    for p, members in enumerate(roles["programmes"]):
        idx = [col[x] for x in members]
        loadings[p, idx] = rng.choice([-1.0, 1.0], len(idx), p=[0.25, 0.75]) * rng.uniform(
            0.4, 0.9, len(idx)
        )
    member = np.zeros((len(roles["modules"]), g))
    for k, members in enumerate(roles["modules"]):
        member[k, [col[x] for x in members]] = effect * rng.uniform(0.7, 1.3, len(members))
    p53 = np.zeros(g)
    p53[[col[x] for x in roles["p53_targets"]]] = -tp53_effect

    sub = patients["subtype_index"].to_numpy()
    logx = base + member[sub] + site_off[patients["site_index"].to_numpy()]
    if len(prog_cols):
        logx = logx + patients[prog_cols].to_numpy() @ loadings
    logx = logx + np.outer(patients["TP53_mutated"].to_numpy(float), p53)
    logx = logx + rng.standard_normal((n, g)) * sd
    tpm = np.round(np.exp(logx), 3)
    df = pd.DataFrame(tpm, columns=genes)
    df.insert(0, "sample_id", list(sample_ids))
    return df


def panel_genes(n_panel: int) -> list[str]:
    """``n_panel`` gene symbols, TP53 first (real cancer genes, then ``PANEL0051``...)."""
    if n_panel < 2:
        raise ConfigError(f"n_panel={n_panel}: the DNA panel needs at least 2 genes (TP53 + one)")
    return [PANEL[i] if i < len(PANEL) else f"PANEL{i + 1:04d}" for i in range(n_panel)]


def mutation_rates(
    panel: list[str], n_subtypes: int, rng, n_drivers: int = 3, n_programmes: int = 0
) -> dict:
    """Per-subtype mutation probabilities ``rates`` ``[n_subtypes, n_panel]``, ``drivers``
    (per subtype, the non-TP53 genes with raised rates; TP53 rate falls from 0.75 to 0.05) and
    ``programme_genes`` (per programme, three further genes mutated at a 0.2 base rate whose
    log-odds rise by ``PROGRAMME_EFFECT`` per standard deviation of the programme: the
    pathway a programme reflects is hit more often when it is active), with their panel
    column indices as ``programme_cols``."""
    base = rng.uniform(0.01, 0.06, len(panel))
    rates = np.tile(base, (n_subtypes, 1))
    others = rng.permutation(np.arange(1, len(panel)))
    k_drv = max(1, min(n_drivers, len(others) // max(n_subtypes, 1)))
    drivers = []
    for k in range(n_subtypes):
        idx = others[k * k_drv : (k + 1) * k_drv] if (k + 1) * k_drv <= len(others) else []
        rates[k, idx] = rng.uniform(0.35, 0.55, len(idx))
        drivers.append([panel[i] for i in idx])
    rates[:, 0] = np.linspace(0.75, 0.05, n_subtypes) if n_subtypes > 1 else 0.4
    free = others[n_subtypes * k_drv :]
    prog_cols = [free[3 * p : 3 * p + 3].tolist() for p in range(n_programmes)]
    for idx in prog_cols:
        rates[:, idx] = 0.2
    prog_genes = [[panel[i] for i in idx] for idx in prog_cols]
    return {
        "rates": rates,
        "drivers": drivers,
        "programme_genes": prog_genes,
        "programme_cols": prog_cols,
    }


PROGRAMME_EFFECT = 2.0  # log-odds per programme standard deviation


def draw_mutations(
    subtypes: np.ndarray,
    rates: np.ndarray,
    rng,
    programmes: np.ndarray | None = None,
    programme_genes: list[list[int]] | None = None,
) -> np.ndarray:
    """bool ``[n_patients, n_panel]``: which panel genes each patient's tumour carries.
    ``programmes`` ``[n_patients, P]`` and ``programme_genes`` (panel column indices per
    programme) raise the log-odds of those genes by ``PROGRAMME_EFFECT`` per unit."""
    p = rates[subtypes].copy()
    for k, cols in enumerate(programme_genes or []):
        logit = np.log(p[:, cols] / (1 - p[:, cols]))
        p[:, cols] = 1 / (1 + np.exp(-(logit + PROGRAMME_EFFECT * programmes[:, [k]])))
    return rng.random(p.shape) < p


def make_maf(
    mutated: np.ndarray, sample_ids: list[str], panel: list[str], rng, silent_rate: float = 0.04
) -> pd.DataFrame:
    """MAF rows for the DNA samples (``mutated`` rows align with ``sample_ids``): columns
    ``Hugo_Symbol``, ``Chromosome``, ``Start_Position``, ``Variant_Classification``,
    ``Variant_Type``, ``Tumor_Sample_Barcode``, ``HGVSp_Short``."""
    ns_names = list(NON_SILENT)
    ns_p = np.array([NON_SILENT[c][0] for c in ns_names])
    s_names = list(SILENT)
    s_p = np.array(list(SILENT.values()))
    chrom = rng.integers(1, 23, len(panel))
    locus = rng.integers(1_000_000, 200_000_000, len(panel))
    rows = []

    def row(gi: int, sample: str, cls: str) -> None:
        vtype = NON_SILENT[cls][1] if cls in NON_SILENT else "SNP"
        pos = int(rng.integers(10, 900))
        a, b = rng.choice(list(_AA), 2)
        prot = {"Silent": f"p.{a}{pos}{a}", "Nonsense_Mutation": f"p.{a}{pos}*"}.get(cls)
        if prot is None:
            prot = f"p.{a}{pos}{b}" if cls in NON_SILENT else ""
        rows.append(
            (
                panel[gi],
                f"chr{chrom[gi]}",
                int(locus[gi] + rng.integers(0, 50_000)),
                cls,
                vtype,
                sample,
                prot,
            )
        )

    for i, sample in enumerate(sample_ids):
        start = len(rows)
        for gi in np.flatnonzero(mutated[i]):
            for _ in range(1 + int(rng.random() < 0.1)):
                row(gi, sample, ns_names[rng.choice(len(ns_names), p=ns_p)])
        for gi in np.flatnonzero(rng.random(len(panel)) < silent_rate):
            row(gi, sample, s_names[rng.choice(len(s_names), p=s_p)])
        if len(rows) == start:  # sequenced, nothing found: keep the sample visible
            row(int(rng.integers(len(panel))), sample, "Silent")
    cols = [
        "Hugo_Symbol",
        "Chromosome",
        "Start_Position",
        "Variant_Classification",
        "Variant_Type",
        "Tumor_Sample_Barcode",
        "HGVSp_Short",
    ]
    return pd.DataFrame(rows, columns=cols)
