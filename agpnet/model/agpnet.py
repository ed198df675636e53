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
from agpnet.model.perturbation import Perturbation, minmax


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
            raise AgpnetError(
                f"model config decoder_heads={cfg.decoder_heads}: must divide the encoder width {dim}")
        self.decoder = Decoder(dim, self.grid, cfg.decoder_depth, cfg.decoder_heads, cfg.decoder_mlp_ratio)
        self.decoder_ema = copy.deepcopy(self.decoder).requires_grad_(False) if cfg.ema_decoder else None
        self.perturbation = Perturbation(cfg)  # the training-only branch: attention, noise, schedules
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

    def training_loss(self, images: torch.Tensor, progress: float, clean=None,
                      generator: torch.Generator | None = None) -> torch.Tensor:
        """Reconstruction loss of one batch at training progress `progress` in [0, 1] (scalar).

        clean: optional (F_clean, A_prior) of `images` (the feature cache); computed when None.
        generator: optional, on the images' device, for reproducible noise.
        Loss = mean of MSE(decoder(F'), F_clean) over the enabled branches: feature-perturbed
        clean features, and features of the image-perturbed image (also feature-perturbed when
        noise_level="both"). noise="none": plain reconstruction of the clean features.
        """
        policy = self.perturbation
        if clean is None:
            f_clean, a_prior = self.encode_clean(images, with_attention=policy.active and policy.uses_prior)
        else:
            f_clean, a_prior = clean[0].float(), clean[1].float()
        inputs = policy.inputs(self, images, f_clean, a_prior, progress, generator)["decoder_inputs"]
        # both branches in one batch: the mean is (L_feat + L_img,feat) / 2
        recon = self.decoder(torch.cat(inputs))
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
        a_final = self.perturbation.final_attention(a_prior, a_learn)
        return {"a_prior": minmax(a_prior), "a_learn": minmax(a_learn), "a_final": a_final}

    @torch.no_grad()
    def perturbation_preview(self, images: torch.Tensor, progress: float,
                             generator: torch.Generator | None = None) -> dict:
        """What training does to `images` at `progress`, for the clean-image branch (a `generator`,
        if given, must live on the images' device):
        {"image_perturbed": (B, 3, S, S), "image_mask": (B, S, S) bool, "feature_noise_std": (B, h, w)}."""
        f_clean, a_prior = self.encode_clean(images)
        out = self.perturbation.inputs(self, images, f_clean, a_prior, progress, generator, training=False)
        return {"image_perturbed": out["image_perturbed"], "image_mask": out["image_mask"],
                "feature_noise_std": out["feature_noise_std"].view(-1, *self.grid)}


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
    """AGPNet around `vit` with the decoder initialised from cfg.initial_seed() (global RNG untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.initial_seed())
        return AGPNet(cfg, vit)
