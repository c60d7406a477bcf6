"""Molecular encoders: a gene-vocabulary vector ``[B, G]`` → embedding ``[B, out_dim]``.

Registry ``MOLECULAR_ENCODERS``: ``create_molecular_encoder(name, in_dim, **config)`` builds an
encoder for an ``in_dim``-gene vocabulary; ``list_molecular_encoders()`` names them. Every
encoder is a ``torch.nn.Module`` with ``name``, a dataclass ``config`` (``to_dict``/``from_dict``),
``in_dim``/``out_dim`` and ``modality`` ("rna" or "dna": which input it expects).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from threads_search.registry import Registry

MOLECULAR_ENCODERS: Registry[nn.Module] = Registry("molecular encoder")


def list_molecular_encoders() -> list[str]:
    _load_builtins()
    return MOLECULAR_ENCODERS.names()


def create_molecular_encoder(name: str, in_dim: int, **config: Any) -> nn.Module:
    """Build molecular encoder ``name`` over an ``in_dim``-gene vocabulary; ``config`` overrides
    its dataclass config fields (e.g. ``hidden_dims=(512,)``)."""
    _load_builtins()
    return MOLECULAR_ENCODERS.create(name, in_dim=in_dim, **config)


def _load_builtins() -> None:
    # Importing the modules registers their encoders.
    from threads_search.models.molecular_encoders import mlp  # noqa: F401


__all__ = ["MOLECULAR_ENCODERS", "create_molecular_encoder", "list_molecular_encoders"]
