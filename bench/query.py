"""End-to-end query latency: API call → result DataFrame with metadata.

Indexes of N synthetic slides (clustered 1024-d embeddings: 200 centres + Gaussian spread, plain
metadata columns incl. ``bucket`` with 100 values, so ``bucket = 7`` selects 1%) are written
through ``write_generation`` (FAISS type chosen automatically: flat up to 20k, then IVF tuned on
held-out rows). For each N:
``open_index`` time (cold: fresh ``Index``), then ``search_slides(slide_id, k=10)`` without and
with the 1% filter, and ``search_slides(vector)``; p50/p99 over ``--queries`` queries after a
warm-up (the first filtered call builds the filter catalog: reported separately). Repeated
filter expressions hit the index's filter-id cache; the "uncached" row uses a new expression
text on every call. ``--omp-threads`` sets FAISS's OpenMP threads (default: FAISS's own),
``--torch-threads`` torch's (default: torch's own).

Molecule → slide: ``search_by_molecule(rna=profile, k=10)`` with a ``--genes``-gene RNA model
(20,000 by default, TCGA RNA-seq size; the default RNA MLP, 1024-wide hidden layers, untrained,
built in the bench and passed to ``open_index``) and TPM profiles as pandas Series (cycling
over 16 different ones), over the same slide index; with two breakdown rows: the profile →
z-score step alone (``RnaNormalizer.transform_raw``) and the RNA encoder's forward pass alone.
``--no-molecule`` skips them.

Usage: python bench/query.py [--sizes 10000 100000] [--queries 300] [--keep DIR]
       [--reuse] [--omp-threads N] [--no-mmap] [--genes 20000] [--no-molecule]
       [--torch-threads N]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import print_table, write_results  # noqa: E402

DIM = 1024


def make_index(root: Path, n: int, seed: int = 0) -> dict:
    from threads_search.vectorstore.writer import write_generation

    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(200, DIM)).astype(np.float32)
    emb = centres[rng.integers(0, 200, n)] + 0.7 * rng.normal(size=(n, DIM)).astype(np.float32)
    ids = [f"S{i:07d}" for i in range(n)]
    slides = pd.DataFrame(
        {
            "slide_id": ids,
            "path": [f"/archive/{s}.svs" for s in ids],
            "patient_id": [f"P{i // 2:07d}" for i in range(n)],
            "mpp": 0.5,
            "width": rng.integers(20_000, 100_000, n),
            "height": rng.integers(20_000, 80_000, n),
            "n_patches": rng.integers(100, 20_000, n),
            "tissue_area_mm2": rng.uniform(10, 300, n),
            "site": rng.choice([f"site_{k}" for k in range(20)], n),
            "diagnosis": rng.choice(["LUAD", "LUSC", "BRCA", "COAD", "PRAD"], n),
            "age": rng.integers(20, 90, n),
            "bucket": np.arange(n) % 100,
        }
    )
    t = time.perf_counter()
    manifest = write_generation(root, slides, emb)
    return {"write_s": time.perf_counter() - t, "faiss": manifest["slides"]["faiss"]["type"]}


def timed(fn, reps: int) -> np.ndarray:
    out = np.empty(reps)
    for i in range(reps):
        t = time.perf_counter()
        fn(i)
        out[i] = (time.perf_counter() - t) * 1e3
    return out


def make_rna_model(n_genes: int, seed: int = 0):
    """An untrained model with a ``n_genes`` RNA vocabulary (default RNA MLP) and TPM profiles."""
    import torch

    from threads_search.models.bundle import build_model
    from threads_search.molecular import RnaNormalizer

    rng = np.random.default_rng(seed)
    genes = pd.Index([f"GENE{i:05d}" for i in range(n_genes)], dtype="str")
    log = pd.DataFrame(rng.normal(2.0, 1.0, size=(32, n_genes)), columns=genes)
    torch.manual_seed(seed)
    model = build_model({"name": "bench-features", "dim": 64}, normalizer=RnaNormalizer.fit(log))
    tpm = np.expm1(np.clip(rng.normal(2.0, 1.0, size=(16, n_genes)), 0, None))
    profiles = [pd.Series(row, index=genes, name=f"Q{i}") for i, row in enumerate(tpm)]
    return model.eval(), profiles


def bench_molecule(root: Path, n: int, queries: int, model, profiles, base: dict) -> list[dict]:
    """search_by_molecule with a profile, then its two parts alone (see the module docstring)."""
    import torch

    from threads_search.query import open_index

    index = open_index(root, model=model)
    t = time.perf_counter()
    first = index.search_by_molecule(rna=profiles[0], k=10)
    first_ms = (time.perf_counter() - t) * 1e3
    assert len(first) == 10 and first["score"].is_monotonic_decreasing
    g = len(model.genes_rna)
    frames = [p.to_frame().T for p in profiles]
    x = torch.from_numpy(model.normalizer.transform_raw(frames[0], "tpm"))

    @torch.inference_mode()
    def forward(x):
        return model.rna(x)

    cases = {
        f"RNA profile ({g} genes) → slides": lambda i: index.search_by_molecule(
            rna=profiles[i % len(profiles)], k=10
        ),
        "  part: profile → z-scores": lambda i: model.normalizer.transform_raw(
            frames[i % len(frames)], "tpm"
        ),
        "  part: RNA encoder forward": lambda i: forward(x),
    }
    rows = []
    for name, fn in cases.items():
        timed(fn, 5)  # warm-up
        ms = timed(fn, queries)
        print(f"{n} {name}: p50 {np.percentile(ms, 50):.1f} ms", file=sys.stderr, flush=True)
        p50, p99 = float(np.percentile(ms, 50)), float(np.percentile(ms, 99))
        rows.append(
            {**base, "query": name, "p50_ms": p50, "p99_ms": p99, "first_filter_ms": first_ms}
        )
    return rows


def bench_size(
    root: Path, n: int, queries: int, reuse: bool = False, mmap: bool = True, molecule=None
) -> list[dict]:
    from threads_search.query import open_index

    if reuse and (root / "index.json").exists():
        m = open_index(root).manifest
        built = {"write_s": m.get("write_seconds"), "faiss": m["slides"]["faiss"]["type"]}
    else:
        shutil.rmtree(root, ignore_errors=True)
        built = make_index(root, n)
    opens = []
    for _ in range(5):
        t = time.perf_counter()
        index = open_index(root, mmap=mmap)
        opens.append((time.perf_counter() - t) * 1e3)
    rng = np.random.default_rng(1)
    qids = index.slides["slide_id"].to_numpy()[rng.integers(0, n, queries)]
    vecs = rng.normal(size=(queries, DIM)).astype(np.float32)
    where = "bucket = 7"
    t = time.perf_counter()
    first = index.search_slides(qids[0], k=10, where=where)
    first_filter_ms = (time.perf_counter() - t) * 1e3
    assert set(first["bucket"]) == {7} and len(first) == 10
    cases = {
        "slide_id": lambda i: index.search_slides(qids[i], k=10),
        "slide_id + 1% filter": lambda i: index.search_slides(qids[i], k=10, where=where),
        "vector": lambda i: index.search_slides(vecs[i], k=10),
        "vector + 1% filter": lambda i: index.search_slides(vecs[i], k=10, where=where),
        # a new expression text every call: guard, DuckDB and subset search, no filter cache
        "slide_id + 1% filter, uncached": lambda i: index.search_slides(
            qids[i], k=10, where=f"bucket = 7 AND age >= {-i - 1000 * n}"
        ),
    }
    rows = []
    for name, fn in cases.items():
        timed(fn, 5)  # warm-up
        ms = timed(fn, queries)
        print(f"{n} {name}: p50 {np.percentile(ms, 50):.1f} ms", file=sys.stderr, flush=True)
        rows.append(
            {
                "slides": n,
                "query": name,
                "faiss": built["faiss"] + ("" if mmap else " (in RAM)"),
                "p50_ms": float(np.percentile(ms, 50)),
                "p99_ms": float(np.percentile(ms, 99)),
                "open_index_ms": float(np.median(opens)),
                "first_filter_ms": first_filter_ms,
                "write_s": built["write_s"],
            }
        )
    if molecule is not None:  # first_filter_ms: the first molecule query (no model load)
        rows += bench_molecule(root, n, queries, *molecule, base=dict(rows[0]))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--keep", type=Path, default=None, help="Write the indexes here (kept).")
    ap.add_argument("--reuse", action="store_true", help="Reuse indexes already in --keep.")
    ap.add_argument("--omp-threads", type=int, default=None)
    ap.add_argument("--no-mmap", action="store_true", help="open_index(mmap=False).")
    ap.add_argument("--genes", type=int, default=20_000, help="RNA vocabulary of the model.")
    ap.add_argument("--no-molecule", action="store_true", help="Skip molecule → slide rows.")
    ap.add_argument("--torch-threads", type=int, default=None, help="torch.set_num_threads.")
    args = ap.parse_args()
    import faiss

    if args.omp_threads:
        faiss.omp_set_num_threads(args.omp_threads)
    if args.torch_threads:
        import torch

        torch.set_num_threads(args.torch_threads)
    molecule = None if args.no_molecule else make_rna_model(args.genes)
    rows = []
    for n in args.sizes:
        base = args.keep or Path(tempfile.mkdtemp(prefix="bench_query_"))
        root = base / f"index_{n}"
        try:
            reuse = args.keep is not None and args.reuse
            rows += bench_size(root, n, args.queries, reuse, not args.no_mmap, molecule)
        finally:
            if args.keep is None:
                shutil.rmtree(base, ignore_errors=True)
    print_table("query latency (API call → DataFrame with metadata)", rows)
    path = write_results(
        "query",
        {
            "rows": rows,
            "queries": args.queries,
            "dim": DIM,
            "filter": "bucket = 7 (1% of slides)",
            "k": 10,
            "omp_threads": faiss.omp_get_max_threads(),
            "mmap": not args.no_mmap,
            "rna_genes": args.genes,
            "torch_threads": _torch_threads(),
        },
    )
    print(f"wrote {path}")


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


if __name__ == "__main__":
    main()
