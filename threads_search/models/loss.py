"""Symmetric InfoNCE with a learnable temperature (CLIP-style), the THREADS alignment loss."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from threads_search.errors import ConfigError


class InfoNCE(nn.Module):
    """Symmetric InfoNCE between paired embeddings ``a`` ``[B, D]`` and ``b`` ``[B, D]``.

    Row ``i`` of ``a`` is the positive of row ``i`` of ``b``; the others in the batch are
    negatives, except rows sharing a ``group`` id (e.g. the same molecular sample seen through
    two slides), which are masked out rather than pushed apart. Similarity is cosine divided by
    the temperature ``τ = exp(-log_scale)``, learnable, initialised at ``init_temperature`` and
    clamped to ``[min_temperature, max_temperature]``. Loss = mean of the a→b and b→a
    cross-entropies.
    """

    def __init__(
        self,
        init_temperature: float = 0.07,
        min_temperature: float = 0.01,
        max_temperature: float = 1.0,
        learnable: bool = True,
    ) -> None:
        super().__init__()
        if not 0 < min_temperature <= init_temperature <= max_temperature:
            raise ConfigError("need 0 < min_temperature <= init_temperature <= max_temperature")
        self.min_log = math.log(1 / max_temperature)
        self.max_log = math.log(1 / min_temperature)
        scale = torch.tensor(math.log(1 / init_temperature))
        self.log_scale = nn.Parameter(scale, requires_grad=learnable)

    @property
    def temperature(self) -> float:
        return float(torch.exp(-self.log_scale.detach().clamp(self.min_log, self.max_log)))

    def clamp_(self) -> None:
        """Keep the parameter inside its range (call after each optimiser step)."""
        with torch.no_grad():
            self.log_scale.clamp_(self.min_log, self.max_log)

    def logits(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """``[B, B]`` scaled cosine similarities, rows = ``a``."""
        a = F.normalize(a.float(), dim=-1)
        b = F.normalize(b.float(), dim=-1)
        return a @ b.T * self.log_scale.clamp(self.min_log, self.max_log).exp()

    def forward(
        self, a: torch.Tensor, b: torch.Tensor, groups: torch.Tensor | None = None
    ) -> torch.Tensor:
        if a.shape != b.shape or a.ndim != 2:
            raise ValueError(f"InfoNCE needs two [B, D] tensors, got {a.shape} and {b.shape}")
        logits = self.logits(a, b)
        if groups is not None:
            same = groups[:, None] == groups[None, :]
            same.fill_diagonal_(False)
            logits = logits.masked_fill(same, float("-inf"))
        target = torch.arange(len(a), device=a.device)
        return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
