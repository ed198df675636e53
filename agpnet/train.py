"""Training: fit the decoder of an AGPNet on normal images, with checkpoints and resume.

AdamW on the decoder only, step decay of the learning rate, gradient clipping, the EMA decoder
updated after every step. The training images are decoded once and kept as uint8 (image_cache:
on the GPU, or in host memory; 0.7 GB for MVTec-AD at 256 px), so no DataLoader runs in the
loop. The clean features and A_prior of every training image are computed once (a pre-pass) and
reused: only the image-perturbed pass runs the encoder in each step. Memory of that cache:
N_images * h*w * C values, float16 on CUDA (ViT-S at 256 px: 196 KB per image, 0.7 GB for the
3629 MVTec-AD training images), float32 on CPU. The method has no random augmentation, so both
caches change nothing; a dataset that declares a random transform is refused by both.

Randomness (data order, noise) is reseeded at the start of every epoch from (seed, epoch), so
a run resumed from an end-of-epoch checkpoint continues exactly as an uninterrupted one.
"""

import dataclasses
import logging
import math
import random
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, RandomSampler
from tqdm.auto import tqdm

from agpnet.config import TrainConfig, field_names
from agpnet.data.decoded import DecodedImages
from agpnet.errors import AgpnetError
from agpnet.model import AGPNet
from agpnet.model.checkpoint import CHECKPOINT_NAME, read_checkpoint, save_checkpoint
from agpnet.progress import ProgressFile
from agpnet.runtime import autocast, loader_workers, use_compile

log = logging.getLogger(__name__)

SYNC_EVERY = 10  # steps between host syncs (loss check, progress bar)
# image_cache=auto keeps the decoded images on the GPU up to this share of its free memory
IMAGE_CACHE_SHARE = 0.25
# Fields that may change when resuming (meaning(resume=True) in agpnet.config): num_workers,
# checkpoint_every and image_cache do not change the result; compile and compile_mode change the
# floating-point rounding, so a run resumed with another compile setting (or on another device) is
# not bit-identical: each stretch of training is listed in the checkpoint's and the record's `segments`.
RESUME_FREE_FIELDS = field_names(resume=True)


class TrainingDiverged(AgpnetError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


@dataclass
class TrainResult:
    loss_per_epoch: list[float]
    train_seconds: float  # this call's wall time, feature-cache pass included
    images_per_second: float  # training images processed per second of train_seconds (NaN if none)
    checkpoint: Path
    # each stretch of training: from_epoch, to_epoch, device, compile, compile_mode, feature_cache
    segments: list[dict]
    features_seconds: float = 0.0  # decoding the images and the feature-cache pass, before the first step
    # wall time of each epoch of this call
    epoch_seconds: list[float] = dataclasses.field(default_factory=list)


def fit(model: AGPNet, train_set, cfg: TrainConfig, out_dir: str | Path, device: str | torch.device,
        resume: bool = False, progress: bool = True, data: dict | None = None) -> TrainResult:
    """Train `model`'s decoder on `train_set` (items with "image" (3, S, S) and "index");
    writes out_dir/checkpoint.pt and out_dir/progress.json. resume=True continues from that
    checkpoint when it exists. `data`: what identifies the training data (dataset, root, files, ...);
    stored in the checkpoint, and a resume on other data stops with the differing field."""
    live = ProgressFile(out_dir)
    try:
        return _fit(model, train_set, cfg, Path(out_dir), torch.device(device), resume, progress, live, data)
    except BaseException as err:  # diverged, interrupted, crashed: the progress file must not look alive
        if live.fields:
            live.update(force=True, stage="failed")
        if _compile_failed(err):
            reason = " ".join(str(err).split())[:500]
            raise AgpnetError(f"torch.compile failed ({reason}); train without it: compile: false "
                              "(--compile false)") from err
        raise


def _compile_failed(err: BaseException) -> bool:
    """Whether `err` comes from torch.compile (its exception module looked up, never imported here)."""
    dynamo = sys.modules.get("torch._dynamo.exc")
    return dynamo is not None and isinstance(err, dynamo.TorchDynamoException)


def _fit(model: AGPNet, train_set, cfg: TrainConfig, out_dir: Path, device: torch.device, resume: bool,
         progress: bool, live: ProgressFile, data: dict | None) -> TrainResult:
    path = out_dir / CHECKPOINT_NAME
    if len(train_set) == 0:
        raise AgpnetError("training set: no images (expected at least one normal training image)")
    model.to(device).train()
    params = list(model.decoder.parameters())
    optimizer = torch.optim.AdamW(params, lr=cfg.lr * cfg.batch_size / 8, weight_decay=cfg.weight_decay)
    losses, start_epoch, segments = [], 0, []
    fingerprint = model.encoder.fingerprint()
    if resume and path.exists():
        state = read_checkpoint(path, device)
        check_resumable(state, model, cfg, fingerprint, path, data)
        model.decoder.load_state_dict(state["decoder"])
        if model.decoder_ema is not None:
            model.decoder_ema.load_state_dict(state["decoder_ema"])
        optimizer.load_state_dict(state["optimizer"])
        losses, start_epoch, segments = list(state["loss_per_epoch"]), state["epoch"], list(state["segments"])
        log.info("resuming %s after epoch %d/%d", path, start_epoch, cfg.epochs)
    elif resume:
        log.info("no checkpoint at %s: training from the start", path)
    if start_epoch >= cfg.epochs:
        model.eval()
        return TrainResult(losses, 0.0, float("nan"), path, segments)
    compiled = use_compile(cfg.compile, device, len(train_set) * (cfg.epochs - start_epoch))
    if compiled:
        if cfg.compile is None:
            log.info("compile auto: compiling for %d epochs of %d images (mode %s)", cfg.epochs - start_epoch,
                     len(train_set), cfg.compile_mode)
        model.compile_in_place(cfg.compile_mode)

    if cfg.cache_features and getattr(train_set, "random_transform", False):
        raise AgpnetError("train config cache_features=true: the training set applies a random transform, "
                          "so cached features would go stale; use cache_features=false")
    started = time.perf_counter()
    amp = autocast(cfg.amp, device)
    steps = math.ceil(len(train_set) / cfg.batch_size)
    live.update(force=True, stage="features", epoch=start_epoch, epochs=cfg.epochs, step=start_epoch * steps,
                steps=cfg.epochs * steps, loss=None, img_s=None)  # decoding the images counts as this stage
    order = torch.Generator()  # the shuffle alone draws from it: the order does not depend on workers
    batches = TrainingBatches(train_set, cfg, device, order)
    decay_epoch = round(cfg.lr_decay_at * cfg.epochs)
    saved = start_epoch if start_epoch else None  # epoch of the checkpoint on disk from this run
    n_images = 0
    cuda_graphs = compiled and cfg.compile_mode == "reduce-overhead" and device.type == "cuda"
    cache = None
    if cfg.cache_features:
        cache = FeatureCache(model, batches.in_order(), len(train_set), device, amp)
    segment = {"from_epoch": start_epoch, "to_epoch": start_epoch, "device": str(device),
               "compile": compiled, "compile_mode": cfg.compile_mode,
               "feature_cache": str(cache.features.dtype) if cache else None, "image_cache": batches.place}
    segments.append(segment)
    live.update(force=True, stage="train")
    features_seconds, epoch_seconds = time.perf_counter() - started, []
    total = (cfg.epochs - start_epoch) * steps
    with tqdm(total=total, disable=not progress, desc="train", unit="step") as bar:
        for epoch in range(start_epoch, cfg.epochs):
            epoch_started = time.perf_counter()
            seed_epoch(cfg.seed, epoch, order)
            for group in optimizer.param_groups:
                decay = cfg.lr_decay_gamma if epoch >= decay_epoch else 1.0
                group["lr"] = cfg.lr * cfg.batch_size / 8 * decay
            step_losses, checked = [], 0
            for i, (images, index) in enumerate(batches.shuffled()):
                if cuda_graphs:  # a new step: the previous step's graph outputs may be overwritten
                    torch.compiler.cudagraph_mark_step_begin()
                clean = cache.get(index) if cache is not None else None
                with amp:
                    t = (epoch * steps + i) / (cfg.epochs * steps)
                    loss = model.training_loss(images, t, clean=clean)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
                optimizer.step()
                model.update_ema(epoch * steps + i)
                step_losses.append(loss.detach())
                n_images += images.shape[0]
                if (i + 1) % SYNC_EVERY == 0 or i + 1 == steps:  # one host sync per SYNC_EVERY steps
                    recent = torch.stack(step_losses[checked:]).float().cpu()
                    if not torch.isfinite(recent).all():
                        bad = checked + int((~torch.isfinite(recent)).nonzero()[0, 0])
                        kept = (f"the checkpoint of epoch {saved} ({path}) is kept" if saved
                                else "no checkpoint was written")
                        raise TrainingDiverged(
                            f"training diverged: non-finite loss at epoch {epoch + 1}/{cfg.epochs}, step "
                            f"{bad + 1}/{steps}; {kept}; try a lower lr, a smaller grad_clip or amp='off'")
                    checked = len(step_losses)
                    bar.update(len(recent))
                    img_s = n_images / (time.perf_counter() - started)
                    bar.set_postfix(epoch=epoch + 1, loss=f"{float(recent[-1]):.4g}", img_s=f"{img_s:.1f}")
                    live.update(epoch=epoch + 1, step=epoch * steps + i + 1, loss=float(recent[-1]),
                                img_s=img_s)
            losses.append(float(torch.stack(step_losses).float().mean()))  # a host sync: the epoch is done
            epoch_seconds.append(time.perf_counter() - epoch_started)
            if epoch + 1 == cfg.epochs or (cfg.checkpoint_every and (epoch + 1) % cfg.checkpoint_every == 0):
                segment["to_epoch"] = epoch + 1
                save_checkpoint(path, model, optimizer, cfg, epoch + 1, losses, fingerprint, data, segments)
                saved = epoch + 1
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - started
    live.update(force=True, stage="trained")
    # evaluation runs the plain modules: one pass does not repay a compilation for its batch size
    if compiled:
        model.compile_in_place(None)
    model.eval()
    return TrainResult(losses, seconds, n_images / seconds, path, segments, features_seconds, epoch_seconds)


def seed_epoch(seed: int, epoch: int, order: torch.Generator) -> None:
    """Seed torch (CPU and CUDA), numpy, random and the data-order generator from (seed, epoch)."""
    s = seed * 1_000_003 + epoch
    torch.manual_seed(s)
    np.random.seed(s % 2**32)
    random.seed(s)
    order.manual_seed(s)


class TrainingBatches:
    """The training images, batch by batch, on the device: from the decoded-image cache (gathered
    there; cfg.image_cache) or from a DataLoader that decodes them every epoch."""

    def __init__(self, train_set, cfg: TrainConfig, device: torch.device, order: torch.Generator):
        self.dataset, self.batch_size, self.device, self.order = train_set, cfg.batch_size, device, order
        self.workers = loader_workers(cfg.num_workers, device)
        self.place = image_cache_place(cfg.image_cache, train_set, device)
        self.decoded = None
        if self.place is not None:
            where = device if self.place == "device" else torch.device("cpu")
            self.decoded = DecodedImages(train_set, where, self.workers)
        else:
            self.loader = DataLoader(train_set, batch_size=cfg.batch_size, num_workers=self.workers,
                                     sampler=RandomSampler(train_set, generator=order),
                                     generator=torch.Generator().manual_seed(cfg.seed),
                                     pin_memory=device.type == "cuda", persistent_workers=self.workers > 0)

    def shuffled(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """One epoch: (images (B, 3, S, S) on the device, item indices (B,)) in the order drawn from
        `order` (the same order with and without the cache)."""
        if self.decoded is None:
            for batch in self.loader:
                yield batch["image"].to(self.device, non_blocking=True), batch["index"]
            return
        permutation = torch.randperm(len(self.dataset), generator=self.order)  # what RandomSampler draws
        permutation = permutation.to(self.decoded.pixels.device)  # one copy per epoch, not two per step
        for index in permutation.split(self.batch_size):
            yield self.decoded.batch(index, self.device), index

    def in_order(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Every item once, in index order, as (images on the device, indices)."""
        if self.decoded is None:
            loader = DataLoader(self.dataset, batch_size=self.batch_size, shuffle=False,
                                num_workers=self.workers)
            for batch in loader:
                yield batch["image"].to(self.device, non_blocking=True), batch["index"]
            return
        for index in torch.arange(len(self.dataset)).split(self.batch_size):
            yield self.decoded.batch(index, self.device), index


def image_cache_place(setting: str, train_set, device: torch.device) -> str | None:
    """Where the decoded training images are kept: "device", "host" or None (decoded every epoch).
    auto: on the GPU when they take at most IMAGE_CACHE_SHARE of its free memory, else on the host;
    None for datasets that cannot be cached (no read_pixels)."""
    if setting == "off":
        return None
    if getattr(train_set, "random_transform", False):
        raise AgpnetError(f"train config image_cache={setting}: the training set applies a random transform, "
                          "so decoded images would go stale; use image_cache=off")
    if not hasattr(train_set, "read_pixels"):
        if setting == "auto":
            return None
        raise AgpnetError(f"train config image_cache={setting}: this training set has no decoded pixels "
                          "to keep (expected an AnomalyDataset); use image_cache=off")
    if setting != "auto":
        return setting
    if device.type != "cuda":
        return "host"
    free, _ = torch.cuda.mem_get_info(device)
    return "device" if DecodedImages.size_of(train_set) <= IMAGE_CACHE_SHARE * free else "host"


class FeatureCache:
    """F_clean (n, h*w, C) and A_prior (n, h, w) of every training item, on `device`, by item index."""

    def __init__(self, model: AGPNet, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], n: int,
                 device: torch.device, amp):
        """batches: (images (B, 3, S, S) on `device`, item indices (B,)) covering items 0..n-1."""
        h, w = model.grid
        dtype = torch.float16 if device.type == "cuda" else torch.float32
        self.features = torch.empty(n, h * w, model.encoder.dim, dtype=dtype, device=device)
        self.attention = torch.empty(n, h, w, dtype=torch.float32, device=device)
        filled = torch.zeros(n, dtype=torch.bool)
        for images, index in batches:
            if index.min() < 0 or index.max() >= n:
                raise AgpnetError(f"training set item index {int(index.max())}: expected 0..{n - 1}")
            with amp:
                f_clean, a_prior = model.encode_clean(images)
            self.features[index.to(device)] = f_clean.to(dtype)
            self.attention[index.to(device)] = a_prior.float()
            filled[index] = True
        if not filled.all():
            raise AgpnetError(f"training set: item indices do not cover 0..{n - 1}")

    def get(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        index = index.to(self.features.device)
        return self.features[index].float(), self.attention[index]


def check_resumable(state: dict, model: AGPNet, cfg: TrainConfig, fingerprint: str, path: Path,
                    data: dict | None) -> None:
    """The checkpoint must come from the same data, model config, encoder weights and training settings."""
    old, new = state["data"], data
    if old is None or new is None:
        differ = [] if old is new else sorted(set(old or {}) | set(new or {}))
    else:  # a field newer than the checkpoint is not compared
        differ = sorted(k for k in old if old[k] != new.get(k))
    if differ:
        old, new = old or {}, new or {}
        shown = "; ".join(f"{k}: {old.get(k)!r} then, {new.get(k)!r} now" for k in differ[:3])
        raise AgpnetError(f"{path}: checkpoint was trained on other data ({shown}); "
                          "use a new output folder or resume=False")
    if state["model_config"] != model.cfg.to_dict():
        differ = sorted(k for k, v in model.cfg.to_dict().items() if state["model_config"].get(k) != v)
        raise AgpnetError(f"{path}: checkpoint has a different model config ({', '.join(differ)}); "
                          "use a new output folder or resume=False")
    now = dataclasses.asdict(cfg)
    differ = sorted(k for k, v in now.items()
                    if k not in RESUME_FREE_FIELDS and state["train_config"].get(k) != v)
    if differ:
        raise AgpnetError(f"{path}: checkpoint has different training settings ({', '.join(differ)}); "
                          "use a new output folder or resume=False")
    if state["encoder_sha256"] != fingerprint:
        raise AgpnetError(f"{path}: checkpoint was trained on different encoder weights "
                          f"({state['weights_info']['source']}, now {model.weights_info['source']})")
