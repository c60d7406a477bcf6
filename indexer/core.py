"""The driver steps both engines share, in the order they run:

1. :func:`index_session`: lock ``INDEX_DIR``, clear what a killed run left, install and load
   the model, keep the metadata/pairs inputs (an :class:`IndexSession`);
2. ``split_inputs`` (``indexer.sources``): FEATURES_DIR slides → :class:`SlideSource`, slide
   files → the engine's features stage (:func:`features_config`, :func:`feature_source`);
3. :func:`select_work`: ``--remove``/``--prune``, and the :class:`SlideJob` of each slide whose
   work record is missing or stale (the others are skipped);
4. the engine runs ``slide_step.embed_job`` for each job (in this process or on Ray);
5. :func:`commit`: embed the molecular profiles and commit a generation from the work records.

Incremental and resumable: a work record is keyed by the source fingerprint and the model hash,
so a re-run embeds only new or changed slides, and a run killed at any moment leaves the
previous generation readable and is finished by running it again. Every slide given ends
indexed, unchanged or failed with its reason, and a commit that would lack a slide reported as
indexed is refused (:class:`LostSlidesError`).
"""

from __future__ import annotations

import contextlib
import hashlib
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from indexer import metadata as md
from indexer.config import IndexConfig
from indexer.profiles import embed_profiles, merge_molecular
from indexer.records import (
    MODELS,
    WORK,
    fingerprint,
    list_records,
    read_meta,
    read_record,
    record_path,
    remove_orphan_temps,
)
from indexer.regions import region_table
from indexer.slide_step import SlideJob
from indexer.sources import SlideSource, add_sources, split_inputs
from threads_search.atomic import atomic_path
from threads_search.errors import MissingError, ThreadsSearchError
from threads_search.models.attention import attention_frame
from threads_search.paths import display_text
from threads_search.vectorstore import store
from threads_search.vectorstore.writer import write_generation
from threads_search.wsi.fingerprint import KEYS as FINGERPRINT_KEYS

__all__ = [
    "IndexSession",
    "IndexSummary",
    "LostSlidesError",
    "SlideJob",
    "SlideSource",
    "add_sources",
    "commit",
    "feature_source",
    "features_config",
    "features_dir",
    "features_lock_command",
    "index_session",
    "select_work",
    "split_inputs",
]


BUNDLE_REQUIRED = ("config.json", "model.safetensors")  # the files a model hash covers


class LostSlidesError(ThreadsSearchError, ValueError):
    """The generation about to be committed lacks slides reported as indexed or unchanged."""


@dataclass
class IndexSummary:
    indexed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    removed: list[str] = field(default_factory=list)
    adopted: list[str] = field(default_factory=list)  # FEATURES_DIR h5 files without status rows
    features_redone: list[str] = field(default_factory=list)  # slide file changed since features
    not_in_index: list[str] = field(default_factory=list)  # --remove ids the index does not hold
    n_patches: int = 0
    embed_seconds: float = 0.0
    wall_seconds: float = 0.0
    committed: bool = False
    manifest: dict = field(default_factory=dict)
    unmatched_metadata: int = 0


def model_hash(model_dir: Path) -> str:
    """16 hex digits of SHA-256 over the bundle's config and weights: a work record made with
    another model is redone."""
    h = hashlib.sha256()
    for name in BUNDLE_REQUIRED:
        with open(model_dir / name, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
    return h.hexdigest()[:16]


def install_model(index_dir: Path, model_dir: Path, mhash: str) -> str:
    """Copy the bundle to ``INDEX_DIR/models/<hash>`` once (a folder renamed into place);
    returns that path relative to ``index_dir``."""
    rel = f"{MODELS}/{mhash}"
    dest = index_dir / rel
    if not (dest / "config.json").exists():
        with atomic_path(dest) as tmp:
            tmp.mkdir()
            for f in model_dir.iterdir():
                if f.is_file() and not f.name.startswith("."):
                    shutil.copy2(f, tmp / f.name)
    return rel


def features_dir(cfg: IndexConfig, index_dir: Path) -> Path:
    """Where the features stage writes for slide files given to ``index``: ``--features-dir``,
    else ``INDEX_DIR/features``."""
    return Path(cfg.features_dir) if cfg.features_dir else index_dir / "features"


def features_config(cfg: IndexConfig, model, workers: int):
    """The features settings of an index run: the model's patch encoder (its patch size and
    µm/px, and the stain normalisation its training features had: ``patch_encoder["stain"]``,
    absent in older bundles = none), ``--checkpoint``, ``--batch-size``, ``--device``, and
    ``workers`` reader processes. A stain reference that cannot be used is refused here
    (``ConfigError`` naming it), before any slide is read."""
    from threads_search.features import default_config
    from threads_search.features.stain import reference
    from threads_search.wsi.stain_norm import StainConfig

    pe = model.patch_encoder
    stain = StainConfig.from_dict(pe.get("stain") or {})
    if stain.method != "none":
        reference(stain)
    return default_config(
        pe["name"],
        pe["patch_size"],
        pe["target_mpp"],
        checkpoint=cfg.checkpoint,
        workers=workers,
        batch_size=cfg.batch_size,
        device=cfg.device,
        stain=stain,
    )


def run_command(cfg: IndexConfig, index_dir: Path) -> str:
    """How the index lock names this run (shown to a second writer)."""
    engine = "" if cfg.engine == "local" else f" --engine {cfg.engine}"
    return f"threads-search index{engine} → {index_dir}"


def features_lock_command(cfg: IndexConfig, index_dir: Path) -> str:
    """How the FEATURES_DIR lock names an index run's features stage."""
    return f"{run_command(cfg, index_dir)} (features stage)"


def feature_source(fdir: Path, slide_id: str, path, source_fp: dict | None) -> SlideSource:
    """The source of a slide file whose features the features stage made (or makes) in
    ``fdir``, from the file at ``path`` with fingerprint ``source_fp`` (taken before reading)."""
    from threads_search.features.extract import h5_path, thumbnail_path

    h5, thumb = h5_path(fdir, slide_id), thumbnail_path(fdir, slide_id)
    return SlideSource(slide_id, h5, str(path), thumb, source_fp)


def source_fingerprint(src: SlideSource) -> dict:
    """The key of a slide's work record: the slide file's fingerprint (its h5's when the file
    is not there), ``of`` naming it: ``src.source_fingerprint`` when the features stage or the
    reconciliation took it (the file the features were made from), else taken now."""
    p = Path(src.path) if src.path else None
    if p is not None and p.exists():
        fp = src.source_fingerprint or fingerprint(p)
        return {"of": str(p), **{k: fp[k] for k in FINGERPRINT_KEYS}}
    return {"of": str(src.h5), **fingerprint(src.h5)}


@dataclass
class IndexSession:
    """What both engines share while they hold the index lock: the installed model (its path
    relative to the index, hash, loaded bundle), the kept metadata/pairs and the summary."""

    cfg: IndexConfig
    index_dir: Path
    model_rel: str
    mhash: str
    model: object
    meta: object
    pairs: object
    summary: IndexSummary = field(default_factory=IndexSummary)


@contextlib.contextmanager
def index_session(cfg: IndexConfig, device: str = "cpu"):
    """Lock ``cfg.out``, clear what a killed run left (uncommitted generation, temporaries),
    install and load the model, keep the metadata/pairs inputs; yields an ``IndexSession``.
    Raises ``IndexLockedError`` when another writer is active, ``MissingError`` without a model
    bundle at ``cfg.model``."""
    from threads_search.models.bundle import load_model

    index_dir = Path(cfg.out)
    index_dir.mkdir(parents=True, exist_ok=True)
    with store.IndexLock(index_dir, command=run_command(cfg, index_dir)):
        store.remove_uncommitted(index_dir)
        remove_orphan_temps(index_dir)
        model_dir = Path(cfg.model)
        for name in BUNDLE_REQUIRED:
            if not (model_dir / name).is_file():
                raise MissingError(
                    f"--model {model_dir}: no model bundle ({name} missing); give the MODEL_DIR "
                    "written by `threads-search train`"
                )
        mhash = model_hash(model_dir)
        model_rel = install_model(index_dir, model_dir, mhash)
        model = load_model(index_dir / model_rel, device=device)
        meta, pairs = _keep_work_inputs(index_dir, cfg)
        yield IndexSession(cfg, index_dir, model_rel, mhash, model, meta, pairs)


def select_work(sess: IndexSession, sources: dict[str, SlideSource]) -> list[SlideJob]:
    """Apply ``--remove``/``--prune``, drop records of another model whose slide is not given
    again, and return the jobs of the slides to embed (new, changed, or embedded by another
    model), in slide id order; the others are counted as skipped."""
    index_dir, mhash, summary = sess.index_dir, sess.mhash, sess.summary
    existing = list_records(index_dir)
    summary.removed, summary.not_in_index = _removals(sess.cfg, index_dir, existing, sources)
    todo = []
    for sid, src in sorted(sources.items()):
        fp = source_fingerprint(src)
        old = read_meta(existing[sid]) if sid in existing else None
        current = old and old.get("fingerprint") == fp and old.get("model_hash") == mhash
        if current and (old.get("has_patches") or not sess.cfg.regions):
            summary.skipped.append(sid)
        else:  # new, changed, or made without the patch vectors the region index needs
            todo.append(SlideJob(src, fp, mhash, index_dir, sess.cfg.regions))
    for sid, path in list_records(index_dir).items():
        if sid not in sources and (read_meta(path) or {}).get("model_hash") != mhash:
            # indexed with another model and not given again: re-embed it if possible
            record_path(index_dir, sid).unlink(missing_ok=True)
            summary.removed.append(sid)
    return todo


def commit(sess: IndexSession) -> None:
    """Embed the molecular profiles and commit a new generation when anything changed (else
    keep the current one); sets ``summary.manifest`` and ``summary.committed``."""
    cfg, index_dir, summary = sess.cfg, sess.index_dir, sess.summary
    new_mol = embed_profiles(sess.model, cfg.rna, cfg.rna_units, cfg.dna)
    inputs_given = cfg.rna or cfg.dna or cfg.metadata or cfg.pairs
    first = not (index_dir / store.INDEX_JSON).exists()
    if summary.indexed or summary.removed or inputs_given or first:
        summary.manifest = _assemble(sess, new_mol)
        summary.committed = True
    else:
        summary.manifest = store.read_manifest(index_dir)


def _assemble(sess: IndexSession, new_mol) -> dict:
    """Write and commit the generation of every work record (+ molecular, metadata)."""
    cfg, index_dir, summary = sess.cfg, sess.index_dir, sess.summary
    paths = dict(sorted(list_records(index_dir).items()))
    recs = {sid: read_record(p, sid) for sid, p in paths.items()}
    lost = sorted((set(summary.indexed) | set(summary.skipped)) - set(recs))
    if lost:  # never commit an index that silently lacks what the summary reports
        raise LostSlidesError(
            f"{len(lost)} slide(s) reported as indexed have no work record under "
            f"{index_dir / WORK} ({', '.join(map(display_text, lost[:5]))}); nothing was "
            "committed (a bug: please report it with this message)"
        )
    cols = ["slide_id", "path", "mpp", "width", "height", "n_patches", "tissue_area_mm2"]
    slides = pd.DataFrame([r.meta["row"] for r in recs.values()], columns=cols)
    slides["tissue_area_mm2"] = pd.to_numeric(slides["tissue_area_mm2"], errors="coerce")
    emb = np.stack([r.embedding for r in recs.values()]) if recs else np.zeros((0, 1), np.float32)
    mol_t, mol_e = merge_molecular(index_dir, sess.mhash, *new_mol)
    # patients + metadata
    slides, mol_t, meta_report = md.attach(slides, mol_t, sess.meta, sess.pairs)
    summary.unmatched_metadata = meta_report.unmatched_rows
    attention = {sid: attention_frame(r.coords, r.attention) for sid, r in recs.items()}
    thumbs = {}
    for sid, r in recs.items():
        thumb = r.meta.get("thumbnail")
        if thumb and Path(thumb).exists():
            thumbs[sid] = Path(thumb)
    budget = int(cfg.memory_budget_gb * 2**30) if cfg.memory_budget_gb else None
    manifest = {
        "model": {"dir": sess.model_rel, "hash": sess.mhash, "source": str(cfg.model)},
        "config": cfg.to_dict(),
        "versions": _versions(),
        "unmatched_metadata_rows": summary.unmatched_metadata,
        "metadata": meta_report.to_dict(),
    }
    return write_generation(
        index_dir,
        slides,
        emb,
        mol_t,
        mol_e,
        attention,
        thumbs,
        manifest,
        index_type=cfg.index_type,
        memory_budget=budget,
        regions=region_table(recs, paths, cfg.region_features, sess.model.patch_encoder.get("name"))
        if cfg.regions
        else None,
    )


def _versions() -> dict:
    import faiss

    from threads_search.features.config import versions

    return {**versions(), "faiss": faiss.__version__}


def _keep_work_inputs(index_dir: Path, cfg: IndexConfig):
    """Metadata and pairs persist across incremental runs: a new file replaces the old copy."""
    from threads_search.molecular.tables import read_metadata, read_pairs

    work = index_dir / WORK
    work.mkdir(parents=True, exist_ok=True)
    out = []
    readers = (
        ("metadata", cfg.metadata, read_metadata),
        ("pairs", cfg.pairs, lambda p: read_pairs(p, cfg.pair_by)),
    )
    for name, path, reader in readers:
        dest = work / f"{name}.parquet"
        if path:
            df = reader(path)
            with atomic_path(dest) as tmp:
                df.to_parquet(tmp, index=False)
            out.append(df)
        else:
            out.append(pd.read_parquet(dest) if dest.exists() else None)
    return out


def _removals(cfg: IndexConfig, index_dir: Path, existing: dict, sources: dict):
    """Delete the work records of ``--remove`` ids and, with ``--prune``, of slides whose file
    has vanished. Returns (ids removed, ``--remove`` ids the index does not hold: reported, so
    that a typo is seen)."""
    removed, unknown = [], []
    for sid in dict.fromkeys(cfg.remove):
        if sid in existing:
            existing[sid].unlink(missing_ok=True)
            removed.append(sid)
        else:
            unknown.append(sid)
    if cfg.prune:
        for sid, path in existing.items():
            if sid in removed or sid in sources:
                continue
            meta = read_meta(path) or {}
            of = (meta.get("fingerprint") or {}).get("of")
            if of and not Path(of).exists():
                path.unlink(missing_ok=True)
                removed.append(sid)
    return removed, unknown
