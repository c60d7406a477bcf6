"""Adopt patch-feature h5 files made by TRIDENT or CLAM into a FEATURES_DIR.

TRIDENT writes ``features_<encoder>/<slide>.h5`` and CLAM ``h5_files/<slide>.h5``, both with
datasets ``features`` ``[N, D]`` and ``coords`` ``[N, 2]`` (level-0 px). Their ``coords``
attributes differ (TRIDENT: ``patch_size``, ``patch_size_level0``, ``target_magnification``;
CLAM: ``patch_size``, ``patch_level``, ``downsample``); what is missing is filled from flags.
The slide id is the file's stem, or where stems collide the path under ``src_dir`` without
``.h5`` (the rule of ``threads_search.wsi.discover``); the FEATURES_DIR lock is held throughout.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from threads_search.errors import MissingError
from threads_search.features.config import FeaturesConfig
from threads_search.features.extract import SlideOutcome, check_config, features_lock, h5_path
from threads_search.features.h5io import FeatureFileError, read_features, write_features
from threads_search.features.status import StatusTable
from threads_search.paths import display_text
from threads_search.wsi.discover import assign_ids


@dataclass
class ImportParams:
    """Values for attributes the source files lack. ``level0_mpp`` µm/px of the scans."""

    level0_mpp: float | None = None


def _attrs(src: dict, config: FeaturesConfig, params: ImportParams, path: Path) -> dict:
    grid = config.segment.grid
    patch_size = int(src.get("patch_size", grid.patch_size))
    level0_mpp = src.get("level0_mpp") or params.level0_mpp
    ps0 = src.get("patch_size_level0")
    if ps0 is None and "downsample" in src and "patch_size" in src:  # CLAM
        ds = src["downsample"]
        ps0 = round(patch_size * float(ds[0] if isinstance(ds, list) else ds))
    if ps0 is None and level0_mpp:
        ps0 = round(patch_size * grid.target_mpp / float(level0_mpp))
    if level0_mpp is None and ps0:
        level0_mpp = patch_size * grid.target_mpp / float(ps0)
    if ps0 is None or level0_mpp is None:
        raise FeatureFileError(
            f"{path}: cannot tell the patch size in level-0 px; give --level0-mpp (µm/px of the scans)"
        )
    return {
        "patch_size": patch_size,
        "patch_size_level0": int(ps0),
        "target_mpp": float(src.get("target_mpp", grid.target_mpp)),
        "level0_mpp": float(level0_mpp),
        "level0_width": int(src.get("level0_width", -1)),
        "level0_height": int(src.get("level0_height", -1)),
        "encoder": config.patch_encoder,
        "config_hash": config.hash(),
        "imported_from": display_text(path),
    }


def import_h5(
    src_dir: str | Path,
    out_dir: str | Path,
    config: FeaturesConfig,
    params: ImportParams | None = None,
) -> list[SlideOutcome]:
    """Validate and copy every ``*.h5`` under ``src_dir`` into ``out_dir/h5``; bad files are
    recorded as failed. All files must share one feature dimension."""
    params = params or ImportParams()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with features_lock(out, f"threads-search features --import-h5 {src_dir} → {out}"):
        return _import(Path(src_dir), out, config, params)


def _import(src_dir: Path, out: Path, config: FeaturesConfig, params: ImportParams):
    check_config(out, config)
    files = sorted(p for p in src_dir.rglob("*.h5") if not p.name.startswith("."))
    if not files:
        raise MissingError(
            f"no .h5 files under {src_dir}; give the folder of the TRIDENT or CLAM h5 files"
        )
    ids = assign_ids([(src_dir, f) for f in files], keep_suffix=False)
    status = StatusTable(out)
    dim = None
    outcomes = []
    for f, sid in zip(files, ids, strict=True):
        t0 = time.perf_counter()
        try:
            ff = read_features(f)
            if dim is not None and ff.features.shape[1] != dim:
                raise FeatureFileError(
                    f"{f}: feature dim {ff.features.shape[1]} differs from the others ({dim}); "
                    "features of mixed encoders cannot share a FEATURES_DIR"
                )
            dim = ff.features.shape[1]
            attrs = _attrs(ff.attrs, config, params, f)
            write_features(h5_path(out, sid), ff.features, ff.coords, attrs)
            state, err, n = "done", "", len(ff.coords)
        except FeatureFileError as e:
            state, err, n = "failed", f"invalid-h5: {e}", 0
        dt = time.perf_counter() - t0
        err = display_text(err)
        row = dict(state=state, error=err, n_patches=n, seconds=dt, finished=time.time())
        status.set(sid, path=display_text(f), config_hash=config.hash(), **row)
        outcomes.append(SlideOutcome(sid, str(f), state, err, n, dt))
    config.save(out, {"imported": True, "feature_dim": dim})
    return outcomes
