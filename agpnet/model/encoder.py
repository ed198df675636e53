"""The frozen encoder: a timm Vision Transformer tapped at a few blocks.

`Encoder(vit, blocks)(images)` returns the patch tokens (prefix tokens, i.e. CLS and register
tokens, dropped) of the tapped blocks and, on request, the CLS->patch attention of those
blocks (A_prior; for backbones without a CLS token, the mean attention each patch receives).
The blocks keep timm's fused attention; the attention rows are computed on the side from the
block's own qkv weights. The features are those of timm's `forward_intermediates` (a test checks
it); the loop is our own because A_prior needs each tapped block's input, which that function does
not expose (hooks would break torch.compile of the encoder).
"""

import hashlib

import torch
import torch.nn.functional as F
from torch import nn

from agpnet.errors import AgpnetError


def prior_attention(block: nn.Module, x: torch.Tensor, num_prefix_tokens: int) -> torch.Tensor:
    """A_prior of one timm ViT block for its input `x` (B, T, C): (B, heads, T - prefix).

    With a CLS token (num_prefix_tokens > 0): the CLS row softmax(q_cls . K^T / sqrt(d)) over all T
    tokens, patch columns. Without one (num_prefix_tokens = 0, e.g. SigLIP): the mean attention each
    patch receives, i.e. the mean over all queries of softmax(Q . K^T / sqrt(d)).
    """
    attn = block.attn
    with torch.autocast(x.device.type, enabled=False):  # fp32 logits: trained CLS attention is peaked
        y = block.norm1(x.float())
        b, t, _ = y.shape
        heads, dim = attn.num_heads, attn.head_dim
        width = heads * dim
        queries = y[:, :1] if num_prefix_tokens else y
        weight, bias = attn.qkv.weight.float(), attn.qkv.bias
        bias = None if bias is None else bias.float()
        q = F.linear(queries, weight[:width], None if bias is None else bias[:width])
        k = F.linear(y, weight[width:2 * width], None if bias is None else bias[width:2 * width])
        q = attn.q_norm(q.view(b, -1, heads, dim).transpose(1, 2))  # (B, heads, 1 or T, d)
        k = attn.k_norm(k.view(b, t, heads, dim).transpose(1, 2))  # (B, heads, T, d)
        logits = (q * attn.scale) @ k.transpose(-2, -1)  # (B, heads, 1 or T, T)
        return logits.softmax(dim=-1).mean(dim=2)[:, :, num_prefix_tokens:]


class Encoder(nn.Module):
    """Frozen timm ViT; always in eval mode, no gradients."""

    def __init__(self, vit: nn.Module, blocks: tuple[int, ...]):
        super().__init__()
        for name in ("patch_embed", "_pos_embed", "norm_pre", "blocks", "num_prefix_tokens"):
            if not hasattr(vit, name):
                raise AgpnetError(f"backbone {type(vit).__name__}: not a timm VisionTransformer (no {name})")
        if max(blocks) > len(vit.blocks):
            raise AgpnetError(
                f"model config blocks={tuple(blocks)}: the backbone has {len(vit.blocks)} blocks")
        self.vit = vit
        self.taps = tuple(blocks)  # 1-indexed tapped blocks
        self.num_prefix_tokens = vit.num_prefix_tokens
        self.grid = tuple(vit.patch_embed.grid_size)  # (h, w) tokens
        self.dim = vit.embed_dim
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "Encoder":
        return super().train(False)

    def forward(self, images: torch.Tensor, with_attention: bool = False):
        """images (B, 3, S, S) normalised -> (list of (B, h*w, C) per tapped block, A (B, h, w) or None)."""
        vit = self.vit
        x = vit.norm_pre(vit.patch_drop(vit._pos_embed(vit.patch_embed(images))))
        features, attentions = [], []
        for i, block in enumerate(vit.blocks[: max(self.taps)], start=1):
            if with_attention and i in self.taps:
                attentions.append(prior_attention(block, x, self.num_prefix_tokens))
            x = block(x)
            if i in self.taps:
                features.append(x[:, self.num_prefix_tokens:])
        if not with_attention:
            return features, None
        a = torch.stack(attentions).mean(dim=(0, 2))  # mean over blocks and heads: (B, h*w)
        return features, a.view(-1, *self.grid)

    def fingerprint(self) -> str:
        """SHA-256 of the encoder weights (to check a checkpoint is reloaded on the same encoder)."""
        digest = hashlib.sha256()
        for name, tensor in sorted(self.vit.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
        return digest.hexdigest()
