"""AGPNet: a frozen ViT encoder, a ViT decoder that reconstructs its features, and the
attention-guided perturbation branch used in training (docs/method.md).

Inference (`predict`) runs the main branch only: clean features -> decoder -> per-token L2
distance -> upsampled, smoothed anomaly map and an image score. Training (`training_loss`)
perturbs the clean features and the image where A_final is high and asks the decoder to
reconstruct the clean features. `build_model` creates the encoder (agpnet.model.backbone: timm hub,
a local weights file or folder, or random weights) and records which in `weights_info`.
"""

import copy
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from torch import nn

from agpnet.config import AGPNetConfig
from agpnet.errors import AgpnetError
from agpnet.model.backbone import create_backbone
from agpnet.model.decoder import Decoder
from agpnet.model.encoder import Encoder
from agpnet.model.perturbation import (
    feature_noise_std,
    final_attention,
    minmax,
    perturb_features,
    perturb_image,
    schedule,
)


class AGPNet(nn.Module):
    """AGPNet around a timm ViT `vit`. Attributes: cfg, encoder, decoder, decoder_ema (or None),
    mean/std (the encoder's input normalisation), grid (h, w), weights / weights_info (set by build_model)."""

    def __init__(self, cfg: AGPNetConfig, vit: nn.Module):
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(vit, cfg.blocks)
        self.grid = self.encoder.grid
        dim = self.encoder.dim
        if dim % cfg.decoder_heads:
            raise AgpnetError(f"model config decoder_heads={cfg.decoder_heads}: must divide the encoder width {dim}")
        self.decoder = Decoder(dim, self.grid, cfg.decoder_depth, cfg.decoder_heads, cfg.decoder_mlp_ratio)
        self.decoder_ema = copy.deepcopy(self.decoder).requires_grad_(False) if cfg.ema_decoder else None
        pretrained_cfg = getattr(vit, "pretrained_cfg", None) or {}
        self.mean = tuple(pretrained_cfg.get("mean", timm.data.IMAGENET_DEFAULT_MEAN))
        self.std = tuple(pretrained_cfg.get("std", timm.data.IMAGENET_DEFAULT_STD))
        self.weights = "random"  # how to re-create the encoder: "hub", "random" or a file path
        self.weights_info = {"source": "random", "pretrained": False, "warning": None}

    # -- main branch ---------------------------------------------------------------------
    @torch.no_grad()
    def encode_clean(self, images: torch.Tensor, with_attention: bool = True):
        """images (B, 3, S, S) -> (F_clean (B, h*w, C) float32, A_prior (B, h, w) float32 or None).

        F_clean = sum over tapped blocks of LayerNorm (no affine) of the patch tokens.
        """
        features, a_prior = self.encoder(images, with_attention)
        f_clean = sum(F.layer_norm(f.float(), f.shape[-1:]) for f in features)
        return f_clean, a_prior

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> dict:
        """images (B, 3, S, S) -> {"anomaly_map": (B, S, S) float32, "score": (B,) float32}."""
        f_clean, _ = self.encode_clean(images, with_attention=False)
        recon = self.decoder(f_clean)
        distance = (f_clean.float() - recon.float()).norm(dim=-1).view(-1, 1, *self.grid)
        with torch.autocast(images.device.type, enabled=False):
            amap = F.interpolate(distance, size=images.shape[-2:], mode="bilinear", align_corners=False)
            amap = gaussian_blur(amap, self.cfg.smoothing_sigma)
            if self.cfg.score == "pooled-max":  # k x k box mean, stride 1, as two 1-D passes
                k = min(self.cfg.score_pool, *amap.shape[-2:])
                pooled = F.avg_pool2d(F.avg_pool2d(amap, (1, k), stride=1), (k, 1), stride=1)
                score = pooled.flatten(1).amax(dim=1)
            else:
                score = amap.flatten(1).amax(dim=1)
        return {"anomaly_map": amap[:, 0].float(), "score": score.float()}

    # -- perturbation branch -------------------------------------------------------------
    @torch.no_grad()
    def learned_attention(self, f_clean: torch.Tensor) -> torch.Tensor:
        """A_learn (B, h, w): attention received per token in the EMA decoder (or the live one, detached)."""
        decoder = self.decoder_ema if self.decoder_ema is not None else self.decoder
        return decoder(f_clean, return_attention=True)[1]

    def final_attention(self, f_clean: torch.Tensor, a_prior: torch.Tensor) -> torch.Tensor:
        """A_final (B, h, w) in [0, 2] from the attention sources cfg.attention selects."""
        use = self.cfg.attention
        return final_attention(a_prior if use != "learn" else None,
                               self.learned_attention(f_clean) if use != "prior" else None)

    def noise_weight(self, a_final: torch.Tensor) -> torch.Tensor:
        """Where the feature noise goes, (B, h, w) in [0, 1]: norm(A_final), or for noise="uniform"
        its per-sample mean everywhere (the same noise budget without the attention weighting)."""
        weight = minmax(a_final)
        if self.cfg.noise == "uniform":
            weight = weight.mean(dim=(1, 2), keepdim=True).expand_as(weight)
        return weight

    def alpha(self, progress: float) -> float:
        return self.cfg.alpha_max * schedule(self.cfg.alpha_schedule, progress, self.cfg.schedule_steps)

    def mask_ratio(self, progress: float) -> float:
        return self.cfg.mask_ratio_max * schedule(self.cfg.mask_ratio_schedule, progress, self.cfg.schedule_steps)

    def feature_noise(self, features: torch.Tensor, weight: torch.Tensor, progress: float) -> torch.Tensor:
        """Per-token std (B, N) of the feature noise at training progress `progress`."""
        return feature_noise_std(features, weight, self.alpha(progress), self.cfg.beta, self.cfg.feature_noise_scale)

    def perturb_image(self, images: torch.Tensor, a_final: torch.Tensor, progress: float,
                      generator: torch.Generator | None = None):
        """Noise on the top mask_ratio(progress) pixels by A_final (noise="uniform": by a random map)."""
        scores = a_final
        if self.cfg.noise == "uniform":
            scores = torch.rand(a_final.shape, device=a_final.device, generator=generator)
        return perturb_image(images, scores, self.mask_ratio(progress), self.cfg.image_noise_std, generator)

    def training_loss(self, images: torch.Tensor, progress: float, clean=None,
                      generator: torch.Generator | None = None) -> torch.Tensor:
        """Reconstruction loss of one batch at training progress `progress` in [0, 1] (scalar).

        clean: optional (F_clean, A_prior) of `images` (the feature cache); computed when None.
        generator: optional, on the images' device, for reproducible noise.
        Loss = mean of MSE(decoder(F'), F_clean) over the enabled branches: feature-perturbed
        clean features, and features of the image-perturbed image (also feature-perturbed when
        noise_level="both"). noise="none": plain reconstruction of the clean features.
        """
        cfg = self.cfg
        if clean is None:
            f_clean, a_prior = self.encode_clean(images, with_attention=cfg.noise != "none" and cfg.attention != "learn")
        else:
            f_clean, a_prior = clean[0].float(), clean[1].float()
        if cfg.noise == "none":
            return token_mse(self.decoder(f_clean), f_clean)

        a_final = self.final_attention(f_clean, a_prior)
        weight = self.noise_weight(a_final)
        inputs = []
        if cfg.noise_level in ("feature", "both"):
            inputs.append(perturb_features(f_clean, self.feature_noise(f_clean, weight, progress), generator))
        if cfg.noise_level in ("image", "both"):
            perturbed, _ = self.perturb_image(images, a_final, progress, generator)
            own_attention = cfg.noise_level == "both" and cfg.image_branch_attention == "perturbed"
            f_image, a_prior_image = self.encode_clean(perturbed, with_attention=own_attention)
            if cfg.noise_level == "both":
                if own_attention:
                    weight = self.noise_weight(self.final_attention(f_image, a_prior_image))
                f_image = perturb_features(f_image, self.feature_noise(f_image, weight, progress), generator)
            inputs.append(f_image)
        recon = self.decoder(torch.cat(inputs))  # both branches in one batch: the mean is (L_feat + L_img,feat) / 2
        return token_mse(recon, f_clean.repeat(len(inputs), 1, 1))

    def ema_decay(self, step: int) -> float:
        """eta at optimiser step `step` (0, 1, 2, ...): cfg.ema_decay, or with cfg.ema_warmup
        min(cfg.ema_decay, (1 + step) / (10 + step)), so that early steps do not keep the initial weights."""
        if not self.cfg.ema_warmup:
            return self.cfg.ema_decay
        return min(self.cfg.ema_decay, (1 + step) / (10 + step))

    @torch.no_grad()
    def update_ema(self, step: int) -> None:
        """theta_ema <- eta * theta_ema + (1 - eta) * theta with eta = ema_decay(step); call after
        optimiser step number `step` (counted from 0 over the whole run)."""
        if self.decoder_ema is not None:
            ema, live = list(self.decoder_ema.parameters()), list(self.decoder.parameters())
            torch._foreach_lerp_(ema, live, 1.0 - self.ema_decay(step))

    def compile_in_place(self, mode: str | None = "default") -> None:
        """torch.compile the encoder, the decoder and the EMA decoder in place (`mode` as in
        torch.compile; None: back to the plain modules): parameter names, checkpoints and the EMA
        update stay those of the plain model."""
        for module in (self.encoder, self.decoder, self.decoder_ema):
            if module is None:
                continue
            if mode is None:
                module._compiled_call_impl = None  # what nn.Module.compile sets; None calls forward as usual
            else:
                module.compile(mode=mode)

    # -- inspection (notebooks, viewer) --------------------------------------------------
    @torch.no_grad()
    def attention_masks(self, images: torch.Tensor, progress: float = 1.0) -> dict:
        """{"a_prior", "a_learn": (B, h, w) min-max normalised, "a_final": (B, h, w) in [0, 2]}.

        a_final combines the sources cfg.attention selects; the masks do not depend on `progress`
        (the argument mirrors perturbation_preview).
        """
        f_clean, a_prior = self.encode_clean(images)
        a_learn = self.learned_attention(f_clean)
        use = self.cfg.attention
        a_final = final_attention(a_prior if use != "learn" else None, a_learn if use != "prior" else None)
        return {"a_prior": minmax(a_prior), "a_learn": minmax(a_learn), "a_final": a_final}

    @torch.no_grad()
    def perturbation_preview(self, images: torch.Tensor, progress: float,
                             generator: torch.Generator | None = None) -> dict:
        """What training does to `images` at `progress`, for the clean-image branch (a `generator`,
        if given, must live on the images' device):
        {"image_perturbed": (B, 3, S, S), "image_mask": (B, S, S) bool, "feature_noise_std": (B, h, w)}."""
        cfg = self.cfg
        b = images.shape[0]
        f_clean, a_prior = self.encode_clean(images)
        perturbed, mask = images, torch.zeros(b, *images.shape[-2:], dtype=torch.bool, device=images.device)
        std = torch.zeros(b, *self.grid, device=images.device)
        if cfg.noise != "none":
            a_final = self.final_attention(f_clean, a_prior)
            if cfg.noise_level in ("feature", "both"):
                std = self.feature_noise(f_clean, self.noise_weight(a_final), progress).view(b, *self.grid)
            if cfg.noise_level in ("image", "both"):
                perturbed, mask = self.perturb_image(images, a_final, progress, generator)
        return {"image_perturbed": perturbed, "image_mask": mask, "feature_noise_std": std}


def token_mse(recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Squared error summed over channels, averaged over tokens and batch (method.md: MSE
    normalised by the number of tokens). recon, target (B, N, C) -> scalar, float32."""
    return (recon.float() - target.float()).pow(2).sum(dim=-1).mean()


def gaussian_blur(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian smoothing of (B, 1, H, W) maps; sigma in px (0 = none), replicate padding."""
    if sigma <= 0:
        return maps
    radius = int(4.0 * sigma + 0.5)
    x = torch.arange(-radius, radius + 1, device=maps.device, dtype=maps.dtype)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    kernel = kernel / kernel.sum()
    maps = F.conv2d(F.pad(maps, (radius, radius, 0, 0), mode="replicate"), kernel.view(1, 1, 1, -1))
    return F.conv2d(F.pad(maps, (0, 0, radius, radius), mode="replicate"), kernel.view(1, 1, -1, 1))


# -- factory -------------------------------------------------------------------------------
def build_model(cfg: AGPNetConfig | None = None, weights: str | Path = "hub",
                device: str | torch.device = "cpu") -> tuple[AGPNet, dict]:
    """AGPNet with its encoder weights from `weights`: "hub", "auto", "random", a weights file or a
    weights folder (agpnet.model.backbone). Returns (model on `device`, weights_info)."""
    cfg = cfg or AGPNetConfig()
    vit, info = create_backbone(cfg, weights)
    model = assemble(cfg, vit)
    if not info["pretrained"]:
        model.weights = "random"
    else:
        model.weights = "hub" if str(weights) in ("hub", "auto") else str(Path(weights).resolve())
    model.weights_info = info
    return model.to(device), info


def assemble(cfg: AGPNetConfig, vit: nn.Module) -> AGPNet:
    """AGPNet around `vit` with the decoder initialised from cfg.init_seed (global RNG untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.init_seed)
        return AGPNet(cfg, vit)
