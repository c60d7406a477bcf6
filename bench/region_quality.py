"""Region search quality on a painted cohort with per-pixel ground truth.

A cohort of ``--patients`` painted slides (``synth.region_cohort``: 2048 px at 0.5 µm/px, 4
subtypes, tumour 45-55 % of the tissue; default 160, about 2,000 patches: in a 32-slide archive a
tumour query has about 37 patches of its subtype's tumour to find for its 10 places) through the
real features stage (hed-texture, 512 px patches) and ``threads-search index`` with an untrained,
seeded model, twice from the same features: with the default region features (``auto``:
``tissue`` from 50 slides, else ``raw``) and with the other of the two (the baseline, in the same
run); then:

- **own region**: crops of ``--crops`` random indexed patches, as they are and rotated, flipped
  or rescaled by ±10 % (µm/px not told): hit@1 = the top hit is that very patch;
- **tumour → tumour of the same subtype**: every patch that is ≥ 80 % tumour, searched as an
  image among the other slides: precision@10 (hit = same subtype and ≥ 50 % tumour) against
  chance (the share of such patches among the other slides' patches), in both region spaces;
- **slides by their regions**: the same queries with ``aggregate="slide"``: mMV@5 (the majority
  subtype of the top 5 slides is the query's), in both spaces, beside slide-level search from
  the query's slide
  (``search_slides``, the untrained model's embedding) and mean-pooled patch features (exact
  cosine), both mMV@5 over the same query slides.

usage: python bench/region_quality.py [--patients 160] [--crops 60] [--out DIR]
Prints a table; writes bench/results/region_quality.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import print_table, write_results  # noqa: E402

PATCH = 512


def build(root: Path, n: int):
    import torch

    from indexer.build import run_index
    from indexer.config import IndexConfig
    from threads_search.features import default_config, extract_features
    from threads_search.models.bundle import build_model, save_model
    from threads_search.patch_encoders import get_patch_encoder_spec
    from threads_search.synth.region_cohort import paint_region_cohort

    slides, maps = paint_region_cohort(root / "slides", n)
    slides[["slide_id", "subtype", "site"]].to_csv(root / "metadata.csv", index=False)
    extract_features([root / "slides"], root / "feats", default_config("hed-texture", workers=2))
    torch.manual_seed(0)
    spec = get_patch_encoder_spec("hed-texture")
    save_model(
        build_model(spec.to_dict(), slide_config={"head_dim": 64, "attn_dim": 32}), root / "model"
    )
    for name, features in (("index", "auto"), ("index_other", None)):
        if features is None:  # the space auto did not choose, measured beside it
            with open(root / "index" / "index.json") as f:
                chosen = json.load(f)["regions"]["projection"]["mode"]
            features = "raw" if chosen == "tissue" else "tissue"
        cfg = IndexConfig(
            inputs=[str(root / "feats")],
            model=str(root / "model"),
            out=str(root / name),
            metadata=str(root / "metadata.csv"),
            region_features=features,
        )
        run_index(cfg)
    return slides, maps


def crop(path: str, x: int, y: int) -> np.ndarray:
    from threads_search.wsi.slide import open_slide

    with open_slide(path) as s:
        return s.read_region(int(x), int(y), 0, (PATCH, PATCH))


def transformed(img: np.ndarray, how: str) -> np.ndarray:
    if how == "rot90":
        return np.rot90(img).copy()
    if how == "flip":
        return img[:, ::-1].copy()
    if how in ("+10 %", "-10 %"):
        n = round(PATCH * (1.1 if how == "+10 %" else 0.9))
        return np.asarray(Image.fromarray(img).resize((n, n), Image.BILINEAR))
    return img


def space_name(index) -> str:
    """How the index's region search compares patches, for the table."""
    p = index.info()["regions"]["projection"]
    return f"{p['mode']} {p['out_dim']}-d" + (" standardised" if p.get("standardised") else "")


def majority(values: list) -> object:
    """The most frequent value; a tie goes to the one ranked first (not to set order, which
    changes from run to run with the string hash seed)."""
    return max(values, key=values.count)


def main(argv: list[str] | None = None) -> dict:
    import threads_search as ts
    from threads_search.features.h5io import read_features
    from threads_search.synth.region_cohort import tumour_share

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--patients", type=int, default=160)
    ap.add_argument("--crops", type=int, default=60)
    ap.add_argument("--out", type=Path, help="scratch folder (default: a temporary one)")
    args = ap.parse_args(argv)
    root = args.out or Path(tempfile.mkdtemp(prefix="region-quality-"))
    t0 = time.perf_counter()
    slides, maps = build(root, args.patients)
    idx = ts.open_index(root / "index")
    reg = idx.regions.table
    path = dict(zip(slides.slide_id, slides.path, strict=True))
    sub = dict(zip(slides.slide_id, slides.subtype, strict=True))
    rows = []
    pick = reg.iloc[np.random.default_rng(0).choice(len(reg), min(args.crops, len(reg)), False)]
    for how in ("as cut", "rot90", "flip", "+10 %", "-10 %"):
        hits = 0
        for r in pick.itertuples():
            top = idx.search_regions(
                transformed(crop(path[r.slide_id], r.x, r.y), how), k=1, crops=False
            ).iloc[0]
            hits += (top.slide_id, top.x, top.y) == (r.slide_id, r.x, r.y)
        rows.append(
            {
                "measure": f"own region hit@1, crop {how}",
                "value": hits / len(pick),
                "chance": 1 / len(reg),
            }
        )
    share = np.array([tumour_share(maps[r.slide_id], r.x, r.y, PATCH) for r in reg.itertuples()])
    good_sub = reg.slide_id.map(sub).to_numpy()
    queries = reg[share >= 0.8]
    chance = [
        ((share >= 0.5) & (good_sub == sub[r.slide_id]))[
            (reg.slide_id != r.slide_id).to_numpy()
        ].mean()
        for r in queries.itertuples()
    ]
    images = {r.Index: crop(path[r.slide_id], r.x, r.y) for r in queries.itertuples()}
    other = ts.open_index(root / "index_other")
    for label, index in ((f"{space_name(idx)} (auto)", idx), (space_name(other), other)):
        prec, agg = [], []
        for r in queries.itertuples():
            where = f"slide_id <> '{r.slide_id}'"
            res = index.search_regions(images[r.Index], k=10, where=where, crops=False)
            ok = [
                sub[h.slide_id] == sub[r.slide_id]
                and tumour_share(maps[h.slide_id], h.x, h.y, PATCH) >= 0.5
                for h in res.itertuples()
            ]
            prec.append(np.mean(ok))
            a = index.search_regions(images[r.Index], k=5, where=where, aggregate="slide")
            agg.append(majority([sub[s] for s in a.slide_id]) == sub[r.slide_id])
        rows.append(
            {
                "measure": f"tumour queries ({len(queries)}), {label}: precision@10 same-subtype "
                "tumour",
                "value": float(np.mean(prec)),
                "chance": float(np.mean(chance)),
            }
        )
        rows.append(
            {
                "measure": f"same queries, {label}, aggregate='slide': mMV@5 subtype",
                "value": float(np.mean(agg)),
                "chance": float(slides.subtype.value_counts(normalize=True).max()),
            }
        )
    means = {
        s: read_features(root / "feats" / "h5" / f"{s}.h5").features.mean(0)
        for s in slides.slide_id
    }
    m_ids = list(means)
    m = np.stack([means[s] / np.linalg.norm(means[s]) for s in m_ids])
    slide_mv, mean_mv = [], []
    for r in queries.itertuples():
        s5 = idx.search_slides(r.slide_id, k=5)
        slide_mv.append(majority([sub[s] for s in s5.slide_id]) == sub[r.slide_id])
        i = m_ids.index(r.slide_id)
        order = [j for j in np.argsort(-(m @ m[i])) if j != i][:5]
        mean_mv.append(majority([sub[m_ids[j]] for j in order]) == sub[r.slide_id])
    rows.append(
        {
            "measure": "their slides, slide search (untrained model): mMV@5",
            "value": float(np.mean(slide_mv)),
            "chance": float("nan"),
        }
    )
    rows.append(
        {
            "measure": "their slides, mean-pooled features: mMV@5",
            "value": float(np.mean(mean_mv)),
            "chance": float("nan"),
        }
    )
    print_table(f"region search quality, {len(slides)} painted slides, {len(reg)} patches", rows)
    wall = time.perf_counter() - t0
    cmd = " ".join(["python", "bench/region_quality.py", *(argv or sys.argv[1:])])
    name = "region_quality" if args.patients == 160 else f"region_quality_{args.patients}p"
    path_json = write_results(name, {"command": cmd, "rows": rows, "wall_seconds": wall})
    print(f"wall {wall:.0f} s; results: {path_json}")
    return {"rows": rows}


if __name__ == "__main__":
    main()
