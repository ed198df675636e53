"""MVTec AD 2 submission: the anomaly maps of test_private and test_private_mixed in the format of
MVTec's evaluation server (benchmark.mvtec.com), which has the ground truth of those sets.

    <out>/anomaly_images/<category>/<set>/<image stem>.tiff
        float16, one channel, at the image's own size (the model's S x S map, upsampled bilinearly)
    <out>/anomaly_images_thresholded/<category>/<set>/<image stem>.png
        uint8, 255 where the map is above the category's threshold, 0 elsewhere

The server computes the threshold-free metrics from the first and the segmentation F1 from the
second. Each category's threshold comes from its validation/good images only, never from a test
set: the mean plus 3 standard deviations of their map pixels (at the images' own sizes), the
baseline MVTec's upload checker suggests. Nothing else is written into <out>: the checker
rejects any other file there. MVTec's check_and_prepare_data_for_upload.py then checks the
folder (all 8 categories, every image) and packs it for the upload.
"""

import io
import math
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import tifffile
import torch
from PIL import Image

from agpnet.atomic import staging_folder, write_bytes
from agpnet.data import image_size, list_categories
from agpnet.errors import AgpnetError
from agpnet.model.checkpoint import load_checkpoint
from agpnet.predict import find_images, predict_maps, upsample
from agpnet.runtime import resolve_device

SUBMISSION_SETS = ("test_private", "test_private_mixed")
MVTEC2_CATEGORIES = ("can", "fabric", "fruit_jelly", "rice", "sheet_metal", "vial", "wallplugs", "walnuts")
THRESHOLD_STDS = 3.0  # threshold = mean + THRESHOLD_STDS x std of the validation/good map pixels
FLOAT16_MAX = float(np.finfo(np.float16).max)


def write_submission(checkpoint: str, root: str, out_dir: str, categories: str | None = None,
                     device: str = "auto", batch_size: int = 16, overwrite: bool = False) -> dict[str, float]:
    """Write the submission files of `categories` (comma-separated; default: those the checkpoint
    was trained on) into `out_dir`; returns {category: threshold}. Every input is checked, and no
    file of an earlier submission is replaced without `overwrite`, before anything is written."""
    root, out = Path(root), Path(out_dir)
    available = list_categories("mvtec2", root)
    torch_device = resolve_device(device)
    model, meta = load_checkpoint(checkpoint, torch_device)
    chosen = _categories(categories, meta, available, root, checkpoint)
    validation = {c: find_images([str(root / c / "validation" / "good")]) for c in chosen}
    test = {(c, s): find_images([str(root / c / s)]) for c in chosen for s in SUBMISSION_SETS}
    targets = {key: [_targets(*key, root / key[0] / key[1], path) for path in paths]  # relative to out
               for key, paths in test.items()}
    if out.exists() and not out.is_dir():
        raise AgpnetError(f"{out}: expected a folder, found a file")
    files = [relative for pairs in targets.values() for pair in pairs for relative in pair]
    existing = next((out / relative for relative in files if (out / relative).exists()), None)
    if existing is not None and not overwrite:
        raise AgpnetError(f"{existing}: a submission file is already there; use --overwrite to replace it, "
                          "or another --out")
    sizes = {path: image_size(path) for paths in (*validation.values(), *test.values()) for path in paths}

    # Everything is written into a staging folder first and moved into `out` once complete, so a
    # failure (a map float16 cannot hold, a full disk) leaves no half submission behind.
    thresholds = {}
    with staging_folder(out) as staging:
        for category in chosen:
            maps, _ = predict_maps(model, validation[category], torch_device, batch_size, amp="off")
            upsampled = (upsample(m, sizes[p]) for m, p in zip(maps, validation[category]))
            thresholds[category] = _threshold(upsampled)
            for name in SUBMISSION_SETS:
                images = test[category, name]
                maps, _ = predict_maps(model, images, torch_device, batch_size, amp="off")
                for path, anomaly_map, (tiff, png) in zip(images, maps, targets[category, name]):
                    full = _float16(upsample(anomaly_map, sizes[path]).numpy(), path)
                    write_bytes(staging / tiff, _tiff(full))
                    write_bytes(staging / png, _png_binary(full.astype(np.float64) > thresholds[category]))
        for relative in files:
            (out / relative).parent.mkdir(parents=True, exist_ok=True)
            os.replace(staging / relative, out / relative)
    return thresholds


def _categories(categories: str | None, meta: dict, available: list[str], root: Path,
                checkpoint: str) -> list[str]:
    if categories is not None:
        chosen = sorted({name.strip() for name in categories.split(",") if name.strip()})
        unknown = [name for name in chosen if name not in available]
        if unknown or not chosen:
            raise AgpnetError(f"--category {categories}: not in {root}; available: {', '.join(available)}")
        return chosen
    trained = (meta.get("data") or {}).get("categories")
    if not trained:
        return available
    missing = [name for name in trained if name not in available]
    if missing:
        raise AgpnetError(f"{checkpoint}: trained on {', '.join(missing)}, not found in {root} (available: "
                          f"{', '.join(available)}); choose with --category")
    return list(trained)


def _targets(category: str, name: str, folder: Path, image: Path) -> tuple[Path, Path]:
    """The (TIFF, PNG) paths of `image`'s files, relative to the submission folder."""
    relative = image.relative_to(folder)
    return (Path("anomaly_images") / category / name / relative.with_suffix(".tiff"),
            Path("anomaly_images_thresholded") / category / name / relative.with_suffix(".png"))


def _threshold(maps: Iterable[torch.Tensor]) -> float:
    """mean + THRESHOLD_STDS x std over every pixel of `maps`, one map at a time (sums in float64)."""
    count, total, squares = 0, 0.0, 0.0
    for anomaly_map in maps:
        values = anomaly_map.double()
        count += values.numel()
        total += float(values.sum())
        squares += float(values.square().sum())
    mean = total / count
    return mean + THRESHOLD_STDS * math.sqrt(max(squares / count - mean * mean, 0.0))


def _float16(anomaly_map: np.ndarray, image: Path) -> np.ndarray:
    """The map as float16 (the server's type); a value float16 cannot hold stops the export."""
    if not np.isfinite(anomaly_map).all() or np.abs(anomaly_map).max(initial=0.0) > FLOAT16_MAX:
        raise AgpnetError(f"{image}: anomaly map outside the float16 range (|value| <= {FLOAT16_MAX:g}) "
                          "that the evaluation server expects; the submission would not be faithful")
    return anomaly_map.astype(np.float16)


def _tiff(anomaly_map: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, anomaly_map)
    return buffer.getvalue()


def _png_binary(mask: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.where(mask, 255, 0).astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()
