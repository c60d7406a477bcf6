"""GPU paths, end to end, on a CUDA machine: the features stage with a timm patch encoder
(autocast per encoder precision), THREADS training with bf16 autocast, slide embedding of a
large bag, and the compressed region index (coarse k-means on the GPU) of 10^6 synthetic patch
vectors (``bench/region_scale.py``'s generator), each compared with the CPU result of the same
computation.

usage: python bench/gpu_check.py [--out DIR]   (needs a CUDA GPU; writes gpu_check.json)
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    a = a / np.linalg.norm(a, axis=-1, keepdims=True)
    b = b / np.linalg.norm(b, axis=-1, keepdims=True)
    return float((a * b).sum(-1).min())


def check_features(tmp: Path, report: dict) -> None:
    from threads_search.features import default_config, extract_features, read_features
    from threads_search.patch_encoders import create_patch_encoder
    from threads_search.synth import make_slide

    slide = make_slide(tmp / "slides" / "gpu.tiff", 3072, 2048, 0.5, seed=1).path
    for name in ("resnet50-trunc", "uni"):
        depth = None if name == "resnet50-trunc" else 4
        enc = create_patch_encoder(name, device="cpu", random_weights=True, depth=depth)
        ckpt = tmp / f"{name}.pt"
        torch.save(enc.model.state_dict(), ckpt)
        feats = {}
        for dev in ("cuda", "cpu"):
            cfg = default_config(name, checkpoint=str(ckpt), device=dev, workers=2, batch_size=32)
            t = time.perf_counter()
            extra = {"depth": depth} if depth else {}
            encoder = create_patch_encoder(name, checkpoint=str(ckpt), device=dev, **extra)
            outs = extract_features([slide], tmp / f"f_{name}_{dev}", cfg, encoder=encoder)
            assert outs[0].state == "done", outs[0].error
            feats[dev] = read_features(tmp / f"f_{name}_{dev}" / "h5" / "gpu.h5").features
            report[f"features_{name}_{dev}_s"] = time.perf_counter() - t
        report[f"features_{name}_min_cosine_gpu_vs_cpu"] = _cos(feats["cuda"], feats["cpu"])
        report[f"features_{name}_n_patches"] = len(feats["cpu"])


def check_training(tmp: Path, report: dict) -> None:
    from threads_search.models.bundle import load_model
    from threads_search.synth import make_cohort, write_feature_bags
    from trainer.cli import main

    cohort = make_cohort(n_patients=400, seed=0)
    paths = cohort.write(tmp / "cohort")
    write_feature_bags(cohort, tmp / "bags", dim=768, n_patches=(200, 800))
    for dev in ("cuda", "cpu"):
        t = time.perf_counter()
        rc = main(
            [
                "--features",
                str(tmp / "bags"),
                "--pairs",
                str(paths["pairs"]),
                "--rna",
                str(paths["rna"]),
                "--dna",
                str(paths["maf"]),
                "--metadata",
                str(paths["metadata"]),
                "--out",
                str(tmp / f"model_{dev}"),
                "--epochs",
                "3",
                "--device",
                dev,
                "--quiet",
            ]
        )
        assert rc == 0
        log = [json.loads(x) for x in (tmp / f"model_{dev}" / "training_log.jsonl").open()]
        report[f"train_{dev}_s"] = time.perf_counter() - t
        report[f"train_{dev}_loss"] = [round(h["train_loss"], 4) for h in log]
        report[f"train_{dev}_val_mean_recall"] = round(log[-1].get("val_mean_recall", -1), 4)
    big = np.random.default_rng(0).normal(size=(100_000, 768)).astype(np.float32)
    embs = {}
    for dev in ("cuda", "cpu"):
        model = load_model(tmp / "model_cuda", device=dev)
        t = time.perf_counter()
        embs[dev] = model.embed_slide(big)
        report[f"embed_100k_patches_{dev}_s"] = time.perf_counter() - t
    report["embed_100k_cosine_gpu_vs_cpu"] = _cos(embs["cuda"][None], embs["cpu"][None])


def check_regions(tmp: Path, report: dict, n_slides: int = 2000) -> None:
    """The compressed region index of ``n_slides`` x 500 patch vectors (256-d) built with the
    coarse k-means on the GPU and on the CPU: training time, recall@10 of held-out slides."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from region_scale import SLIDE_PATCHES, Generator

    from threads_search.vectorstore.compressed import build_compressed

    gen = Generator(256)
    x = np.concatenate([gen.slides(i, 100) for i in range(0, n_slides, 100)])
    groups = np.arange(0, len(x), SLIDE_PATCHES)
    for dev, use in (("cuda", True), ("cpu", False)):
        info = build_compressed(x, tmp / f"regions_{dev}.index", groups=groups, use_gpu=use)
        report[f"regions_{len(x)}_{dev}_gpu"] = info["gpu"]
        report[f"regions_{len(x)}_{dev}_train_s"] = round(info["train_seconds"], 1)
        report[f"regions_{len(x)}_{dev}_build_s"] = round(info["build_seconds"], 1)
        report[f"regions_{len(x)}_{dev}_recall_at_10"] = round(info["recall_at_k"], 4)
        report[f"regions_{len(x)}_{dev}_search"] = info["search_params"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default=".")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("no CUDA GPU visible to torch", file=sys.stderr)
        return 2
    from threads_search.device import resolve_device

    report = {
        "gpu": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "auto_device": resolve_device("auto"),
    }
    with tempfile.TemporaryDirectory() as tmp:
        for check in (check_features, check_training, check_regions):
            try:
                check(Path(tmp), report)
            except Exception as e:  # noqa: BLE001 - report every check
                report[f"{check.__name__}_error"] = f"{type(e).__name__}: {e}"
    out = Path(args.out) / "gpu_check.json"
    out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    return 0 if not any(k.endswith("_error") for k in report) else 1


if __name__ == "__main__":
    sys.exit(main())
