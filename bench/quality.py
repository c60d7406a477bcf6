"""Quality of the trained THREADS slide encoder against mean pooling and an untrained THREADS,
on two synthetic cohorts with known ground truth, evaluated on the held-out **test** patients.

Cohorts (``threads_search.synth``): *features*, feature-level bags (``make_cohort`` default
difficulty, seed 0, split 0.7/0.13/0.17 so >= 2,000 training and >= 500 test patients;
``write_feature_bags`` 64-d, 100-400 patches per slide); *pixels*, painted 2048 x 2048 px slides
at 0.5 µm/px (600 patients, seed 1, split 0.5/0.1/0.4 so ~240 test patients; ``write_slides``
defaults: tumour 20-40 % of the tissue, lymphocytic infiltrate over 0-60 % of the rest) through
the real features stage (``hed-texture``, 512 px patches).

Models per cohort: **THREADS** (``slide_encoder="threads"``) and **mean** (mean pooling), trained
by ``trainer.loop.train`` with identical settings (epochs, lr, batch size, patches, molecular
encoders, seed; the metadata split, so test patients never reach training or model selection;
bundle = best epoch by ``val_mean_recall``); **untrained THREADS**: ``build_model`` with the trained
THREADS bundle's architecture, vocabularies and RNA normaliser after ``torch.manual_seed(seed)``,
which is how ``train`` initialises its model, i.e. the weights before the first step.

Test embeddings come from the bundle's public API (``embed_slide`` on ``FEATURES_DIR/h5/*.h5``,
``embed_rna`` on the RNA matrix, ``embed_dna`` on the MAF), for all patients; as a check of that
path, the validation recall the trainer logged for the chosen epoch is recomputed from them.

Rows (test split): molecule→slide Recall@1/5/10 (RNA, DNA; gallery = all test slides),
slide→slide mMV@5 for subtype (patient-level exclusion), zero-shot subtype balanced accuracy with
molecular prototypes (mean RNA embedding per subtype over the TRAIN patients), linear probe
(C=0.5, balanced, features z-scored on the train slides) balanced accuracy for subtype and
TP53_mutated (fit on train slides), few-shot 1-16 per class (10 draws), zero-shot / linear probe,
training throughput and peak memory. The untrained baseline, the probe and the few-shot curve are
``threads-search evaluate``'s code (``threads_search.evaluation``) on the train/test split.

Settings (``Hyper``), chosen to run on 2 CPU cores: THREADS 2 heads x 128 wide, gated attention
64 wide, 256-d embeddings (116k slide-encoder parameters at 64-d input); RNA/DNA MLPs with one
256-wide hidden layer; dropout 0.1; AdamW lr 3e-4, wd 0.01, 1 warm-up epoch, cosine; InfoNCE
T0 = 0.07; batch 64 and 12 epochs (pixels: 32 and 40); 256 patches sampled per bag per step (all
at evaluation). One torch thread (``--threads``): on this shared machine 2 threads were 2-7x
slower than 1 (oversubscription).

Each model is trained with ``--seeds`` training seeds (default 1 on the feature-level cohort,
3 on the smaller pixel-level one) and every row is the mean over them; the JSON keeps each seed's
rows and their standard deviation.

usage: python bench/quality.py [--quick] [--epochs N] [--pixel-epochs N] [--seeds N] [--out DIR]
                               [--skip-pixel] [--skip-features]
Prints one table per cohort; writes bench/results/quality.json (quality_quick.json with --quick)
and bench/results/quality_fewshot.png.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, print_table, write_results  # noqa: E402
from quality_eval import check_val_recall, embed, evaluate  # noqa: E402
from quality_plot import plot_fewshot  # noqa: E402

from threads_search.evaluation.baselines import untrained_like  # noqa: E402
from threads_search.models.bundle import load_model  # noqa: E402

TORCH_THREADS = 1  # set by --threads: 1 beat 2 on this shared 2-core machine
WORKERS = 2  # painting and features-stage worker processes


@dataclass
class CohortSpec:
    """A synthetic cohort: ``kind`` features (bags of ``dim``-d, ``n_patches`` per slide) or
    pixels (``size`` x ``size`` px slides at 0.5 µm/px, features by ``hed-texture``)."""

    name: str
    kind: str
    n_patients: int
    seed: int
    split: tuple[float, float, float] = (0.7, 0.15, 0.15)
    dim: int = 64
    n_patches: tuple[int, int] = (100, 400)
    size: int = 1536


@dataclass
class Hyper:
    """Training settings shared by the THREADS and mean models of one cohort."""

    epochs: int = 12
    batch_size: int = 64
    lr: float = 3e-4
    max_patches: int = 256
    temperature: float = 0.07
    heads: int = 2
    head_dim: int = 128
    attn_dim: int = 64
    out_dim: int = 256
    dropout: float = 0.1
    mol_hidden: int = 256
    weight_decay: float = 1e-2
    warmup_epochs: float = 1.0


def prepare(spec: CohortSpec, root: Path) -> dict:
    """Generate the cohort's tables and features under ``root/<name>`` (reused when a previous
    run with the same spec finished). Returns paths and stage seconds."""
    from threads_search.synth import make_cohort, write_feature_bags, write_slides

    d = root / spec.name
    cohort = make_cohort(spec.n_patients, split=spec.split, seed=spec.seed)
    info = {"cohort": cohort, "features": d / "features", "seconds": {}}
    if reuse(d, spec, info):
        return info
    info["paths"] = cohort.write(d / "cohort")
    t = time.perf_counter()
    if spec.kind == "features":
        write_feature_bags(cohort, info["features"], dim=spec.dim, n_patches=spec.n_patches)
        info["seconds"]["feature_bags"] = time.perf_counter() - t
    else:
        from threads_search.features import default_config, extract_features

        write_slides(cohort, d / "slides", spec.size, spec.size, workers=WORKERS)
        info["seconds"]["paint_slides"] = time.perf_counter() - t
        t = time.perf_counter()
        outcomes = extract_features(
            [d / "slides"], info["features"], default_config("hed-texture", workers=WORKERS)
        )
        info["seconds"]["features_stage"] = time.perf_counter() - t
        failed = [o for o in outcomes if getattr(o, "state", "done") != "done"]
        if failed:
            raise RuntimeError(f"features stage failed on {len(failed)} slides: {failed[:3]}")
    mark_ready(d, spec, info)
    return info


def reuse(d: Path, spec, info: dict) -> bool:
    """True (``info["paths"]`` set) when ``d`` holds a finished preparation of the same
    ``spec`` (a dataclass); else ``d`` is cleared for a new one."""
    marker, key = d / "ready.json", json.loads(json.dumps(asdict(spec)))
    if marker.exists() and json.loads(marker.read_text())["spec"] == key:
        saved = json.loads(marker.read_text())
        info["paths"] = {k: Path(v) for k, v in saved["paths"].items()}
        info["seconds"] = saved.get("seconds", {})  # of the run that prepared it
        return True
    shutil.rmtree(d, ignore_errors=True)
    return False


def mark_ready(d: Path, spec, info: dict) -> None:
    """Record a finished preparation of ``spec`` in ``d`` (see :func:`reuse`)."""
    paths = {k: str(p) for k, p in info["paths"].items()}
    key = json.loads(json.dumps(asdict(spec)))
    seconds = info.get("seconds", {})
    (d / "ready.json").write_text(json.dumps({"spec": key, "paths": paths, "seconds": seconds}))


def train_config(info: dict, hp: Hyper, encoder: str, out: Path, seed: int = 0) -> dict:
    from trainer.config import TrainConfig

    p = info["paths"]
    slide = {"out_dim": hp.out_dim, "dropout": hp.dropout}
    if encoder == "threads":
        slide.update(heads=hp.heads, head_dim=hp.head_dim, attn_dim=hp.attn_dim)
    mol = {"hidden_dims": [hp.mol_hidden], "dropout": hp.dropout}
    return TrainConfig(
        features=str(info["features"]),
        pairs=str(p["pairs"]),
        rna=str(p["rna"]),
        dna=str(p["maf"]),
        metadata=str(p["metadata"]),
        out=str(out),
        slide_encoder=encoder,
        slide_config=slide,
        rna_config=mol,
        dna_config=mol,
        epochs=hp.epochs,
        batch_size=hp.batch_size,
        max_patches=hp.max_patches,
        lr=hp.lr,
        weight_decay=hp.weight_decay,
        warmup_epochs=hp.warmup_epochs,
        temperature=hp.temperature,
        patience=0,
        seed=seed,
        device="cpu",
        threads=TORCH_THREADS,
    ).to_dict()


def _train_child(cfg: dict) -> dict:
    """Runs in a fresh process: train, and report the history and this process's peak RSS."""
    torch.set_num_threads(cfg["threads"])
    from trainer.config import TrainConfig
    from trainer.loop import train

    t = time.perf_counter()
    res = train(TrainConfig.from_dict(cfg), progress=False)
    return {
        "history": res.history,
        "best_epoch": res.best_epoch,
        "seconds": time.perf_counter() - t,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def train_model(cfg: dict) -> dict:
    with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
        run = pool.submit(_train_child, cfg).result()
    for h in run["history"]:
        print(
            f"  epoch {h['epoch']:>3}: loss {h['train_loss']:.3f}  T {h['temperature']:.3f}  "
            f"val R {h.get('val_mean_recall', float('nan')):.3f}  "
            f"{h['train_seconds']:.1f}+{h['val_seconds']:.1f} s  "
            f"{h['slides_per_s']:.1f} slides/s",
            flush=True,
        )
    return run


def run_cohort(spec: CohortSpec, hp: Hyper, root: Path, seeds: int = 1) -> dict:
    """Train and evaluate THREADS, mean and untrained THREADS with training seeds 0..seeds-1;
    each row is the mean over the seeds (``rows_by_seed`` and ``rows_sd`` keep the spread)."""
    print(
        f"\n== cohort {spec.name}: {asdict(spec)}\n   training: {asdict(hp)}, {seeds} seed(s)",
        flush=True,
    )
    t = time.perf_counter()
    info = prepare(spec, root)
    print(f"   data ready in {time.perf_counter() - t:.0f} s {info['seconds']}", flush=True)
    per_seed = [_run_seed(spec, hp, root, info, seed) for seed in range(seeds)]
    res: dict = {
        "spec": asdict(spec),
        "hyper": asdict(hp),
        "seeds": seeds,
        "data_seconds": info["seconds"],
        "models": {},
    }
    for name, first in per_seed[0].items():
        by_seed = [run[name]["rows"] for run in per_seed]
        m = dict(first)
        m["rows"] = {k: float(np.mean([r[k] for r in by_seed])) for k in first["rows"]}
        m["rows_sd"] = {k: float(np.std([r[k] for r in by_seed])) for k in first["rows"]}
        m["rows_by_seed"] = by_seed
        if seeds > 1:
            m["val_recall_check_by_seed"] = [run[name].get("val_recall_check") for run in per_seed]
        res["models"][name] = m
    res["targets"] = targets(res)
    return res


def _run_seed(spec: CohortSpec, hp: Hyper, root: Path, info: dict, seed: int) -> dict:
    models, runs = {}, {}
    for name, enc in (("THREADS", "threads"), ("mean", "mean")):
        out = root / spec.name / f"model_{enc}_seed{seed}"
        shutil.rmtree(out, ignore_errors=True)
        print(f"-- training {name}, seed {seed}", flush=True)
        runs[name] = train_model(train_config(info, hp, enc, out, seed))
        models[name] = load_model(out)
    models["untrained THREADS"] = untrained_like(models["THREADS"], seed=seed)
    res = {}
    for name, model in models.items():
        t = time.perf_counter()
        emb = embed(model, info)
        ev = evaluate(emb, info)
        run = runs.get(name)
        m = {
            "rows": ev["rows"],
            **ev["extra"],
            "zero_shot_balanced_accuracy": ev["rows"]["zero-shot bal. acc (subtype)"],
            "eval_seconds": time.perf_counter() - t,
        }
        if run:
            logged = model.training_params.get("metrics", {}).get("val_mean_recall")
            m["val_recall_check"] = check_val_recall(emb, info, logged)
            sps = [h["slides_per_s"] for h in run["history"]]
            m.update(
                best_epoch=run["best_epoch"],
                train_seconds=run["seconds"],
                history=run["history"],
                peak_rss_mib=run["peak_rss_mib"],
                slides_per_s_median=float(np.median(sps)),
                epoch_seconds_median=float(np.median([h["train_seconds"] for h in run["history"]])),
                n_params=sum(p.numel() for p in model.slide.parameters()),
            )
            n_slides = int((info["cohort"].slides.split == "train").sum())
            m["slides_per_s_wall"] = n_slides * len(run["history"]) / run["seconds"]
            m["rows"]["train slides/s (median epoch)"] = m["slides_per_s_median"]
            m["rows"]["train slides/s (wall, all epochs)"] = m["slides_per_s_wall"]
            m["rows"]["train peak RSS MiB"] = m["peak_rss_mib"]
        res[name] = m
    return res


def targets(res: dict) -> dict:
    """THREADS > mean on every quality row; zero-shot >= 0.8 x linear probe (THREADS)."""
    thr, mean = res["models"]["THREADS"]["rows"], res["models"]["mean"]["rows"]
    quality = [k for k in thr if not k.startswith("train ") and k != "zero-shot / linear probe"]
    lost = {k: (thr[k], mean[k]) for k in quality if not thr[k] > mean[k]}
    ratio = thr["zero-shot / linear probe"]
    return {
        "threads_beats_mean_every_row": not lost,
        "rows_not_beaten": lost,
        "zero_shot_over_linear_probe": ratio,
        "zero_shot_ratio_ok": ratio >= 0.8,
    }


def show(res: dict) -> None:
    names = list(res["models"])
    keys = list(res["models"]["THREADS"]["rows"])
    rows = [
        {"metric (test split)": k, **{n: res["models"][n]["rows"].get(k, "-") for n in names}}
        for k in keys
    ]
    seeds = res.get("seeds", 1)
    print_table(f"quality: {res['spec']['name']} cohort, mean of {seeds} training seed(s)", rows)
    t = res["targets"]
    print(
        f"THREADS beats mean on every quality row: {t['threads_beats_mean_every_row']}"
        + (f" (not on: {t['rows_not_beaten']})" if t["rows_not_beaten"] else "")
    )
    print(
        f"zero-shot / linear probe (THREADS): {t['zero_shot_over_linear_probe']:.3f} "
        f"(target >= 0.8: {t['zero_shot_ratio_ok']})"
    )
    for n in names:
        chk = res["models"][n].get("val_recall_check")
        if chk and chk.get("recomputed") is not None:
            print(
                f"{n}: val_mean_recall logged {chk['logged']:.4f}, recomputed from the bundle "
                f"{chk['recomputed']:.4f}"
            )


def main(argv: list[str] | None = None) -> dict:
    global TORCH_THREADS
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--sites" in argv:  # the multi-site (stain/site-confounded) cohort rows
        import quality_sites

        return quality_sites.main([a for a in argv if a != "--sites"])
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small cohorts, few epochs (smoke run)")
    ap.add_argument("--epochs", type=int, help="epochs on the feature-level cohort")
    ap.add_argument("--pixel-epochs", type=int, help="epochs on the pixel-level cohort")
    ap.add_argument("--lr", type=float)
    ap.add_argument("--batch-size", type=int)
    ap.add_argument("--head-dim", type=int)
    ap.add_argument("--temperature", type=float)
    ap.add_argument("--max-patches", type=int)
    ap.add_argument("--dropout", type=float)
    ap.add_argument("--threads", type=int, default=TORCH_THREADS, help="torch CPU threads (<= 2)")
    ap.add_argument("--out", type=Path, help="scratch dir (kept; its cohorts are reused)")
    ap.add_argument(
        "--seeds",
        type=int,
        help="training seeds per model, rows averaged "
        "(default: 1 on the feature-level cohort, 3 on the pixel-level one)",
    )
    ap.add_argument("--skip-pixel", action="store_true")
    ap.add_argument("--skip-features", action="store_true")
    ap.add_argument(
        "--sites",
        action="store_true",
        help="instead: the multi-site cohort whose site stain goes with the subtype in training "
        "(bench/quality_sites.py; its options follow)",
    )
    args = ap.parse_args(argv)
    TORCH_THREADS = args.threads
    torch.set_num_threads(TORCH_THREADS)
    t0 = time.perf_counter()
    q = args.quick
    feat = CohortSpec(
        "features", "features", 600 if q else 3000, 0, (0.6, 0.15, 0.25) if q else (0.7, 0.13, 0.17)
    )
    pix = CohortSpec(
        "pixels", "pixels", 40 if q else 600, 1, (0.5, 0.1, 0.4), size=1024 if q else 2048
    )
    hp_feat = Hyper(epochs=args.epochs or (4 if q else 12))
    hp_pix = Hyper(epochs=args.pixel_epochs or (5 if q else 40), batch_size=32)
    for hp in (hp_feat, hp_pix):
        for k in ("lr", "batch_size", "head_dim", "temperature", "max_patches", "dropout"):
            if getattr(args, k) is not None:
                setattr(hp, k, getattr(args, k))
        hp.attn_dim = hp.head_dim // 2
    root = args.out or Path(tempfile.mkdtemp(prefix="quality-"))
    root.mkdir(parents=True, exist_ok=True)
    results: dict = {}
    try:
        if not args.skip_features:
            results["features"] = run_cohort(feat, hp_feat, root, args.seeds or 1)
            show(results["features"])
        if not args.skip_pixel:
            results["pixels"] = run_cohort(pix, hp_pix, root, args.seeds or (1 if q else 3))
            show(results["pixels"])
    finally:
        if args.out is None:
            shutil.rmtree(root, ignore_errors=True)
    peak = {
        "self_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "children_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
    }
    wall = time.perf_counter() - t0
    print(f"wall time {wall:.0f} s; peak RSS {peak}")
    name = "quality_quick" if q else "quality"
    payload = {
        "command": " ".join(["python", "bench/quality.py", *(argv or sys.argv[1:])]),
        "wall_seconds": wall,
        "peak_rss": peak,
        "torch_threads": TORCH_THREADS,
        "cohorts": results,
    }
    print(f"results: {write_results(name, payload)}")
    if results:
        png = RESULTS / ("quality_fewshot_quick.png" if q else "quality_fewshot.png")
        print(f"few-shot plot: {plot_fewshot(results, png)}")
    return payload


if __name__ == "__main__":
    main()
