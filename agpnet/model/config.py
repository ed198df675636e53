"""AGPNetConfig: every setting of the model and its perturbation branch.

Fields marked [paper] follow arXiv 2408.07490; fields marked [default] are our choices where
the paper is silent (docs/method.md). Field names are unique across the run config sections
(agpnet.config), and their types are plain (str, int, float, bool, tuple, dict) so that YAML,
CLI flags and notebooks can set them.
"""

import dataclasses
from dataclasses import dataclass, field

from agpnet.errors import AgpnetError

CHOICES = {
    "noise": ("none", "uniform", "attention"),
    "noise_level": ("image", "feature", "both"),
    "attention": ("prior", "learn", "both"),
    "alpha_schedule": ("constant", "linear", "cosine", "step"),
    "mask_ratio_schedule": ("constant", "linear", "cosine", "step"),
    "feature_noise_scale": ("token_norm", "unit"),
    "image_branch_attention": ("clean", "perturbed"),
    "score": ("max", "pooled-max"),
}


@dataclass
class AGPNetConfig:
    # Encoder: a frozen timm ViT.
    backbone: str = "vit_small_patch16_224.dino"  # [paper] DINO ViT-S/16
    backbone_kwargs: dict = field(default_factory=dict)  # extra timm.create_model arguments
    image_size: int = 256  # [default] input side (px); 256 -> 16x16 tokens with patch 16
    blocks: tuple[int, ...] = (3, 6, 9, 12)  # [default] tapped encoder blocks, 1-indexed
    init_seed: int = 0  # [default] seed of the decoder init (and of a random encoder)

    # Decoder: a small ViT over the token grid, width = encoder width.
    decoder_depth: int = 4  # [default]
    decoder_heads: int = 6  # [default]
    decoder_mlp_ratio: float = 4.0  # [default]

    # Perturbation branch (training only).
    noise: str = "attention"  # [paper] none | uniform | attention (ablation 1)
    noise_level: str = "both"  # [paper] image | feature | both (ablation 1)
    attention: str = "both"  # [paper] A_prior only | A_learn only | both (ablation 6)
    ema_decoder: bool = True  # [paper] A_learn from an EMA copy of the decoder (ablation 4)
    ema_decay: float = 0.999  # [default] eta
    alpha_max: float = 20.0  # [default] attention weight of the feature noise at the end of training
    alpha_schedule: str = "linear"  # [paper] linear increase (ablation 5)
    schedule_steps: int = 4  # [default] number of levels of the "step" schedules
    beta: float = 1.0  # [default] attention-independent part of the feature noise
    feature_noise_scale: str = "token_norm"  # [default] E ~ N(0,1) * ||f||_2 / C per token ("unit": no scaling)
    mask_ratio_max: float = 0.5  # [default] image noise: fraction of pixels masked at the end of training
    mask_ratio_schedule: str = "linear"  # [paper] the mask ratio grows over training
    image_noise_std: float = 0.2  # [default] Gaussian noise std inside the mask (normalised pixel units)
    image_branch_attention: str = "clean"  # [default] A_final of the clean image also weights the perturbed one's feature noise

    # Anomaly map and score.
    smoothing_sigma: float = 4.0  # [default] Gaussian smoothing of the map (px); 0 = off
    score: str = "max"  # [paper] max of the map; "pooled-max": max of the score_pool average-pooled map
    score_pool: int = 16  # [default] pooling window (px, stride 1) for score="pooled-max"

    def __post_init__(self):
        self.blocks = tuple(int(b) for b in self.blocks)
        self.backbone_kwargs = dict(self.backbone_kwargs)
        for name, allowed in CHOICES.items():
            if getattr(self, name) not in allowed:
                raise AgpnetError(f"model config {name}={getattr(self, name)!r}: expected one of {', '.join(allowed)}")
        if not self.blocks or min(self.blocks) < 1 or len(set(self.blocks)) != len(self.blocks):
            raise AgpnetError(f"model config blocks={self.blocks}: expected distinct 1-indexed block numbers")
        _check(self.image_size > 0, "image_size", self.image_size, "a positive number of pixels")
        _check(self.decoder_depth >= 1, "decoder_depth", self.decoder_depth, ">= 1")
        _check(self.decoder_heads >= 1, "decoder_heads", self.decoder_heads, ">= 1")
        _check(0.0 <= self.ema_decay < 1.0, "ema_decay", self.ema_decay, "in [0, 1)")
        _check(0.0 <= self.mask_ratio_max <= 1.0, "mask_ratio_max", self.mask_ratio_max, "in [0, 1]")
        _check(self.schedule_steps >= 2, "schedule_steps", self.schedule_steps, ">= 2")
        for name in ("alpha_max", "beta", "image_noise_std", "smoothing_sigma"):
            _check(getattr(self, name) >= 0, name, getattr(self, name), ">= 0")
        _check(self.score_pool >= 1, "score_pool", self.score_pool, ">= 1")

    def to_dict(self) -> dict:
        """Plain dict (lists, no tuples) for checkpoints and run records."""
        d = dataclasses.asdict(self)
        d["blocks"] = list(self.blocks)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "AGPNetConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise AgpnetError(f"model config: unknown field(s) {', '.join(unknown)}")
        return cls(**d)


def _check(ok: bool, name: str, value, expected: str) -> None:
    if not ok:
        raise AgpnetError(f"model config {name}={value!r}: expected {expected}")
