"""Synthetic clustered embeddings for tests and benchmarks of the vector index.

Not isotropic noise: real slide embeddings concentrate near a low-dimensional manifold with
clusters (sites, subtypes, stains) of very different sizes and spreads. Each point is
``centre_c + spread_c * (z @ basis_c) + noise``: a cluster centre (random unit vector), a
cluster-specific low-rank subspace (``rank`` directions) scaled by the cluster's spread, and a
small isotropic component. Cluster sizes follow a Zipf-like law. Rows are generated in chunks,
each chunk seeded by ``(seed, chunk index)``, so a 1M x 1024 array (4 GB) can be made without
temporaries larger than one chunk, and the same rows come out whatever the chunk order.
"""

from __future__ import annotations

import numpy as np
from threadpoolctl import threadpool_limits

from threads_search.linalg import l2_normalize


def clustered_embeddings(
    n: int,
    dim: int,
    n_clusters: int = 300,
    rank: int = 16,
    noise: float = 0.08,
    seed: int = 0,
    chunk: int = 65_536,
    out: np.ndarray | None = None,
    normalize: bool = False,
) -> np.ndarray:
    """Return float32 ``[n, dim]`` clustered vectors (written into ``out`` when given).

    ``noise`` is the isotropic component's norm relative to the cluster spread; spreads are
    log-uniform in [0.15, 0.8] (relative to the unit-norm centres). ``normalize`` L2-normalises
    each row (in place, chunk by chunk).
    """
    if out is None:
        out = np.empty((n, dim), dtype=np.float32)
    elif out.shape != (n, dim) or out.dtype != np.float32:
        raise ValueError(f"out must be float32 [{n}, {dim}], got {out.dtype} {out.shape}")
    rng = np.random.default_rng([seed, 0xC1A5])
    centres = rng.standard_normal((n_clusters, dim), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    spreads = np.exp(rng.uniform(np.log(0.15), np.log(0.8), n_clusters)).astype(np.float32)
    bases = rng.standard_normal((n_clusters, rank, dim), dtype=np.float32) / np.float32(
        np.sqrt(dim * rank)
    )
    sizes = 1.0 / np.arange(1, n_clusters + 1) ** 0.7
    probs = rng.permutation(sizes / sizes.sum())
    with threadpool_limits(1):  # many tiny matmuls: BLAS threads only spin on a shared box
        for ci, start in enumerate(range(0, n, chunk)):
            _fill_chunk(
                out, ci, start, min(n, start + chunk), seed, centres, spreads, bases, probs, noise
            )
            if normalize:
                l2_normalize(out[start : min(n, start + chunk)], inplace=True)
    return out


def _fill_chunk(out, ci, start, stop, seed, centres, spreads, bases, probs, noise) -> None:
    """Write rows ``[start, stop)`` of ``out`` from the generator seeded by ``(seed, ci)``."""
    n_clusters, rank, dim = bases.shape
    crng = np.random.default_rng([seed, ci])
    m = stop - start
    counts = np.bincount(crng.choice(n_clusters, size=m, p=probs), minlength=n_clusters)
    z = crng.standard_normal((m, rank), dtype=np.float32)
    # uniform noise with unit variance per coordinate: as good as Gaussian here, 5x cheaper
    block = crng.random((m, dim), dtype=np.float32)
    block -= 0.5
    block *= np.float32(noise * np.sqrt(12.0 / dim))
    lo = 0
    for c in np.flatnonzero(counts):  # rows grouped by cluster, shuffled on the way out
        hi = lo + counts[c]
        seg = block[lo:hi]
        seg += z[lo:hi] @ bases[c]
        seg *= spreads[c]
        seg += centres[c]
        lo = hi
    out[start:stop] = block[crng.permutation(m)]
