"""CONCH v1.5 vision tower: a timm ViT-L/16 trunk, a CoCa-style attentional pooler and a LayerNorm.

Parameter names match the released checkpoints (``trunk.*``, ``attn_pool_contrast.*``,
``ln_contrast.*``), so a file loads strictly into :class:`ConchVisionTower`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class AttentionalPooler(nn.Module):
    """Cross-attention of ``n_queries`` learned queries over a token sequence.

    ``forward(x)``: ``x`` ``[B, N, context_dim]`` → ``[B, n_queries, d_model]``. Queries pass
    ``ln_q`` then ``to_q``; tokens pass ``ln_k`` then ``to_kv``; heads of ``d_model // n_head``;
    no biases (the CONCH/CoCa layout).
    """

    def __init__(
        self, d_model: int = 768, context_dim: int = 1024, n_head: int = 8, n_queries: int = 1
    ) -> None:
        super().__init__()
        if d_model % n_head:
            raise ValueError(f"d_model {d_model} is not a multiple of n_head {n_head}")
        self.heads = n_head
        self.query = nn.Parameter(torch.randn(n_queries, d_model))
        self.ln_k = nn.LayerNorm(context_dim)
        self.ln_q = nn.LayerNorm(d_model)
        self.to_q = nn.Linear(d_model, d_model, bias=False)
        self.to_kv = nn.Linear(context_dim, 2 * d_model, bias=False)
        self.to_out = nn.Linear(d_model, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h = x.shape[0], self.heads
        q = self.to_q(self.ln_q(self.query)).expand(b, -1, -1)
        k, v = self.to_kv(self.ln_k(x)).chunk(2, dim=-1)

        def split(t: torch.Tensor) -> torch.Tensor:  # [B, T, h*d] -> [B, h, T, d]
            return t.reshape(b, t.shape[1], h, -1).transpose(1, 2)

        # Default scale is head_dim ** -0.5, as in the reference.
        out = F.scaled_dot_product_attention(split(q), split(k), split(v))
        out = out.transpose(1, 2).reshape(b, -1, h * out.shape[-1])
        return self.to_out(out)


class ConchVisionTower(nn.Module):
    """CONCH v1.5 image encoder: ``[B, 3, H, W]`` (H, W multiples of 16) → ``[B, 768]``.

    The embedding is the pooled query after ``ln_contrast`` (not the CLS token, not L2-normalised).
    ``depth`` < 24 builds a shallower trunk (tests only).
    """

    def __init__(self, depth: int = 24, embed_dim: int = 768) -> None:
        super().__init__()
        import timm

        self.trunk = timm.create_model(
            "vit_large_patch16_224",
            pretrained=False,
            img_size=224,
            init_values=1.0,
            num_classes=0,
            global_pool="",
            dynamic_img_size=True,
            depth=depth,
        )
        self.attn_pool_contrast = AttentionalPooler(
            d_model=embed_dim, context_dim=self.trunk.embed_dim, n_head=8, n_queries=1
        )
        self.ln_contrast = nn.LayerNorm(embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.trunk.forward_features(x)  # [B, 1 + N, 1024], after the final norm
        return self.ln_contrast(self.attn_pool_contrast(tokens)[:, 0])
