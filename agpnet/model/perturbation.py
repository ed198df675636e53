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


class Perturbation:
    """The perturbation policy of a model config: which attention sources, where the noise goes and
    how much at training progress t. Every branch on cfg.noise, cfg.noise_level, cfg.attention and
    cfg.image_branch_attention is here; AGPNet, its previews and the viewer call it.

    Attributes: active (noise != "none"), feature_branch / image_branch (the enabled inputs),
    uses_prior / uses_learned (the attention sources)."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.active = cfg.noise != "none"
        self.feature_branch = cfg.noise_level in ("feature", "both")
        self.image_branch = cfg.noise_level in ("image", "both")
        self.uses_prior = cfg.attention != "learn"
        self.uses_learned = cfg.attention != "prior"

    def alpha(self, t: float) -> float:
        """Attention weight of the feature noise at progress t."""
        return self.cfg.alpha_max * schedule(self.cfg.alpha_schedule, t, self.cfg.schedule_steps)

    def mask_ratio(self, t: float) -> float:
        """Fraction of the image's pixels that get image noise at progress t."""
        return self.cfg.mask_ratio_max * schedule(self.cfg.mask_ratio_schedule, t, self.cfg.schedule_steps)

    def final_attention(self, a_prior: torch.Tensor | None, a_learn: torch.Tensor | None) -> torch.Tensor:
        """A_final (B, h, w) in [0, 2] from the sources cfg.attention selects (the others are ignored)."""
        return final_attention(a_prior if self.uses_prior else None, a_learn if self.uses_learned else None)

    def noise_weight(self, a_final: torch.Tensor) -> torch.Tensor:
        """Where the feature noise goes, (B, h, w) in [0, 1]: norm(A_final), or for noise="uniform"
        its per-sample mean everywhere (the same noise budget without the attention weighting)."""
        weight = minmax(a_final)
        if self.cfg.noise == "uniform":
            weight = weight.mean(dim=(1, 2), keepdim=True).expand_as(weight)
        return weight

    def feature_std(self, features: torch.Tensor, weight: torch.Tensor, t: float) -> torch.Tensor:
        """Per-token std (B, N) of the feature noise at progress t."""
        return feature_noise_std(features, weight, self.alpha(t), self.cfg.beta, self.cfg.feature_noise_scale)

    def perturb_image(self, images: torch.Tensor, a_final: torch.Tensor, t: float,
                      generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Noise on the top mask_ratio(t) pixels by A_final (noise="uniform": by a random map)."""
        scores = a_final
        if self.cfg.noise == "uniform":
            scores = torch.rand(a_final.shape, device=a_final.device, generator=generator)
        return perturb_image(images, scores, self.mask_ratio(t), self.cfg.image_noise_std, generator)

    def inputs(self, model, images: torch.Tensor, f_clean: torch.Tensor, a_prior: torch.Tensor | None,
               t: float, generator: torch.Generator | None = None, training: bool = True) -> dict:
        """The perturbed inputs of a batch at progress t, for `model` (its encode_clean and
        learned_attention): {"decoder_inputs": [(B, N, C) per enabled branch: the feature-perturbed
        clean features, the features of the image-perturbed image], "image_perturbed": (B, 3, S, S),
        and, for the branches that are on (always with training=False), "feature_noise_std": (B, N)
        of the clean branch and "image_mask": (B, S, S) bool}.
        training=False (previews) draws no feature noise and does not encode the perturbed image."""
        b = images.shape[0]
        out = {"decoder_inputs": [f_clean], "image_perturbed": images}
        if not training:  # what a preview shows where a branch is off (training does not read them)
            out["feature_noise_std"] = torch.zeros(b, f_clean.shape[1], device=images.device)
            out["image_mask"] = torch.zeros(b, *images.shape[-2:], dtype=torch.bool, device=images.device)
        if not self.active:
            return out
        a_learn = model.learned_attention(f_clean) if self.uses_learned else None
        a_final = self.final_attention(a_prior, a_learn)
        weight = self.noise_weight(a_final)
        out["decoder_inputs"] = []
        if self.feature_branch:
            out["feature_noise_std"] = self.feature_std(f_clean, weight, t)
            if training:
                out["decoder_inputs"].append(perturb_features(f_clean, out["feature_noise_std"], generator))
        if self.image_branch:
            out["image_perturbed"], out["image_mask"] = self.perturb_image(images, a_final, t, generator)
            if training:
                features = self._image_branch_features(model, out["image_perturbed"], weight, t, generator)
                out["decoder_inputs"].append(features)
        return out

    def _image_branch_features(self, model, perturbed: torch.Tensor, weight: torch.Tensor, t: float,
                               generator: torch.Generator | None) -> torch.Tensor:
        """F_clean of the image-perturbed images; with noise_level="both" also feature-perturbed, weighted
        by the clean image's attention or (image_branch_attention="perturbed") by their own."""
        both = self.feature_branch
        own = both and self.cfg.image_branch_attention == "perturbed"
        f_image, a_prior_image = model.encode_clean(perturbed, with_attention=own and self.uses_prior)
        if not both:
            return f_image
        if own:
            a_learn = model.learned_attention(f_image) if self.uses_learned else None
            weight = self.noise_weight(self.final_attention(a_prior_image, a_learn))
        return perturb_features(f_image, self.feature_std(f_image, weight, t), generator)
