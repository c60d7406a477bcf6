"""Region search: tissue like a region or a photo of a field, found among every indexed patch.

The region index of a generation (``indexer.regions``): one row per indexed patch (``slide_id``,
level-0 ``x, y``, ``size_px``, ``size_um``), its L2-normalised patch features (float16, memory
mapped) and their FAISS index. A query becomes query patches, encoded with the index's patch
encoder exactly as the indexed patches were (patch size, µm/px, stain normalisation):

- an image (path, PIL image or uint8 ``[h, w, 3]`` array) at ``image_mpp`` µm/px (default 0.5)
  is resampled to the encoder's µm/px and cut into patches on a grid covering it (the last row and
  column aligned to its edges; an image smaller than a patch is mirror-padded to one), and each
  patch is encoded in its 8 orientations (90° turns and mirror images: a section has no up, and
  the patch features are not rotation invariant); when its µm/px is not given, the image is
  also tried at ±10 % of the assumed 0.5 µm/px (each scale's patches count as the base grid's
  patch nearest to their centre);
- a region ``(slide, (x, y, w, h))`` in level-0 px of an indexed slide (its id or path) uses the
  stored vectors of the slide's patches whose centre lies in the box; a box holding no patch
  centre, or a region of a slide file that is not indexed, is read from the slide and encoded as
  an image at the slide's µm/px;
- patch vectors ``[m, D]`` (or ``[D]``) are used as they are (normalised).

What is compared is the generation's region projection of the patch features
(``vectorstore.projection``: by default the encoder's tissue dimensions, standardised over the
indexed patches), applied alike to indexed patches and query patches. Patch hits: every query
patch's nearest indexed patches; a patch's score is its best cosine similarity to any query
patch (in any orientation). Leave-outs: the query region's own patches (patches of the query
slide overlapping the box) unless ``exclude_self=False``. ``where`` filters by slide metadata
(SQL, as slide search) and is exact: hits come only from matching slides. ``per_slide`` caps the
hits per slide.

``aggregate="slide"`` ranks slides instead: a slide's score is the mean, over the query patches,
of the query patch's best cosine similarity (in any orientation) to any patch of that slide, computed exactly over all
the slide's patches for every slide with at least one patch among the hits (the candidates);
the query's own slide is left out.
"""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from threads_search.linalg import l2_normalize
from threads_search.query.errors import QueryError
from threads_search.vectorstore import store
from threads_search.vectorstore.compressed import rerank_exact
from threads_search.vectorstore.projection import RegionProjection, projected_rows
from threads_search.vectorstore.vectors import index_kind, load_index, search, search_subset

DEFAULT_IMAGE_MPP = 0.5
ASSUMED_SCALES = (1 / 1.1, 1.0, 1.1)  # tried when an image's µm/px is not given
HITS_PER_QUERY_PATCH = 4  # neighbours fetched per query patch: k * this (+ left-outs)
MAX_QUERY_PATCHES = 256
CROP_MPP = 1.0  # µm/px of the crop images
RERANK_FACTOR = 8  # candidates per wanted hit from an IVF-PQ region index without a tuned one


class RegionSpace:
    """The region index of one generation (module docstring); row i = FAISS id i. ``info``: its
    ``index.json`` entry (``regions.faiss``), whose ``k_factor`` a compressed index is searched
    with. ``features``: the stored L2-normalised patch features ``[P, D]`` (float16, mapped);
    ``vectors``: what is compared, the same rows through the generation's ``projection``
    (``vectorstore.projection``: ``[P, d]``, projected as read; the features themselves in raw
    mode); ``projection`` makes query features comparable with them."""

    def __init__(self, gen: Path, mmap: bool = True, info: dict | None = None) -> None:
        search_params = (info or {}).get("search_params") or {}
        self.k_factor = int(search_params.get("k_factor", RERANK_FACTOR))
        self.table = pd.read_parquet(gen / store.REGIONS)
        self.features = np.load(gen / store.REGION_VECTORS, mmap_mode="r" if mmap else None)
        self.feature_dim = int(self.features.shape[1])
        self.projection = RegionProjection.load(gen / store.REGION_PROJECTION, self.feature_dim)
        self.vectors = projected_rows(self.features, self.projection)
        self.index = load_index(gen / store.FAISS_REGIONS, mmap=mmap)
        if not len(self.table) == len(self.vectors) == self.index.ntotal:
            raise QueryError(
                f"{gen}: the region table, vectors and FAISS index disagree in length; rebuild "
                "the index"
            )
        sids = self.table["slide_id"].to_numpy()
        starts = np.flatnonzero(np.r_[True, sids[1:] != sids[:-1]])
        ends = np.r_[starts[1:], len(sids)]
        self._span = {sids[s]: (int(s), int(e)) for s, e in zip(starts, ends, strict=True)}

    def rows_of(self, slide_id: str) -> np.ndarray:
        s, e = self._span.get(slide_id, (0, 0))
        return np.arange(s, e, dtype=np.int64)

    def rows_of_slides(self, slide_ids) -> np.ndarray:
        parts = [self.rows_of(s) for s in slide_ids]
        return np.concatenate(parts) if parts else np.zeros(0, np.int64)

    def in_box(self, slide_id: str, box, centre: bool) -> np.ndarray:
        """Rows of ``slide_id`` whose patch centre lies in ``box`` (``centre``) or that overlap
        it; ``box``: level-0 ``(x, y, w, h)``."""
        rows = self.rows_of(slide_id)
        t = self.table.iloc[rows]
        x, y, s = t["x"].to_numpy(), t["y"].to_numpy(), t["size_px"].to_numpy()
        bx, by, bw, bh = box
        if centre:
            cx, cy = x + s / 2, y + s / 2
            keep = (cx >= bx) & (cx < bx + bw) & (cy >= by) & (cy < by + bh)
        else:
            keep = (x < bx + bw) & (x + s > bx) & (y < by + bh) & (y + s > by)
        return rows[keep]

    def exact(self, q: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Cosine ``[m, len(rows)]`` of the query patches to the given rows."""
        return q @ np.asarray(self.vectors[rows], np.float32).T


def tile_image(
    rgb: np.ndarray, mpp: float, patch_size: int, target_mpp: float
) -> tuple[np.ndarray, np.ndarray]:
    """uint8 ``[m, ps, ps, 3]``: ``rgb`` (at ``mpp`` µm/px) resampled to ``target_mpp`` and cut
    into patches covering it (module docstring), and each patch's centre ``[m, 2]`` (x, y) in
    µm from the image's top-left corner."""
    from PIL import Image

    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] not in (3, 4) or rgb.dtype != np.uint8:
        raise QueryError(f"an image query must be uint8 [h, w, 3], got {rgb.dtype} {rgb.shape}")
    rgb = rgb[..., :3]
    scale = mpp / target_mpp
    h, w = rgb.shape[:2]
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    if (nw, nh) != (w, h):
        rgb = np.asarray(Image.fromarray(rgb).resize((nw, nh), Image.BILINEAR))
    ps = patch_size
    pad_y, pad_x = max(0, ps - nh), max(0, ps - nw)
    if pad_y or pad_x:
        rgb = np.pad(rgb, ((0, pad_y), (0, pad_x), (0, 0)), mode="symmetric")
    h, w = rgb.shape[:2]
    starts = [(y, x) for y in _starts(h, ps) for x in _starts(w, ps)]
    if len(starts) > MAX_QUERY_PATCHES:
        raise QueryError(
            f"the query covers {len(starts)} patches of {ps} px at {target_mpp} µm/px (at most "
            f"{MAX_QUERY_PATCHES}): give a smaller region or image, or its true µm/px"
        )
    tiles = np.stack([rgb[y : y + ps, x : x + ps] for y, x in starts])
    centres = (np.array([(x, y) for y, x in starts], float) + ps / 2) * target_mpp
    return tiles, centres


def _starts(n: int, ps: int) -> list[int]:
    k = max(1, round(n / ps))
    if k == 1:
        return [max(0, (n - ps) // 2)]
    return [round(i * (n - ps) / (k - 1)) for i in range(k)]


def crop_dir(generation_dir: Path) -> Path:
    """Where crop images of this generation's hits are written: a per-index folder of the
    system's temporary directory (never inside the index or the archive)."""
    key = hashlib.sha256(str(generation_dir.resolve()).encode()).hexdigest()[:16]
    d = Path(tempfile.gettempdir()) / "threads-search-crops" / key
    d.mkdir(parents=True, exist_ok=True)
    return d


def write_crop(path: str, slide_mpp, x: int, y: int, size_px: int, dest: Path) -> str | None:
    """A JPEG of the level-0 square ``(x, y, size_px)`` of slide ``path`` at ``CROP_MPP`` µm/px
    (written once); None when the slide cannot be read."""
    from PIL import Image

    from threads_search.wsi.errors import SlideError
    from threads_search.wsi.slide import open_slide

    if dest.exists():
        return str(dest)
    try:
        with open_slide(path, mpp=slide_mpp if slide_mpp and slide_mpp > 0 else None) as s:
            side = max(16, round(size_px * s.mpp / CROP_MPP))
            level = s.best_level(CROP_MPP)
            n = max(1, round(size_px / s.level_downsamples[level]))
            arr = s.read_region(x, y, level, (n, n))
    except (SlideError, OSError, ValueError):
        return None
    tmp = dest.with_suffix(".tmp.jpg")
    Image.fromarray(arr).resize((side, side), Image.BILINEAR).save(tmp, quality=88)
    tmp.replace(dest)
    return str(dest)


def merge_hits(scores, rows, leave_out: np.ndarray, allowed) -> pd.DataFrame:
    """``row, score`` of the distinct rows found (best score over query patches), best first,
    without ``leave_out`` rows and only ``allowed`` rows (None: all)."""
    s, r = np.asarray(scores).ravel(), np.asarray(rows).ravel()
    ok = r >= 0
    if len(leave_out):
        ok &= ~np.isin(r, leave_out)
    if allowed is not None:
        ok &= np.isin(r, allowed)
    df = pd.DataFrame({"row": r[ok], "score": s[ok]})
    df = df.sort_values("score", ascending=False, kind="stable").drop_duplicates("row")
    return df.reset_index(drop=True)


def nearest(space: RegionSpace, q: np.ndarray, kk: int, allowed) -> tuple:
    """(scores, rows) ``[m, kk]`` of the query patches among all rows or the ``allowed`` ones
    (exact within them: ``search_subset``)."""
    kk = min(kk, space.index.ntotal)
    if allowed is None:
        if index_kind(space.index) in ("flat", "hnsw", "ivf"):
            return search(space.index, q, kk)
        # compressed codes (IVF-PQ) rank near neighbours poorly: re-rank candidates exactly
        _, cand = search(space.index, q, min(kk * space.k_factor, space.index.ntotal))
        return rerank_exact(space.vectors, q, cand, kk)
    if len(allowed) == 0:
        return np.zeros((len(q), 0), np.float32), np.zeros((len(q), 0), np.int64)
    vec = np.asarray(space.vectors[allowed], np.float32) if len(allowed) <= 200_000 else None
    if vec is not None:
        scores = q @ vec.T
        kk = min(kk, len(allowed))
        top = np.argsort(-scores, axis=1)[:, :kk]
        return np.take_along_axis(scores, top, 1), allowed[top]
    return search_subset(space.index, q, kk, allowed)


def normalise_patches(v, dim: int) -> np.ndarray:
    """Patch vectors ``[m, D]`` (or ``[D]``), checked and L2-normalised."""
    v = np.asarray(v, np.float32)
    if v.ndim == 1:
        v = v[None]
    if v.ndim != 2 or v.shape[1] != dim or len(v) == 0:
        raise QueryError(f"patch vectors must be [m, {dim}] (the index's patch features)")
    if not np.isfinite(v).all():
        raise QueryError("patch vectors must be finite")
    return l2_normalize(v)
