"""Slide encoders: a bag of patch features → one slide embedding.

Registry ``SLIDE_ENCODERS``: ``create_slide_encoder(name, in_dim, **config)`` builds an encoder for
``in_dim``-d patch features; ``list_slide_encoders()`` names them. Every encoder is a
:class:`SlideEncoder` (a ``torch.nn.Module``) with a dataclass ``config`` (``to_dict``/``from_dict``
round trip through a model bundle's ``config.json``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import nn

from threads_search.config import StrictConfig
from threads_search.registry import Registry


class SlideOutput(NamedTuple):
    """``embedding`` float ``[B, out_dim]`` (not L2-normalised); ``attention`` float ``[B, H, N]``
    (per head, sums to 1 over a bag's real patches, 0 on padding) or ``None``."""

    embedding: torch.Tensor
    attention: torch.Tensor | None


@dataclass
class EncoderConfig(StrictConfig):
    """Base of the encoder configs (slide and molecular): a ``StrictConfig`` (JSON-ready
    ``to_dict``, ``from_dict`` refusing unknown keys); lists read back from JSON become tuples."""

    @classmethod
    def from_dict(cls, data: dict[str, Any], ignore=()):
        if isinstance(data, dict):
            data = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        return super().from_dict(data, ignore)


class EncoderModule(nn.Module):
    """A ``torch.nn.Module`` whose dataclass ``config`` holds its ``in_dim`` and ``out_dim``."""

    config: EncoderConfig

    @property
    def in_dim(self) -> int:
        return self.config.in_dim

    @property
    def out_dim(self) -> int:
        return self.config.out_dim


class SlideEncoder(EncoderModule):
    """Base class. ``forward(features [B, N, D], mask [B, N] bool (True = real patch) | None)``
    → :class:`SlideOutput`. ``embed_bag`` encodes one large bag ``[N, D]`` in chunks."""

    name: str = ""

    def embed_bag(self, features: torch.Tensor, chunk_size: int = 8192) -> SlideOutput:
        """One bag ``[N, D]`` (any float dtype) → ``SlideOutput(embedding [out_dim],
        attention [H, N] | None)``. Subclasses override this to bound memory for N ~ 100k."""
        out = self.forward(features[None].float(), None)
        att = None if out.attention is None else out.attention[0]
        return SlideOutput(out.embedding[0], att)


def check_bag_inputs(
    features: torch.Tensor, mask: torch.Tensor | None, in_dim: int
) -> torch.Tensor:
    """Validate ``features [B, N, D]`` / ``mask [B, N]``; return a bool mask (all True if None).
    A plain ``ValueError`` here is a caller's bug: user inputs are checked before (bundle,
    trainer datasets)."""
    if features.ndim != 3:
        raise ValueError(f"features must be [B, N, D], got shape {tuple(features.shape)}")
    b, n, d = features.shape
    if d != in_dim:
        raise ValueError(f"features have dim {d}, the slide encoder expects {in_dim}")
    if n == 0:
        raise ValueError("a bag with no patches cannot be encoded")
    if mask is None:
        return torch.ones(b, n, dtype=torch.bool, device=features.device)
    if tuple(mask.shape) != (b, n):
        raise ValueError(f"mask shape {tuple(mask.shape)} does not match features [B, N]={b, n}")
    mask = mask.bool()
    empty = (~mask.any(dim=1)).nonzero().flatten().tolist()
    if empty:
        raise ValueError(f"bags {empty} of the batch have no real patch (mask all False)")
    return mask


SLIDE_ENCODERS: Registry[SlideEncoder] = Registry("slide encoder")


def list_slide_encoders() -> list[str]:
    _load_builtins()
    return SLIDE_ENCODERS.names()


def create_slide_encoder(name: str, in_dim: int, **config: Any) -> SlideEncoder:
    """Build slide encoder ``name`` for ``in_dim``-d patch features; ``config`` overrides its
    dataclass config fields (e.g. ``heads=4``)."""
    _load_builtins()
    return SLIDE_ENCODERS.create(name, in_dim=in_dim, **config)


def _load_builtins() -> None:
    # Importing the modules registers their encoders.
    from threads_search.models.slide_encoders import abmil, mean  # noqa: F401


__all__ = [
    "SLIDE_ENCODERS",
    "EncoderConfig",
    "SlideEncoder",
    "SlideOutput",
    "check_bag_inputs",
    "create_slide_encoder",
    "list_slide_encoders",
]
