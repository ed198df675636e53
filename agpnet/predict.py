"""Anomaly maps for new images: heatmap overlays (PNG, original size) and a CSV of image scores."""

import contextlib
import csv
import io
from pathlib import Path

import matplotlib
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader

from agpnet.atomic import replace_folder, write_bytes, write_text
from agpnet.data import IMAGE_SUFFIXES, AnomalyDataset, Sample, image_size, load_rgb
from agpnet.errors import AgpnetError
from agpnet.model.checkpoint import load_checkpoint
from agpnet.runtime import autocast, exact_fp32, resolve_device

SCORES_CSV = "scores.csv"


def find_images(inputs: list[str], skip: Path | None = None) -> list[Path]:
    """Image files named directly or found (recursively, sorted) in the given folders; hidden
    files and anything under `skip` (the output folder) are left out."""
    skip = skip.resolve() if skip is not None else None
    found = []
    for item in map(Path, inputs):
        if item.is_dir():
            found += sorted(p for p in item.rglob("*")
                            if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
                            and not (skip and p.resolve().is_relative_to(skip)))
        elif item.is_file():
            found.append(item)
        else:
            raise AgpnetError(f"{item}: no such image file or folder")
    if not found:
        raise AgpnetError(
            f"{', '.join(inputs)}: no images found (expected {'/'.join(sorted(IMAGE_SUFFIXES))})")
    return found


def predict_images(checkpoint: str, inputs: list[str], out_dir: str, device: str = "auto",
                   batch_size: int = 16, overwrite: bool = False) -> Path:
    """Writes `<out>/<stem>_overlay.png` per image and `<out>/scores.csv`; returns the CSV path.

    Overlay colours share one scale over all given images (min..max of their maps), so a
    normal image looks calm next to a defective one. An `out` that holds files is replaced only
    with `overwrite`, and only when it holds an earlier prediction; the new files are built in a
    staging folder and replace `out` as a whole once complete, so no old file stays beside them.
    """
    out = Path(out_dir)
    _check_replaceable(out, overwrite)
    paths = find_images(inputs, skip=out)
    for path in paths:
        image_size(path)  # every header readable (one line naming the file) before anything is written
    device = resolve_device(device)
    model, _ = load_checkpoint(checkpoint, device)

    def build(staging: Path) -> None:
        maps, scores = predict_maps(model, paths, device, batch_size, amp="off")  # fp32, as evaluation
        vmin, vmax = float(maps.min()), float(maps.max())
        names = [f"{i:04d}_{p.stem}" for i, p in enumerate(paths)]  # unique even when stems repeat
        for path, name, anomaly_map in zip(paths, names, maps):
            write_bytes(staging / f"{name}_overlay.png", overlay_png(load_rgb(path), anomaly_map, vmin, vmax))
        rows = io.StringIO()
        writer = csv.writer(rows)
        writer.writerow(["image", "score", "overlay"])
        for path, name, score in zip(paths, names, scores.tolist()):
            writer.writerow([str(path), f"{score:.6g}", f"{name}_overlay.png"])
        write_text(staging / SCORES_CSV, rows.getvalue())

    return replace_folder(out, build) / SCORES_CSV


def _check_replaceable(out: Path, overwrite: bool) -> None:
    """`out` is new or empty, or (with `overwrite`) holds an earlier prediction only: scores.csv,
    overlays and hidden files."""
    if out.exists() and not out.is_dir():
        raise AgpnetError(f"{out}: expected a folder, found a file")
    held = sorted(out.iterdir()) if out.is_dir() else []
    if held and not overwrite:
        raise AgpnetError(f"{out}: folder is not empty; use --overwrite to replace an earlier prediction "
                          "there, or another --out")
    foreign = next((p for p in held if not (p.name == SCORES_CSV or p.name.endswith("_overlay.png")
                                             or p.name.startswith("."))), None)
    if foreign is not None:
        raise AgpnetError(f"{foreign}: not a file of an earlier prediction; --overwrite replaces --out "
                          "as a whole: choose another --out")


def predict_maps(model, paths: list[Path], device: torch.device, batch_size: int = 16,
                 amp: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """(anomaly maps (N,S,S), image scores (N,)), float32 on the host, of the images at `paths` in
    their order. `amp` as in TrainConfig ("off": the model in fp32, no TF32 on CUDA)."""
    samples = [Sample(image=p, category="predict", label=0, defect="unknown", mask=None) for p in paths]
    dataset = AnomalyDataset(samples, image_size=model.cfg.image_size, mean=model.mean, std=model.std)
    maps, scores = [], []
    model.eval()
    exact = exact_fp32() if amp == "off" else contextlib.nullcontext()
    with torch.inference_mode(), autocast(amp, device), exact:
        for batch in DataLoader(dataset, batch_size=batch_size):
            predicted = model.predict(batch["image"].to(device))
            maps.append(predicted["anomaly_map"].float().cpu())
            scores.append(predicted["score"].float().cpu())
    return torch.cat(maps), torch.cat(scores)


def upsample(anomaly_map: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The map (S,S) bilinearly resized to `size` = (width, height) of its image: (height, width)."""
    width, height = size
    resized = F.interpolate(anomaly_map[None, None], size=(height, width), mode="bilinear",
                            align_corners=False)
    return resized[0, 0]


def overlay_png(image: Image.Image, anomaly_map: torch.Tensor, vmin: float, vmax: float,
                alpha: float = 0.5) -> bytes:
    """PNG bytes: the map (S,S) upsampled to the image's size, coloured (jet) and blended over it."""
    resized = upsample(anomaly_map, image.size)
    scaled = ((resized - vmin) / max(vmax - vmin, 1e-12)).clamp(0, 1).numpy()
    heat = matplotlib.colormaps["jet"](scaled)[..., :3]
    blended = (1 - alpha) * np.asarray(image, dtype=np.float32) / 255 + alpha * heat
    buffer = io.BytesIO()
    Image.fromarray((blended * 255).round().astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()

