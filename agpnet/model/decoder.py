"""The decoder: a small ViT over the token grid that reconstructs the clean target features.

Pre-norm blocks (DINO style) with fused scaled-dot-product attention; when attention maps
are requested the blocks take an explicit softmax(QK^T) path and the decoder returns A_learn:
the mean attention each key token receives (mean over queries), averaged over heads and blocks.
"""

import torch
import torch.nn.functional as F
from torch import nn


class DecoderBlock(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor, return_attention: bool = False):
        """x (B, N, C) -> (x, attention (B, heads, N, N) or None)."""
        b, n, c = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        if return_attention:
            with torch.autocast(x.device.type, enabled=False):  # fp32 logits and softmax, also under autocast
                logits = (q.float() @ k.float().transpose(-2, -1)) * (c // self.heads) ** -0.5
                attention = logits.softmax(dim=-1)
            out = attention.to(v.dtype) @ v
        else:
            attention = None
            out = F.scaled_dot_product_attention(q, k, v)
        x = x + self.proj(out.transpose(1, 2).reshape(b, n, c))
        x = x + self.mlp(self.norm2(x))
        return x, attention


class Decoder(nn.Module):
    """(B, h*w, C) features -> (B, h*w, C) reconstruction; learned positional embedding, no CLS."""

    def __init__(self, dim: int, grid: tuple[int, int], depth: int = 4, heads: int = 6,
                 mlp_ratio: float = 4.0):
        super().__init__()
        self.grid = tuple(grid)
        self.pos_embed = nn.Parameter(torch.zeros(1, grid[0] * grid[1], dim))
        self.blocks = nn.ModuleList(DecoderBlock(dim, heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, dim)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor, return_attention: bool = False):
        """x (B, h*w, C) -> reconstruction (B, h*w, C); with return_attention also A_learn (B, h, w)."""
        x = x + self.pos_embed
        received = []
        for block in self.blocks:
            x, attention = block(x, return_attention)
            if return_attention:
                received.append(attention.mean(dim=(1, 2)))  # mean over heads and queries: (B, N)
        out = self.head(self.norm(x))
        if not return_attention:
            return out
        return out, torch.stack(received).mean(dim=0).view(-1, *self.grid)
