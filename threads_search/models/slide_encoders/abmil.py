"""``threads``: multi-head gated attention MIL (ABMIL), the THREADS slide encoder.

Per head h (of ``heads``), for every patch feature x [D]:

    z_h   = GELU(LayerNorm_h(W_h x + b_h))                       pre-attention MLP, [head_dim]
    s_h   = w_h · (tanh(V_h z_h) * sigmoid(U_h z_h)) + c_h         gated attention score
    a_h   = softmax over the bag's real patches of s_h             padding → -inf → weight 0
    p_h   = Σ a_h z_h                                              [head_dim]
    e     = LayerNorm(P [p_1, ..., p_H] + q)                       [out_dim]

The per-head pre-attention MLPs are separate networks (own weights, own LayerNorm affine) computed
as one batched matmul (Linear D → heads·head_dim, then a per-head LayerNorm). Dropout follows GELU.

Parameter count (defaults heads=2, head_dim=1536, attn_dim=1024, out_dim=1024):
D·H·hd + H·hd (pre Linear) + 2·H·hd (pre LN) + 2·H·(hd·ad + ad) (V, U) + H·(ad + 1) (score)
+ H·hd·out + out (projection) + 2·out (LN) = 11,814,914 at D = 768 (paper: about 11.3M).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from threads_search.models.slide_encoders import (
    SLIDE_ENCODERS,
    EncoderConfig,
    SlideEncoder,
    SlideOutput,
    check_bag_inputs,
)


@dataclass
class ThreadsConfig(EncoderConfig):
    """``in_dim``: patch feature dim D; ``heads`` H; ``head_dim`` width of each head's
    pre-attention MLP; ``attn_dim`` width of the gated attention branches; ``out_dim`` slide
    embedding dim."""

    in_dim: int = 768
    heads: int = 2
    head_dim: int = 1536
    attn_dim: int = 1024
    dropout: float = 0.25
    out_dim: int = 1024


def _uniform_(t: torch.Tensor, fan_in: int) -> None:
    bound = 1.0 / math.sqrt(fan_in)
    nn.init.uniform_(t, -bound, bound)


class ThreadsSlideEncoder(SlideEncoder):
    """Multi-head gated ABMIL; see the module docstring. Attention is ``[B, heads, N]``."""

    name = "threads"

    def __init__(self, config: ThreadsConfig) -> None:
        super().__init__()
        self.config = config
        h, hd, ad = config.heads, config.head_dim, config.attn_dim
        self.pre = nn.Linear(config.in_dim, h * hd)
        self.pre_ln_weight = nn.Parameter(torch.ones(h, hd))
        self.pre_ln_bias = nn.Parameter(torch.zeros(h, hd))
        self.drop = nn.Dropout(config.dropout)
        self.attn_v = nn.Parameter(torch.empty(h, hd, ad))
        self.attn_v_bias = nn.Parameter(torch.empty(h, ad))
        self.attn_u = nn.Parameter(torch.empty(h, hd, ad))
        self.attn_u_bias = nn.Parameter(torch.empty(h, ad))
        self.attn_w = nn.Parameter(torch.empty(h, ad))
        self.attn_w_bias = nn.Parameter(torch.empty(h))
        for t in (self.attn_v, self.attn_v_bias, self.attn_u, self.attn_u_bias):
            _uniform_(t, hd)
        for t in (self.attn_w, self.attn_w_bias):
            _uniform_(t, ad)
        self.proj = nn.Linear(h * hd, config.out_dim)
        self.proj_ln = nn.LayerNorm(config.out_dim)

    def _heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x [..., N, D]`` → per-head features ``z [..., N, H, hd]``, scores ``[..., N, H]``."""
        c = self.config
        z = self.pre(x).unflatten(-1, (c.heads, c.head_dim))
        z = F.layer_norm(z, (c.head_dim,)) * self.pre_ln_weight + self.pre_ln_bias
        z = self.drop(F.gelu(z))
        v = torch.tanh(torch.einsum("...hd,hda->...ha", z, self.attn_v) + self.attn_v_bias)
        u = torch.sigmoid(torch.einsum("...hd,hda->...ha", z, self.attn_u) + self.attn_u_bias)
        s = torch.einsum("...ha,ha->...h", v * u, self.attn_w) + self.attn_w_bias
        return z, s

    def _project(self, pooled: torch.Tensor) -> torch.Tensor:
        """``pooled [..., H, hd]`` → ``[..., out_dim]``."""
        return self.proj_ln(self.proj(pooled.flatten(-2)))

    def forward(self, features: torch.Tensor, mask: torch.Tensor | None = None) -> SlideOutput:
        """``features [B, N, D]``, ``mask [B, N]`` bool (True = real) → embedding ``[B, out]``,
        attention ``[B, H, N]``."""
        mask = check_bag_inputs(features, mask, self.config.in_dim)
        z, s = self._heads(features.float())  # [B, N, H, hd], [B, N, H]
        s = s.masked_fill(~mask[..., None], float("-inf"))
        att = torch.softmax(s, dim=1)  # [B, N, H]
        z = z.masked_fill(~mask[..., None, None], 0.0)  # padding may hold anything
        pooled = torch.einsum("bnh,bnhd->bhd", att, z)
        return SlideOutput(self._project(pooled), att.transpose(1, 2))

    def embed_bag(self, features: torch.Tensor, chunk_size: int = 8192) -> SlideOutput:
        """One bag ``[N, D]`` → ``(embedding [out], attention [H, N])``, exact streaming softmax
        over chunks of ``chunk_size`` patches: memory O(chunk_size · H · max(hd, ad)) + O(N · H)."""
        if features.ndim != 2 or features.shape[1] != self.config.in_dim:
            raise ValueError(
                f"features must be [N, {self.config.in_dim}], got shape {tuple(features.shape)}"
            )
        n = features.shape[0]
        if n == 0:
            raise ValueError("a bag with no patches cannot be encoded")
        c = self.config
        dev = self.proj.weight.device
        scores = torch.empty(n, c.heads, device=dev)
        run_max = torch.full((c.heads,), float("-inf"), device=dev)
        run_sum = torch.zeros(c.heads, device=dev)
        acc = torch.zeros(c.heads, c.head_dim, device=dev)
        for start in range(0, n, chunk_size):
            x = features[start : start + chunk_size].to(dev, torch.float32)
            z, s = self._heads(x)  # [n_c, H, hd], [n_c, H]
            scores[start : start + len(x)] = s
            new_max = torch.maximum(run_max, s.max(dim=0).values)
            scale = torch.exp(run_max - new_max)  # exp(-inf) = 0 on the first chunk
            w = torch.exp(s - new_max)  # [n_c, H]
            run_sum = run_sum * scale + w.sum(dim=0)
            acc = acc * scale[:, None] + torch.einsum("nh,nhd->hd", w, z)
            run_max = new_max
        pooled = acc / run_sum[:, None]
        att = torch.softmax(scores, dim=0).T.contiguous()  # [H, N]
        return SlideOutput(self._project(pooled), att)


@SLIDE_ENCODERS.register("threads", info="multi-head gated ABMIL (THREADS), ~11.8M params @ 768-d")
def _create(in_dim: int, **config) -> ThreadsSlideEncoder:
    return ThreadsSlideEncoder(ThreadsConfig(in_dim=in_dim, **config))
