"""Small dataset trees for the data-layer tests (32x32 images, built in tmp_path)."""

import csv
from pathlib import Path

import numpy as np
from PIL import Image

SIZE = (32, 32)  # (width, height)


def write_image(path: Path, size=SIZE, mode: str = "RGB", seed: int = 0) -> Path:
    """Random image in `mode` ("RGB", "L", "RGBA", "I;16"); the format follows the suffix."""
    rng = np.random.default_rng(seed)
    width, height = size
    if mode == "I;16":
        pixels = rng.integers(0, 65536, (height, width), dtype=np.uint16)
    else:
        channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
        pixels = rng.integers(0, 256, (height, width, channels), dtype=np.uint8)
        pixels = pixels[..., 0] if channels == 1 else pixels
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


def write_mask(path: Path, size=SIZE, box=(8, 8, 20, 16), value: int = 255) -> Path:
    """Mode-L mask with `value` inside box (x0, y0, x1, y1) and 0 elsewhere."""
    width, height = size
    pixels = np.zeros((height, width), np.uint8)
    x0, y0, x1, y1 = box
    pixels[y0:y1, x0:x1] = value
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


def make_mvtec(
    root: Path,
    categories=("bottle", "cable"),
    n_train: int = 4,
    n_good: int = 2,
    defects=("crack", "scratch"),
    n_defect: int = 2,
    suffix: str = ".png",
    mask_name: str = "{stem}_mask.png",
) -> Path:
    """MVTec-AD tree, plus license.txt and readme.txt files at the root as in the release."""
    for c, category in enumerate(categories):
        cat = root / category
        for i in range(n_train):
            write_image(cat / "train" / "good" / f"{i:03d}{suffix}", seed=100 * c + i)
        for i in range(n_good):
            write_image(cat / "test" / "good" / f"{i:03d}{suffix}", seed=100 * c + 50 + i)
        for d, defect in enumerate(defects):
            for i in range(n_defect):
                write_image(cat / "test" / defect / f"{i:03d}{suffix}", seed=100 * c + 70 + 10 * d + i)
                write_mask(cat / "ground_truth" / defect / mask_name.format(stem=f"{i:03d}"))
    (root / "license.txt").write_text("CC BY-NC-SA 4.0\n")
    (root / "readme.txt").write_text("MVTec-AD\n")
    return root


def make_visa_raw(
    root: Path, categories=("candle", "pcb1"), n_train: int = 4, n_good: int = 2, n_anomaly: int = 2
) -> Path:
    """VisA release: <cat>/Data/Images/{Normal,Anomaly}/*.JPG, Data/Masks/Anomaly/*.png, split_csv/1cls.csv."""
    rows = []
    for c, category in enumerate(categories):
        data = Path(category) / "Data"
        for i in range(n_train + n_good):
            image = data / "Images" / "Normal" / f"{i:04d}.JPG"
            write_image(root / image, seed=100 * c + i)
            rows.append([category, "train" if i < n_train else "test", "normal", image.as_posix(), ""])
        for i in range(n_anomaly):
            image = data / "Images" / "Anomaly" / f"{i:03d}.JPG"
            mask = data / "Masks" / "Anomaly" / f"{i:03d}.png"
            write_image(root / image, seed=100 * c + 80 + i)
            write_mask(root / mask, value=1)
            rows.append([category, "test", "anomaly", image.as_posix(), mask.as_posix()])
    write_visa_csv(root, ["object", "split", "label", "image", "mask"], rows)
    return root


def write_visa_csv(root: Path, header: list[str], rows: list[list[str]]) -> Path:
    path = root / "split_csv" / "1cls.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def make_mvtec3d(
    root: Path, categories=("bagel", "rope"), n_train: int = 3, defects=("hole",), n_test: int = 2
) -> Path:
    """MVTec-3D AD tree with rgb/, gt/ and xyz/ folders, validation/ and an all-black test/good/gt."""
    for c, category in enumerate(categories):
        cat = root / category
        for i in range(n_train):
            write_image(cat / "train" / "good" / "rgb" / f"{i:03d}.png", seed=100 * c + i)
            (cat / "train" / "good" / "xyz").mkdir(parents=True, exist_ok=True)
            (cat / "train" / "good" / "xyz" / f"{i:03d}.tiff").write_bytes(b"not read")
        write_image(cat / "validation" / "good" / "rgb" / "000.png", seed=100 * c + 40)
        for i in range(n_test):
            write_image(cat / "test" / "good" / "rgb" / f"{i:03d}.png", seed=100 * c + 50 + i)
            write_mask(cat / "test" / "good" / "gt" / f"{i:03d}.png", value=0)
            for d, defect in enumerate(defects):
                write_image(cat / "test" / defect / "rgb" / f"{i:03d}.png", seed=100 * c + 70 + 10 * d + i)
                write_mask(cat / "test" / defect / "gt" / f"{i:03d}.png")
    return root


FOLDER_SUFFIXES = (".png", ".jpg", ".bmp", ".tif")


def make_folder(
    root: Path,
    n_train: int = 4,
    n_good: int = 2,
    defects=("dent", "rust"),
    n_defect: int = 2,
    mask_dir: str | None = "ground_truth",
    nested: bool = True,
) -> Path:
    """Folder layout with mixed formats (png/jpg/bmp/tif) and grayscale images; masks either in
    <mask_dir>/<defect>/<stem>_mask.png (nested) or <mask_dir>/<stem>.png (flat, stems unique)."""
    for i in range(n_train):
        mode = "L" if i % 2 else "RGB"
        write_image(root / "train" / "good" / f"img{i}{FOLDER_SUFFIXES[i % 4]}", mode=mode, seed=i)
    for i in range(n_good):
        write_image(root / "test" / "good" / f"ok{i}{FOLDER_SUFFIXES[i % 4]}", seed=50 + i)
    for d, defect in enumerate(defects):
        for i in range(n_defect):
            stem = f"{defect}{i}"
            write_image(
                root / "test" / defect / f"{stem}{FOLDER_SUFFIXES[(i + d) % 4]}", seed=70 + 10 * d + i
            )
            if mask_dir is not None:
                name = f"{defect}/{stem}_mask.png" if nested else f"{stem}.png"
                write_mask(root / mask_dir / name)
    return root
