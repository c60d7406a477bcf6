"""Feature-level stain/site augmentation: ``train --augment-by COLUMN`` (e.g. ``site``).

A site's stain look moves every patch feature; re-styling a bag as if it came from another site
shows the model the same tissue under another look, so the site stops being a usable shortcut.
From the TRAINING items only (:meth:`SiteStyle.fit`), each value ``v`` of the column gets the
mean ``mu_v`` and standard deviation ``sd_v`` ``[D]`` of its patch features, per feature
dimension, over all patches of all its training bags (population sd, floored at
:data:`SD_FLOOR`). At each training step, each bag whose item has a value ``s`` is, with
probability ``augment_p``, re-styled to a value ``t != s`` drawn uniformly:

``x' = (x - mu_s) / sd_s * sd_t + mu_t``  (per patch, per dimension)

so the re-styled patches of value ``s`` have, pooled, exactly value ``t``'s mean and sd.
Items without a value (group ``(missing)``) have no statistics and are never re-styled.
Validation and every embedding outside training are never augmented. The statistics are saved
in the training state (``checkpoints/state.pt``) and taken from there on ``--resume``, so a
resumed run re-styles exactly as the interrupted one.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from trainer.balance import MISSING

SD_FLOOR = 1e-6  # smallest per-dimension sd divided by (a constant feature)


@dataclass
class SiteStyle:
    """Per-value feature statistics: ``mean``/``std`` float64 ``[S, D]`` for ``values[S]``;
    ``patches``/``items`` counted per value (training items only)."""

    column: str
    values: list[str]
    mean: np.ndarray = field(repr=False)
    std: np.ndarray = field(repr=False)
    patches: list[int] = field(default_factory=list)
    items: list[int] = field(default_factory=list)

    @classmethod
    def fit(cls, data, items, column: str) -> SiteStyle:
        """Statistics of ``column``'s values over the patches of ``items`` (the training
        items; ``data.bag(item)`` float32 ``[N, D]``), merged bag by bag (Chan's update, in
        float64). Items in the ``(missing)`` group are left out."""
        acc: dict[str, list] = {}  # value -> [n patches, mean, M2, n items]
        for it in items:
            v = it.groups[column]
            if v == MISSING:
                continue
            x = data.bag(it).astype(np.float64)
            n_b, m_b = len(x), x.mean(0)
            m2_b = ((x - m_b) ** 2).sum(0)
            if v not in acc:
                acc[v] = [n_b, m_b, m2_b, 1]
                continue
            n, m, m2, k = acc[v]
            tot = n + n_b
            d = m_b - m
            acc[v] = [tot, m + d * (n_b / tot), m2 + m2_b + d**2 * (n * n_b / tot), k + 1]
        values = sorted(acc)
        mean = np.stack([acc[v][1] for v in values])
        std = np.stack([np.sqrt(acc[v][2] / acc[v][0]) for v in values])
        return cls(
            column,
            values,
            mean,
            np.maximum(std, SD_FLOOR),
            [int(acc[v][0]) for v in values],
            [int(acc[v][3]) for v in values],
        )

    def to_state(self) -> dict:
        return {
            "column": self.column,
            "values": list(self.values),
            "mean": self.mean,
            "std": self.std,
            "patches": list(self.patches),
            "items": list(self.items),
        }

    @classmethod
    def from_state(cls, d: dict) -> SiteStyle:
        return cls(
            d["column"],
            list(d["values"]),
            np.asarray(d["mean"], np.float64),
            np.asarray(d["std"], np.float64),
            list(d["patches"]),
            list(d["items"]),
        )

    def same_as(self, other: SiteStyle) -> bool:
        return (
            self.values == other.values
            and self.mean.shape == other.mean.shape
            and np.allclose(self.mean, other.mean)
            and np.allclose(self.std, other.std)
        )

    def summary(self) -> dict:
        """JSON-ready: per value its training items and patches (for the report)."""
        return {
            v: {"items": i, "patches": p}
            for v, i, p in zip(self.values, self.items, self.patches, strict=True)
        }

    def affine(self, source: str, target: str) -> tuple[np.ndarray, np.ndarray]:
        """``(scale, shift)`` float64 ``[D]`` with ``x' = x * scale + shift`` re-styling value
        ``source`` to ``target``."""
        s, t = self.values.index(source), self.values.index(target)
        scale = self.std[t] / self.std[s]
        return scale, self.mean[t] - self.mean[s] * scale

    def restyle(self, x: np.ndarray, source: str, target: str) -> np.ndarray:
        """Patches ``x`` ``[N, D]`` of value ``source`` re-styled to ``target`` (float32)."""
        scale, shift = self.affine(source, target)
        return (x * scale + shift).astype(np.float32)

    def apply(self, feats, mask, batch, rng: np.random.Generator, p: float) -> int:
        """Re-style, in place, each bag of a collated batch (``feats`` float32 ``[B, N, D]``,
        ``mask`` bool ``[B, N]``, ``batch`` its items) with probability ``p`` to another value
        drawn uniformly. Draws ``2 B`` numbers from ``rng`` whatever happens (a fixed stream).
        Returns the number of bags re-styled."""
        import torch

        b = len(batch)
        u = rng.random(b)
        pick = rng.integers(0, max(1, len(self.values) - 1), b)
        done = 0
        for i, it in enumerate(batch):
            v = it.groups.get(self.column, MISSING)
            if u[i] >= p or v not in self.values:
                continue
            s = self.values.index(v)
            t = int(pick[i]) + (int(pick[i]) >= s)  # any value but s
            scale, shift = self.affine(v, self.values[t])
            m = mask[i]
            feats[i, m] = feats[i, m] * torch.from_numpy(scale.astype(np.float32)) + (
                torch.from_numpy(shift.astype(np.float32))
            )
            done += 1
        return done
