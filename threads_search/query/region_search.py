"""``Index.search_regions``: the half of :class:`~threads_search.query.index.Index` that turns a
region query into query patches and ranks indexed patches or slides by them (the rules are in
:mod:`threads_search.query.regions`)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd

from threads_search.errors import ThreadsSearchError
from threads_search.query.errors import QueryError
from threads_search.query.regions import (
    ASSUMED_SCALES,
    DEFAULT_IMAGE_MPP,
    HITS_PER_QUERY_PATCH,
    RegionSpace,
    crop_dir,
    merge_hits,
    nearest,
    normalise_patches,
    tile_image,
    write_crop,
)
from threads_search.vectorstore import store

_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
_HIDDEN = ("path", "n_patches", "width", "height")  # slide columns not shown beside hits


class RegionSearch:
    """Mixed into ``Index``, whose ``__init__`` sets ``generation_dir``, ``_manifest``, ``_s``,
    ``_lock``; uses ``model``, ``filter_ids``, ``thumbnail``, ``_indexed_row``."""

    _region_space: RegionSpace | None = None

    @property
    def regions(self) -> RegionSpace:
        """The region index (opened on first use); ``QueryError`` when the index has none."""
        with self._lock:
            if self._region_space is None:
                if not (self.generation_dir / store.REGIONS).is_file():
                    why = no_regions_reason(self._manifest)
                    raise QueryError(f"index {self.root} has no region index: {why}")
                info = (self._manifest.get("regions") or {}).get("faiss")
                self._region_space = RegionSpace(self.generation_dir, info=info)
            return self._region_space

    def search_regions(
        self,
        query,
        k: int = 20,
        where: str | None = None,
        per_slide: int | None = None,
        aggregate: str | None = None,
        image_mpp: float | None = None,
        exclude_self: bool = True,
        crops: bool = True,
    ) -> pd.DataFrame:
        """Indexed patches most like ``query`` (rules in :mod:`threads_search.query.regions`).

        ``query``: an image (path, PIL image or uint8 ``[h, w, 3]``; ``image_mpp`` its µm/px,
        default 0.5), ``(slide_id_or_path, (x, y, w, h))`` (level-0 px), or patch vectors
        ``[m, D]``. Returns ``rank, score, slide_id, x, y, size_px, size_um`` (level-0 px and µm
        of each hit patch), the slide's metadata, ``crop`` (a JPEG of the hit at 1 µm/px, or
        None when the slide cannot be read; ``crops=False`` skips them) and ``thumbnail``.
        ``aggregate="slide"``: ``rank, score, slide_id, n_hits, x, y`` (its best hit) + metadata.
        ``attrs``: ``query_patches``, ``image_mpp`` and a ``note`` when the µm/px was assumed.
        """
        if int(k) < 1:
            raise QueryError(f"k must be >= 1, got {k}")
        if per_slide is not None and int(per_slide) < 1:
            raise QueryError(f"per_slide must be >= 1 or None, got {per_slide}")
        if aggregate not in (None, "slide"):
            raise QueryError(f"aggregate must be None or 'slide', got {aggregate!r}")
        sp = self.regions
        q, groups, leave_out, own_slide, attrs = self._region_query(sp, query, image_mpp)
        if not exclude_self:
            leave_out, own_slide = np.zeros(0, np.int64), None
        rows = self.filter_ids(where, "slides")
        allowed = None
        if rows is not None:
            ids = self._s.table["slide_id"].to_numpy()[rows]
            allowed = sp.rows_of_slides(ids)
        kk = int(k) * HITS_PER_QUERY_PATCH * (4 if per_slide else 1) + len(leave_out)
        scores, found = nearest(sp, q, kk, allowed)
        hits = merge_hits(scores, found, leave_out, allowed)
        hits = hits.join(sp.table, on="row")
        if aggregate == "slide":
            out = self._aggregate(sp, q, groups, hits, own_slide, int(k))
        else:
            if per_slide is not None:
                hits = hits.groupby("slide_id", sort=False).head(int(per_slide))
            out = hits.head(int(k)).reset_index(drop=True)
            out = out[["score", "slide_id", "x", "y", "size_px", "size_um"]]
        out.insert(0, "rank", np.arange(1, len(out) + 1))
        out = self._with_slide_columns(out)
        if crops and aggregate is None:
            out["crop"] = self._crops(out)
        out["thumbnail"] = [self.thumbnail(s) for s in out["slide_id"]]
        out.attrs.update(attrs)
        return out

    # -- query ---------------------------------------------------------------------------
    def _region_query(self, sp: RegionSpace, query, image_mpp):
        """(query vectors ``[n, D]``, the query patch of each ``[n]`` (several vectors per patch:
        orientations, scales), rows to leave out, own slide id or None, attrs)."""
        attrs: dict = {}
        if isinstance(query, tuple) and len(query) == 2:
            return self._box_query(sp, query[0], query[1], attrs)
        if isinstance(query, (str, Path)) or _is_image(query):
            rgb = _read_image(query)
            mpp = image_mpp
            if mpp is None:
                mpp = DEFAULT_IMAGE_MPP
                attrs["note"] = (
                    f"image µm/px not given: assumed {DEFAULT_IMAGE_MPP} (also tried at ±10 %); "
                    "give image_mpp= (--image-mpp) for a photo at another scale"
                )
            q, groups = self._encode_pixels(sp, rgb, float(mpp), assumed=image_mpp is None)
            attrs.update(query_patches=int(groups.max()) + 1, image_mpp=float(mpp))
            return q, groups, np.zeros(0, np.int64), None, attrs
        if image_mpp is not None:
            raise QueryError("image_mpp is for image queries only")
        q = sp.projection(normalise_patches(query, sp.feature_dim))
        attrs["query_patches"] = len(q)
        return q, np.arange(len(q)), np.zeros(0, np.int64), None, attrs

    def _box_query(self, sp: RegionSpace, slide, box, attrs):
        try:
            x, y, w, h = (int(v) for v in box)
        except (TypeError, ValueError):
            raise QueryError(
                f"a region is (slide, (x, y, w, h)) in level-0 px, got {box!r}"
            ) from None
        if w < 1 or h < 1 or x < 0 or y < 0:
            raise QueryError(f"region ({x}, {y}, {w}, {h}): x, y >= 0 and w, h >= 1 level-0 px")
        s = str(slide)
        row = self._indexed_row(s)
        if row >= 0:
            sid = str(self._s.table["slide_id"].iat[row])
            inside = sp.in_box(sid, (x, y, w, h), centre=True)
            leave = sp.in_box(sid, (x, y, w, h), centre=False)
            attrs.update(query_slide=sid, box=(x, y, w, h))
            if len(inside):
                attrs["query_patches"] = len(inside)
                q = normalise_patches(
                    np.asarray(sp.vectors[inside], np.float32), sp.vectors.shape[1]
                )
                return q, np.arange(len(q)), leave, sid, attrs
            path, mpp = self._s.table["path"].iat[row], self._s.table["mpp"].iat[row]
        elif Path(s).is_file():
            path, mpp, sid, leave = s, None, None, np.zeros(0, np.int64)
        else:
            raise QueryError(f"{s!r} is neither an indexed slide_id nor a slide file")
        rgb, slide_mpp = _read_box(path, mpp, (x, y, w, h))
        q, groups = self._encode_pixels(sp, rgb, slide_mpp)
        attrs.update(query_patches=int(groups.max()) + 1, image_mpp=slide_mpp)
        return q, groups, leave, sid, attrs

    def _encode_pixels(
        self, sp: RegionSpace, rgb: np.ndarray, mpp: float, assumed: bool = False
    ) -> tuple[np.ndarray, np.ndarray]:
        """Query vectors of an image at ``mpp`` µm/px, made as the index's features were (and
        projected as the region index's vectors, ``RegionSpace.projection``), each
        patch in its 8 orientations (rotations by 90° and their mirror images: tissue has no
        up), and at ``ASSUMED_SCALES`` when ``mpp`` was ``assumed``: vectors ``[n, D]`` and the
        query patch (of the grid at ``mpp``) of each ``[n]``."""
        from threads_search.wsi.stain_norm import StainConfig, fit_slide_or_reason

        if not (0.02 <= mpp <= 20):
            raise QueryError(f"image µm/px {mpp} is outside 0.02-20 µm/px")
        pe = self.model.patch_encoder
        ps, tmpp = int(pe["patch_size"]), float(pe["target_mpp"])
        tiles, base = tile_image(rgb, mpp, ps, tmpp)
        groups = np.arange(len(tiles))
        for s in ASSUMED_SCALES if assumed else ():
            if s == 1.0:
                continue
            more, centres = tile_image(rgb, mpp * s, ps, tmpp)
            near = np.argmin(((centres[:, None] / s - base[None]) ** 2).sum(-1), axis=1)
            tiles, groups = np.concatenate([tiles, more]), np.concatenate([groups, near])
        stain = pe.get("stain")
        if stain and stain.get("method", "none") != "none":
            from threads_search.features.stain import SlideStain, reference

            cfg = StainConfig.from_dict(stain)
            fit = fit_slide_or_reason(list(tiles), cfg.method)
            if not isinstance(fit, str):
                tiles = SlideStain(cfg.method, fit, reference(cfg))(tiles)
        turned = dihedral(tiles)  # [8, m, ps, ps, 3]
        vecs = self._query_encoder(pe["name"]).encode(
            np.ascontiguousarray(turned.reshape(-1, *tiles.shape[1:]))
        )
        return sp.projection(normalise_patches(vecs, int(pe["dim"]))), np.tile(groups, 8)

    def _query_encoder(self, name: str):
        """The index's patch encoder ``name`` (weights from the index's ``checkpoint``), built
        once per opened index: a pretrained one loads its weights in seconds."""
        from threads_search.patch_encoders import create_patch_encoder

        with self._encoder_lock:
            if self._pixel_encoder is None:
                try:
                    self._pixel_encoder = create_patch_encoder(
                        name, checkpoint=self._checkpoint, device=self._device
                    )
                except ThreadsSearchError as e:  # e.g. a pretrained encoder without its weights
                    raise QueryError(f"cannot encode the query with {name!r}: {e}") from e
            return self._pixel_encoder

    # -- results -------------------------------------------------------------------------
    def _aggregate(self, sp, q, groups, hits, own_slide, k):
        cands = [s for s in dict.fromkeys(hits["slide_id"]) if s != own_slide]
        rows_out = []
        n_groups = int(groups.max()) + 1
        for sid in cands:
            rows = sp.rows_of(sid)
            sims = np.full((n_groups, len(rows)), -np.inf, np.float32)
            np.maximum.at(sims, groups, sp.exact(q, rows))  # best orientation per query patch
            best = sims.max(axis=1)
            top = int(np.argmax(sims.max(axis=0)))
            n_hits = int((hits["slide_id"] == sid).sum())
            x, y = sp.table["x"].iat[rows[top]], sp.table["y"].iat[rows[top]]
            rows_out.append((float(best.mean()), sid, n_hits, int(x), int(y)))
        out = pd.DataFrame(rows_out, columns=["score", "slide_id", "n_hits", "x", "y"])
        out = out.sort_values("score", ascending=False, kind="stable").head(k)
        return out.reset_index(drop=True)

    def _with_slide_columns(self, out: pd.DataFrame) -> pd.DataFrame:
        t = self._s.table
        cols = [c for c in t.columns if c not in out.columns and c not in _HIDDEN]
        meta = t.set_index("slide_id")[[c for c in cols if c != "slide_id"]]
        return out.join(meta, on="slide_id")

    def _crops(self, out: pd.DataFrame) -> list:
        t = self._s.table.set_index("slide_id")
        d = crop_dir(self.generation_dir)
        paths = []
        for i, sid in enumerate(out["slide_id"]):
            x, y, size = (int(out[c].iat[i]) for c in ("x", "y", "size_px"))
            key = hashlib.sha256(str(sid).encode()).hexdigest()[:16]
            name = f"{key}_{x}_{y}_{size}.jpg"
            paths.append(write_crop(t.at[sid, "path"], t.at[sid, "mpp"], x, y, size, d / name))
        return paths


def no_regions_reason(manifest: dict) -> str:
    """Why a generation (its ``index.json``) has no region index, and what to do."""
    if (manifest.get("config") or {}).get("regions") is False:
        return "built with --no-regions; run `threads-search index` again without --no-regions"
    if not (manifest.get("counts") or {}).get("slides"):
        return "no slide is indexed yet; index slides or FEATURES_DIRs first"
    return (
        "built by a version without region search; run `threads-search index` again on the "
        "same inputs (slides are re-embedded from their features, none is read again)"
    )


def dihedral(tiles: np.ndarray) -> np.ndarray:
    """``[8, m, h, w, 3]``: ``tiles`` ``[m, h, w, 3]`` rotated by 0/90/180/270° and mirrored."""
    turns = [np.rot90(tiles, r, axes=(1, 2)) for r in range(4)]
    return np.stack(turns + [t[:, :, ::-1] for t in turns])


def _is_image(q) -> bool:
    if isinstance(q, np.ndarray):
        return q.dtype == np.uint8 and q.ndim == 3
    return type(q).__module__.startswith("PIL.")


def _read_image(q) -> np.ndarray:
    if isinstance(q, np.ndarray):
        return q
    from PIL import Image, UnidentifiedImageError

    if isinstance(q, (str, Path)):
        p = Path(q)
        if not p.is_file():
            raise QueryError(f"image {p}: file not found")
        if p.suffix.lower() not in _IMAGE_SUFFIXES:
            raise QueryError(
                f"{p}: not an image file ({p.suffix}); for a slide, give a region: "
                "(slide, (x, y, w, h))"
            )
        try:
            with Image.open(p) as im:
                return np.asarray(im.convert("RGB"))
        except (OSError, UnidentifiedImageError, ValueError) as e:
            raise QueryError(f"image {p} cannot be read ({e})") from None
    return np.asarray(q.convert("RGB"))


def _read_box(path, mpp, box) -> tuple[np.ndarray, float]:
    """Level-0 pixels of ``box`` of slide ``path`` (at most 16 Mpx) and the slide's µm/px."""
    from threads_search.wsi.errors import SlideError
    from threads_search.wsi.slide import open_slide

    x, y, w, h = box
    if w * h > 4096 * 4096:
        raise QueryError(f"region {w} x {h} level-0 px is too large (at most 4096 x 4096)")
    try:
        with open_slide(path, mpp=mpp if mpp and mpp > 0 else None) as s:
            return s.read_region(x, y, 0, (w, h)), float(s.mpp)
    except SlideError as e:
        raise QueryError(f"cannot read the region from {path}: {e.reason}: {e.detail}") from e
