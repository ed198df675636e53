"""The attention-guided perturbation (training only): masks, schedules, feature and image noise.

Shapes: attention maps (B, h, w); features (B, N, C) with N = h*w; images (B, 3, S, S).
`t` is the training progress in [0, 1].
"""

import math

import torch
import torch.nn.functional as F


def minmax(a: torch.Tensor) -> torch.Tensor:
    """Per-sample min-max normalisation of (B, ...) to [0, 1]; a constant map becomes zeros."""
    flat = a.flatten(1)
    low = flat.min(dim=1, keepdim=True).values
    span = flat.max(dim=1, keepdim=True).values - low
    return ((flat - low) / span.clamp_min(1e-12)).view_as(a)


def final_attention(a_prior: torch.Tensor | None, a_learn: torch.Tensor | None) -> torch.Tensor:
    """A_final = norm(A_prior) + norm(A_learn) (either may be None: ablation 6); values in [0, 2]."""
    parts = [minmax(a) for a in (a_prior, a_learn) if a is not None]
    return parts[0] if len(parts) == 1 else parts[0] + parts[1]


def schedule(kind: str, t: float, steps: int = 4) -> float:
    """Fraction of the maximum reached at progress t in [0, 1]: constant, linear, cosine or step."""
    t = min(max(float(t), 0.0), 1.0)
    if kind == "constant":
        return 1.0
    if kind == "linear":
        return t
    if kind == "cosine":
        return 0.5 * (1.0 - math.cos(math.pi * t))
    if kind == "step":  # `steps` levels 0, 1/(steps-1), ..., 1
        return min(1.0, math.floor(t * steps) / (steps - 1))
    raise ValueError(f"unknown schedule {kind!r}")


def feature_noise_std(features: torch.Tensor, weight: torch.Tensor, alpha: float, beta: float,
                      scale: str = "token_norm") -> torch.Tensor:
    """Std of the feature noise per token: (alpha * weight + beta) * ||f||_2 / C, shape (B, N).

    weight (B, h, w) in [0, 1] (the normalised A_final); scale "unit" drops the ||f||_2 / C factor.
    """
    std = alpha * weight.flatten(1).float() + beta
    if scale == "token_norm":
        std = std * features.float().norm(dim=-1) / features.shape[-1]
    return std


def perturb_features(features: torch.Tensor, std: torch.Tensor,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """F' = F + E * std with E ~ N(0, 1) per channel; std (B, N) per token. float32 out."""
    features = features.float()
    noise = torch.randn(features.shape, device=features.device, generator=generator)
    return features + noise * std[..., None]


def top_fraction_mask(scores: torch.Tensor, ratio: float) -> torch.Tensor:
    """Boolean mask (B, H, W) of the round(ratio * H * W) highest-scoring pixels of each sample."""
    flat = scores.flatten(1)
    k = round(ratio * flat.shape[1])
    mask = torch.zeros(flat.shape, dtype=torch.bool, device=scores.device)
    if k > 0:
        mask.scatter_(1, flat.topk(k, dim=1).indices, True)
    return mask.view_as(scores)


def perturb_image(images: torch.Tensor, attention: torch.Tensor, ratio: float, std: float,
                  generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian noise (std, normalised pixel units) on the top-`ratio` pixels of the upsampled attention.

    images (B, 3, S, S), attention (B, h, w) -> (perturbed images (B, 3, S, S), mask (B, S, S) bool).
    """
    scores = F.interpolate(attention[:, None].float(), size=images.shape[-2:], mode="bilinear",
                           align_corners=False)[:, 0]
    mask = top_fraction_mask(scores, ratio)
    noise = torch.randn(images.shape, device=images.device, generator=generator, dtype=images.dtype)
    return images + noise * (std * mask[:, None]).to(images.dtype), mask
