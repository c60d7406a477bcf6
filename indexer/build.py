"""``threads-search index``: slides or FEATURES_DIRs + profiles → a committed index generation.

Incremental and resumable: each slide's embedding is a work record keyed by the source
fingerprint and the model hash, so a re-run embeds only new or changed slides, and a run killed
at any moment leaves the previous generation readable and is finished by running it again.
Every slide given ends indexed, unchanged or failed with its reason: FEATURES_DIRs are
reconciled with their status (``indexer.sources``), an id given twice is reported, and a commit
that would lack a slide reported as indexed is refused (``LostSlidesError``).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from indexer import metadata as md
from indexer.config import IndexConfig
from indexer.profiles import embed_profiles, merge_molecular
from indexer.records import (
    SlideRecord,
    fingerprint,
    list_records,
    read_meta,
    read_record,
    record_path,
    remove_orphan_temps,
    write_record,
)
from indexer.sources import add_sources, split_inputs
from threads_search.paths import display_text
from threads_search.vectorstore import store
from threads_search.vectorstore.writer import write_generation
from threads_search.wsi.fingerprint import KEYS as FINGERPRINT_KEYS


class LostSlidesError(ValueError):
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
    h = hashlib.sha256()
    for name in ("config.json", "model.safetensors"):
        with open(model_dir / name, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
    return h.hexdigest()[:16]


def install_model(index_dir: Path, model_dir: Path, mhash: str) -> str:
    """Copy the bundle to ``INDEX_DIR/models/<hash>`` once (atomic folder rename)."""
    rel = f"models/{mhash}"
    dest = index_dir / rel
    if not (dest / "config.json").exists():
        tmp = index_dir / "models" / f".{mhash}.tmp{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        for f in model_dir.iterdir():
            if f.is_file() and not f.name.startswith("."):
                shutil.copy2(f, tmp / f.name)
        shutil.rmtree(dest, ignore_errors=True)
        os.replace(tmp, dest)
    return rel


def features_dir(cfg: IndexConfig, index_dir: Path) -> Path:
    """Where the features stage writes for slide files given to ``index``: ``--features-dir``,
    else ``INDEX_DIR/features``."""
    return Path(cfg.features_dir) if cfg.features_dir else index_dir / "features"


def _run_features(cfg: IndexConfig, slides: list[Path], model, fdir: Path, progress, index_dir):
    """The features stage for the slide files given (holding the FEATURES_DIR lock): (slide_id →
    source, slide_id → reason for the failed ones, ids whose features were made again because
    their file changed since)."""
    from threads_search.features import default_config, extract_features
    from threads_search.features.extract import h5_path, thumbnail_path

    pe = model.patch_encoder
    fcfg = default_config(pe["name"], pe["patch_size"], pe["target_mpp"], checkpoint=cfg.checkpoint,
                          workers=cfg.workers, batch_size=cfg.batch_size, device=cfg.device)  # fmt: skip
    # An index run finishes the job: slides that failed before (a killed run, a file fixed since)
    # are tried again, and reported again if they still fail.
    lock = f"threads-search index → {index_dir} (features stage)"
    outcomes = extract_features(slides, fdir, fcfg, mpp_csv=cfg.mpp_csv, progress=progress,
                                retry_failed=True, lock_command=lock)  # fmt: skip
    got, failed = {}, {}
    redone = [o.slide_id for o in outcomes if o.note]
    for o in outcomes:
        h5 = h5_path(fdir, o.slide_id)
        if o.state == "failed":
            failed[o.slide_id] = o.error
        elif not h5.exists():
            failed[o.slide_id] = f"features: {display_text(h5)} is missing after the features stage"
        else:
            thumb = thumbnail_path(fdir, o.slide_id)
            thumb = thumb if thumb.exists() else None
            src = {"h5": h5, "path": o.path, "thumbnail": thumb}
            got[o.slide_id] = {**src, "source_fingerprint": o.fingerprint}
    return got, failed, redone


def _embed(model, sid: str, src: dict, fp: dict, mhash: str) -> SlideRecord:
    emb, att = model.embed_slide(src["h5"], return_attention=True)
    from threads_search.features.h5io import read_features

    ff = read_features(src["h5"])
    a = ff.attrs
    row = {
        "slide_id": sid, "path": display_text(src["path"]), "mpp": a.get("level0_mpp"),
        "width": a.get("level0_width"), "height": a.get("level0_height"),
        "n_patches": len(ff.coords), "tissue_area_mm2": a.get("tissue_area_mm2"),
    }  # fmt: skip
    att = np.zeros((0, len(ff.coords)), np.float32) if att is None else att
    thumb = str(src["thumbnail"]) if src.get("thumbnail") else None
    meta = {"fingerprint": fp, "model_hash": mhash, "row": row, "thumbnail": thumb}
    return SlideRecord(sid, emb, ff.coords, att, meta)


def embed_slide_record(model, index_dir: Path, sid: str, src: dict, fp: dict, mhash: str):
    """Embed one slide's features (``src["h5"]``) and write its work record atomically; the
    per-slide step both engines run (local: in this process; ray: in a worker actor)."""
    rec = _embed(model, sid, src, fp, mhash)
    write_record(index_dir, rec)
    return rec


def _source_fingerprint(src: dict) -> dict:
    """The slide file's fingerprint (its h5's when the file is not there), ``of`` naming it:
    ``src["source_fingerprint"]`` when the features stage or the reconciliation took it (the
    file the features were made from), else taken now."""
    p = Path(src["path"]) if src["path"] else None
    if p is not None and p.exists():
        fp = src.get("source_fingerprint") or fingerprint(p)
        return {"of": str(p), **{k: fp[k] for k in FINGERPRINT_KEYS}}
    return {"of": str(src["h5"]), **fingerprint(src["h5"])}


def _attention_frame(rec: SlideRecord) -> pd.DataFrame:
    d = {"x": rec.coords[:, 0], "y": rec.coords[:, 1]}
    if rec.attention.size:
        d["score"] = rec.attention.mean(axis=0)
        for h, s in enumerate(rec.attention):
            d[f"score_h{h}"] = s
    return pd.DataFrame(d)


def _assemble(cfg, index_dir: Path, mhash: str, model_rel: str, summary, meta, pairs, new_mol):
    recs = {sid: read_record(p, sid) for sid, p in sorted(list_records(index_dir).items())}
    lost = sorted((set(summary.indexed) | set(summary.skipped)) - set(recs))
    if lost:  # never commit an index that silently lacks what the summary reports
        raise LostSlidesError(
            f"{len(lost)} slide(s) reported as indexed have no work record under "
            f"{index_dir / 'work'} ({', '.join(map(display_text, lost[:5]))}); nothing was "
            "committed (a bug: please report it with this message)"
        )
    cols = ["slide_id", "path", "mpp", "width", "height", "n_patches", "tissue_area_mm2"]
    slides = pd.DataFrame([r.meta["row"] for r in recs.values()], columns=cols)
    slides["tissue_area_mm2"] = pd.to_numeric(slides["tissue_area_mm2"], errors="coerce")
    emb = np.stack([r.embedding for r in recs.values()]) if recs else np.zeros((0, 1), np.float32)
    mol_t, mol_e = merge_molecular(index_dir, mhash, *new_mol)
    slides, mol_t, meta_report = md.attach(slides, mol_t, meta, pairs)  # patients + metadata
    summary.unmatched_metadata = meta_report.unmatched_rows
    attention = {sid: _attention_frame(r) for sid, r in recs.items()}
    thumbs = {sid: Path(r.meta["thumbnail"]) for sid, r in recs.items()
              if r.meta.get("thumbnail") and Path(r.meta["thumbnail"]).exists()}  # fmt: skip
    budget = int(cfg.memory_budget_gb * 2**30) if cfg.memory_budget_gb else None
    manifest = {"model": {"dir": model_rel, "hash": mhash, "source": str(cfg.model)},
                "config": cfg.to_dict(), "versions": _versions(),
                "unmatched_metadata_rows": summary.unmatched_metadata,
                "metadata": meta_report.to_dict()}  # fmt: skip
    return write_generation(index_dir, slides, emb, mol_t, mol_e, attention, thumbs, manifest,
                            index_type=cfg.index_type, memory_budget=budget)  # fmt: skip


def _versions() -> dict:
    from threads_search.features.config import versions

    v = versions()
    import faiss

    v["faiss"] = faiss.__version__
    return v


def _keep_work_inputs(index_dir: Path, cfg: IndexConfig):
    """Metadata and pairs persist across incremental runs: a new file replaces the old copy."""
    from threads_search.molecular.tables import read_metadata, read_pairs

    work = index_dir / "work"
    work.mkdir(parents=True, exist_ok=True)
    out = []
    for name, path, reader in (("metadata", cfg.metadata, read_metadata),
                               ("pairs", cfg.pairs, lambda p: read_pairs(p, cfg.pair_by))):  # fmt: skip
        dest = work / f"{name}.parquet"
        if path:
            df = reader(path)
            tmp = dest.with_name(f".{dest.name}.tmp{os.getpid()}")
            df.to_parquet(tmp, index=False)
            os.replace(tmp, dest)
            out.append(df)
        else:
            out.append(pd.read_parquet(dest) if dest.exists() else None)
    return out


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
def index_session(cfg: IndexConfig, engine: str = "", device: str = "cpu"):
    """Lock ``cfg.out``, clear what a killed run left (uncommitted generation, temporaries),
    install and load the model, keep the metadata/pairs inputs; yields an ``IndexSession``.
    Raises ``IndexLockedError`` when another writer is active."""
    from threads_search.models.bundle import load_model

    index_dir = Path(cfg.out)
    index_dir.mkdir(parents=True, exist_ok=True)
    with store.IndexLock(index_dir, command=f"threads-search index{engine} → {index_dir}"):
        store.remove_uncommitted(index_dir)
        remove_orphan_temps(index_dir)
        model_dir = Path(cfg.model)
        if not (model_dir / "config.json").exists():
            raise FileNotFoundError(f"--model {model_dir}: no model bundle (config.json missing)")
        mhash = model_hash(model_dir)
        model_rel = install_model(index_dir, model_dir, mhash)
        model = load_model(index_dir / model_rel, device=device)
        meta, pairs = _keep_work_inputs(index_dir, cfg)
        yield IndexSession(cfg, index_dir, model_rel, mhash, model, meta, pairs)


def select_work(sess: IndexSession, sources: dict[str, dict]) -> list[tuple[str, dict, dict]]:
    """Apply ``--remove``/``--prune``, drop records of another model whose slide is not given
    again, and return ``(slide_id, source, fingerprint)`` of the slides to embed (new, changed,
    or embedded by another model); the others are counted as skipped."""
    index_dir, mhash, summary = sess.index_dir, sess.mhash, sess.summary
    existing = list_records(index_dir)
    summary.removed, summary.not_in_index = _removals(sess.cfg, index_dir, existing, sources)
    todo = []
    for sid, src in sorted(sources.items()):
        fp = _source_fingerprint(src)
        old = read_meta(existing[sid]) if sid in existing else None
        if old and old.get("fingerprint") == fp and old.get("model_hash") == mhash:
            summary.skipped.append(sid)
        else:
            todo.append((sid, src, fp))
    stale = [s for s, p in list_records(index_dir).items()
             if s not in sources and (read_meta(p) or {}).get("model_hash") != mhash]  # fmt: skip
    for sid in stale:  # indexed with another model and not given again: re-embed if possible
        record_path(index_dir, sid).unlink(missing_ok=True)
        summary.removed.append(sid)
    return todo


def commit(sess: IndexSession) -> None:
    """Embed the molecular profiles and commit a new generation when anything changed (else
    keep the current one); sets ``summary.manifest`` and ``summary.committed``."""
    cfg, index_dir, summary = sess.cfg, sess.index_dir, sess.summary
    new_mol = embed_profiles(sess.model, cfg.rna, cfg.rna_units, cfg.dna)
    changed = bool(summary.indexed or summary.removed or cfg.rna or cfg.dna or cfg.metadata
                   or cfg.pairs or not (index_dir / store.INDEX_JSON).exists())  # fmt: skip
    if changed:
        summary.manifest = _assemble(cfg, index_dir, sess.mhash, sess.model_rel, summary,
                                     sess.meta, sess.pairs, new_mol)  # fmt: skip
        summary.committed = True
    else:
        summary.manifest = store.read_manifest(index_dir)


def run_index(cfg: IndexConfig, progress=None, console=None) -> IndexSummary:
    """Build or update the index at ``cfg.out``. Raises ``IndexLockedError`` when another
    writer is active; per-slide failures are collected in the summary."""
    if cfg.engine == "ray":  # same steps and layout, slides distributed on a Ray cluster
        from indexer.ray_engine import run_index_ray

        return run_index_ray(cfg, progress=progress)
    if cfg.engine != "local":
        raise ValueError(f"--engine must be 'local' or 'ray', got {cfg.engine!r}")
    t0 = time.perf_counter()
    device = cfg.device if cfg.device != "auto" else "cpu"
    with index_session(cfg, device=device) as sess:
        summary = sess.summary
        sources, files = split_inputs(cfg, sess.model, summary)
        if files:
            fdir = features_dir(cfg, sess.index_dir)
            got, bad, redone = _run_features(cfg, files, sess.model, fdir, progress, sess.index_dir)
            summary.failed.update(bad)
            summary.features_redone.extend(redone)
            add_sources(sources, got, "the slide files given", summary)
        todo = select_work(sess, sources)
        if progress:
            progress.start_embedding(len(todo))
        for sid, src, fp in todo:
            t1 = time.perf_counter()
            try:
                rec = embed_slide_record(sess.model, sess.index_dir, sid, src, fp, sess.mhash)
                summary.indexed.append(sid)
                summary.n_patches += len(rec.coords)
            except Exception as e:  # noqa: BLE001 - one bad slide never kills the batch
                summary.failed[sid] = f"{type(e).__name__}: {e}"
            summary.embed_seconds += time.perf_counter() - t1
            if progress:
                progress.embedded(sid)
        commit(sess)
    summary.wall_seconds = time.perf_counter() - t0
    return summary


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
