"""Evaluate a trained model on a test set: stream batches into the metrics accumulator.

By default maps and masks are compared at the model's input resolution (S x S, resize without
crop; masks nearest-neighbour, binarised > 0), as metrics.md specifies. With
resolution="original", each map is bilinearly upsampled to its image's original size and
compared with the original mask; the images of a category may differ in size.

Memory: the images of each category are counted up front from the test set, and a category is
finished in the accumulator (its metrics computed, its maps freed) as soon as its last image is
in. Every reader yields a category's test images together (load_split concatenates the
categories), so at most one category's maps are held at a time (and the first images of the
next one, up to a batch): the peak is about the largest category's maps plus their sort, not the
whole test set. A test set in another order stays correct (nothing is reordered: maps.npz keeps
the test set's order) and only holds maps longer.
"""

import contextlib
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from agpnet.atomic import atomic_write
from agpnet.data import load_mask
from agpnet.data.imagefile import image_size
from agpnet.metrics import MetricAccumulator
from agpnet.runtime import autocast, exact_fp32, loader_workers


@dataclass
class EvalResult:
    metrics: dict  # {category: {7 metrics + "mad"}, "mean": {...}}, fractions in [0, 1]
    n_images: int
    seconds: float  # the whole evaluation: decoding, model, map collection and metrics (not maps.npz)
    images_per_second: float
    resolution: str
    precision: str  # "fp32" or "bf16" (model precision and map storage)


def evaluate(model, test_set, device: torch.device, batch_size: int = 16, fpr_limit: float = 0.3,
             maps_path: str | Path | None = None, maps_size: int = 128, num_workers: int | None = None,
             amp: str = "auto", resolution: str = "input", precision: str = "fp32") -> EvalResult:
    """Metrics of `model` on `test_set` (an AnomalyDataset). Writes maps.npz when `maps_path` is given.

    precision "fp32": the model runs in fp32 (no TF32 on CUDA) and the maps are kept as float32
    (4 B per pixel); "bf16": `amp` applies (bf16 autocast on CUDA by default) and the maps are kept as float16
    (2 B per pixel). `num_workers` as in TrainConfig."""
    loader = DataLoader(test_set, batch_size=batch_size, shuffle=False,
                        num_workers=loader_workers(num_workers, device), pin_memory=device.type == "cuda")
    accumulator = MetricAccumulator(map_dtype=torch.float32 if precision == "fp32" else torch.float16)
    amp = amp if precision == "bf16" else "off"
    keep = _MapStore(maps_size) if maps_path is not None else None
    remaining = Counter(sample.category for sample in test_set.samples)  # images not yet added
    size = None
    start = time.perf_counter()
    model.eval()
    exact = exact_fp32() if precision == "fp32" else contextlib.nullcontext()
    with torch.inference_mode(), autocast(amp, device), exact:
        for batch in loader:
            images = batch["image"].to(device, non_blocking=True)
            out = model.predict(images)
            size = images.shape[-1]
            if resolution == "original":
                for i, index in enumerate(batch["index"].tolist()):
                    amap, mask = _at_original_size(out["anomaly_map"][i], test_set.samples[index])
                    accumulator.add(batch["category"][i], out["score"][i:i + 1], batch["label"][i:i + 1],
                                    amap, mask)
            else:
                accumulator.add(batch["category"], out["score"], batch["label"], out["anomaly_map"],
                                batch["mask"])
            if keep is not None:
                keep.add(batch, out, model.attention_masks(images, progress=1.0))
            _finish_complete(accumulator, remaining, batch["category"], fpr_limit)
    metrics = accumulator.compute(fpr_limit=fpr_limit)  # host numbers: the device's work is done
    seconds = time.perf_counter() - start
    if keep is not None:
        keep.save(maps_path)
    n = len(test_set)
    described = (f"original image resolution (maps upsampled bilinearly from the {size}x{size} px input)"
                 if resolution == "original" else f"input resolution {size}x{size} px (resize, no crop)")
    return EvalResult(metrics=metrics, n_images=n, seconds=seconds, images_per_second=n / max(seconds, 1e-9),
                      resolution=described, precision=precision)


def _finish_complete(accumulator: MetricAccumulator, remaining: Counter, categories: list[str],
                     fpr_limit: float) -> None:
    """Count the batch's images off `remaining` and finish the categories that have none left."""
    remaining.subtract(categories)
    for name in dict.fromkeys(categories):
        if remaining[name] == 0:
            accumulator.finish(name, fpr_limit)


def _at_original_size(anomaly_map: torch.Tensor, sample) -> tuple[torch.Tensor, torch.Tensor]:
    """(1,H,W) map upsampled to the sample's original image size and its (1,H,W) original mask
    (the readers have already checked that mask and image sizes agree)."""
    width, height = image_size(sample.image)
    if sample.mask is None:
        mask = torch.zeros(1, height, width, dtype=torch.bool)
    else:
        mask = torch.from_numpy(load_mask(sample.mask, (width, height)) > 0)[None]
    upsampled = F.interpolate(anomaly_map[None, None].float(), size=(height, width), mode="bilinear",
                              align_corners=False)[0]
    return upsampled, mask  # the mask stays on the host: the accumulator packs it there


class _MapStore:
    """Anomaly maps, masks and attention masks of every test image, for maps.npz (viewer)."""

    def __init__(self, size: int):
        self.size = size
        self.arrays: dict[str, list] = {k: [] for k in (
            "anomaly_maps", "masks", "scores", "labels", "paths", "categories", "defects",
            "a_prior", "a_learn", "a_final")}

    def add(self, batch: dict, out: dict, attention: dict) -> None:
        s = self.size
        maps = F.interpolate(out["anomaly_map"][:, None].float(), size=(s, s), mode="bilinear",
                             align_corners=False)
        masks = F.interpolate(batch["mask"][:, None].float(), size=(s, s), mode="nearest") > 0
        self.arrays["anomaly_maps"].append(maps[:, 0].to(torch.float16).cpu().numpy())
        self.arrays["masks"].append(masks[:, 0].cpu().numpy())
        self.arrays["scores"].append(out["score"].float().cpu().numpy())
        self.arrays["labels"].append(np.asarray(batch["label"], dtype=np.int8))
        self.arrays["paths"].append(np.asarray([str(Path(p).resolve()) for p in batch["path"]], dtype=str))
        for key, name in (("categories", "category"), ("defects", "defect")):
            self.arrays[key].append(np.asarray(batch[name], dtype=str))
        for key in ("a_prior", "a_learn", "a_final"):
            self.arrays[key].append(attention[key].to(torch.float16).cpu().numpy())

    def save(self, path: str | Path) -> None:
        arrays = {k: np.concatenate(v) for k, v in self.arrays.items()}
        atomic_write(path, lambda tmp: _savez(tmp, arrays))


def _savez(tmp: Path, arrays: dict) -> None:
    with open(tmp, "wb") as f:  # a file object keeps numpy from appending ".npz" to the temp name
        np.savez_compressed(f, **arrays)
