"""``rna-mlp`` and ``dna-mlp``: an MLP over a fixed gene vocabulary, to the shared embedding space.

Input ``[B, G]`` float: for ``rna-mlp`` the z-scored expression over the RNA vocabulary
(``genes_rna.txt`` order), for ``dna-mlp`` the multi-hot mutation vector over the DNA panel
(``genes_dna.txt`` order). Network: ``len(hidden_dims)`` blocks of (Linear, LayerNorm, GELU,
Dropout), then Linear → ``out_dim``. Output ``[B, out_dim]``, not L2-normalised.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from threads_search.models.molecular_encoders import MOLECULAR_ENCODERS
from threads_search.models.slide_encoders import EncoderConfig, EncoderModule


@dataclass
class MLPConfig(EncoderConfig):
    """``in_dim``: vocabulary size G; ``hidden_dims``: width of each hidden block."""

    in_dim: int = 1
    hidden_dims: tuple[int, ...] = (1024, 1024)
    out_dim: int = 1024
    dropout: float = 0.1

    def __post_init__(self) -> None:
        self.hidden_dims = tuple(int(h) for h in self.hidden_dims)
        super().__post_init__()


class MLPEncoder(EncoderModule):
    """See the module docstring; ``modality`` is "rna" or "dna"."""

    def __init__(self, config: MLPConfig, name: str, modality: str) -> None:
        super().__init__()
        self.config = config
        self.name = name
        self.modality = modality
        layers: list[nn.Module] = []
        width = config.in_dim
        for hidden in config.hidden_dims:
            layers += [
                nn.Linear(width, hidden),
                nn.LayerNorm(hidden),
                nn.GELU(),
                nn.Dropout(config.dropout),
            ]
            width = hidden
        layers.append(nn.Linear(width, config.out_dim))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x [B, G]`` → ``[B, out_dim]``."""
        if x.ndim != 2 or x.shape[1] != self.config.in_dim:
            raise ValueError(
                f"{self.name}: input must be [B, {self.config.in_dim}], got {tuple(x.shape)}"
            )
        return self.net(x.float())


@MOLECULAR_ENCODERS.register("rna-mlp", info="MLP over z-scored expression (gene vocabulary)")
def _create_rna(in_dim: int, **config) -> MLPEncoder:
    return MLPEncoder(MLPConfig(in_dim=in_dim, **config), "rna-mlp", "rna")


@MOLECULAR_ENCODERS.register("dna-mlp", info="MLP over a multi-hot mutation panel")
def _create_dna(in_dim: int, **config) -> MLPEncoder:
    cfg = {"hidden_dims": (512, 512), **config}
    return MLPEncoder(MLPConfig(in_dim=in_dim, **cfg), "dna-mlp", "dna")
