"""L2 normalisation, the one implementation: embeddings are compared by cosine everywhere
(vector store, index, prototypes, metrics, model outputs), i.e. by inner products of rows scaled
to unit length."""

from __future__ import annotations

import numpy as np


def l2_normalize(x, dtype=np.float32, inplace: bool = False) -> np.ndarray:
    """``x`` ``[N, D]`` (or ``[D]`` → ``[1, D]``) as a C-contiguous ``dtype`` array (float32 or
    float64) with every row scaled to unit L2 norm; an all-zero row stays zero (cosine 0 to
    everything). A copy, unless ``inplace`` (then ``x`` must already be a C-contiguous 2-D
    ``dtype`` array, normalised and returned as is: no second copy of a large block).

    Float32 goes through FAISS's ``normalize_L2`` (multi-threaded; several times faster than
    NumPy on large blocks and on single queries), float64 through NumPy."""
    if not inplace:
        x = np.array(x, dtype=dtype, order="C", ndmin=2, copy=True)
    elif not (isinstance(x, np.ndarray) and x.dtype == dtype and x.flags.c_contiguous):
        raise ValueError(f"in-place normalisation needs a C-contiguous {np.dtype(dtype)} array")
    if x.ndim != 2:
        raise ValueError(f"expected vectors [N, D], got shape {x.shape}")
    if x.dtype == np.float32:
        import faiss

        faiss.normalize_L2(x)
    else:
        norms = np.linalg.norm(x, axis=1, keepdims=True)
        np.divide(x, norms, out=x, where=norms > 0)
    return x
