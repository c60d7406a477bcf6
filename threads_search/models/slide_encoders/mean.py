"""``mean``: masked mean pooling of patch features, then Linear + LayerNorm to ``out_dim``.

The baseline slide encoder. Its attention is the pooling weight itself: uniform, ``1 / n_real``
on each real patch and 0 on padding, as ``[B, 1, N]`` (one "head").
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from threads_search.models.slide_encoders import (
    SLIDE_ENCODERS,
    EncoderConfig,
    SlideEncoder,
    SlideOutput,
    check_bag_inputs,
)


@dataclass
class MeanConfig(EncoderConfig):
    """``in_dim``: patch feature dim; ``out_dim``: slide embedding dim; ``dropout`` on the mean."""

    in_dim: int = 768
    out_dim: int = 1024
    dropout: float = 0.0


class MeanSlideEncoder(SlideEncoder):
    """Mean of the real patches' features → Dropout → Linear → LayerNorm."""

    name = "mean"

    def __init__(self, config: MeanConfig) -> None:
        super().__init__()
        self.config = config
        self.head = nn.Sequential(
            nn.Dropout(config.dropout),
            nn.Linear(config.in_dim, config.out_dim),
            nn.LayerNorm(config.out_dim),
        )

    def forward(self, features: torch.Tensor, mask: torch.Tensor | None = None) -> SlideOutput:
        """``features [B, N, D]``, ``mask [B, N]`` → embedding ``[B, out]``, attention
        ``[B, 1, N]``."""
        mask = check_bag_inputs(features, mask, self.config.in_dim)
        weights = mask.float() / mask.sum(dim=1, keepdim=True)  # [B, N]
        x = features.float().masked_fill(~mask[..., None], 0.0)
        pooled = torch.einsum("bn,bnd->bd", weights, x)
        return SlideOutput(self.head(pooled), weights[:, None, :])

    def embed_bag(self, features: torch.Tensor, chunk_size: int = 8192) -> SlideOutput:
        """One bag ``[N, D]`` → ``(embedding [out], attention [1, N])``, summed in chunks."""
        if features.ndim != 2 or features.shape[1] != self.config.in_dim:
            raise ValueError(
                f"features must be [N, {self.config.in_dim}], got shape {tuple(features.shape)}"
            )
        n = features.shape[0]
        if n == 0:
            raise ValueError("a bag with no patches cannot be encoded")
        dev = self.head[1].weight.device
        total = torch.zeros(self.config.in_dim, device=dev)
        for start in range(0, n, chunk_size):
            total += features[start : start + chunk_size].to(dev, torch.float32).sum(dim=0)
        att = torch.full((1, n), 1.0 / n, device=dev)
        return SlideOutput(self.head(total / n), att)


@SLIDE_ENCODERS.register("mean", info="masked mean pooling + Linear + LayerNorm (baseline)")
def _create(in_dim: int, **config) -> MeanSlideEncoder:
    return MeanSlideEncoder(MeanConfig(in_dim=in_dim, **config))
