"""Small dataset trees for the data-layer tests (32x32 images, built in tmp_path)."""

import csv
import json
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


def make_mvtec2(root: Path, categories=("can", "vial"), n_train: int = 3, n_validation: int = 2, n_good: int = 2,
                n_bad: int = 2, n_private: int = 2, size=SIZE) -> Path:
    """MVTec AD 2 tree: train/good, validation/good, test_public/{good,bad,ground_truth/bad/<stem>_mask.png},
    test_private/<nnn>_regular.png and test_private_mixed/<nnn>_mixed.png."""
    for c, category in enumerate(categories):
        cat = root / category
        for i in range(n_train):
            write_image(cat / "train" / "good" / f"{i:03d}_regular.png", size=size, seed=100 * c + i)
        for i in range(n_validation):
            write_image(cat / "validation" / "good" / f"{i:03d}_regular.png", size=size, seed=100 * c + 30 + i)
        for i in range(n_good):
            write_image(cat / "test_public" / "good" / f"{i:03d}_good.png", size=size, seed=100 * c + 50 + i)
        for i in range(n_bad):
            write_image(cat / "test_public" / "bad" / f"{i:03d}_bad.png", size=size, seed=100 * c + 70 + i)
            write_mask(cat / "test_public" / "ground_truth" / "bad" / f"{i:03d}_bad_mask.png", size=size)
        for i in range(n_private):
            write_image(cat / "test_private" / f"{i:03d}_regular.png", size=size, seed=100 * c + 80 + i)
            write_image(cat / "test_private_mixed" / f"{i:03d}_mixed.png", size=size, seed=100 * c + 90 + i)
    return root


REALIAD_RESOLUTION_DIRS = ("realiad_256", "realiad_1024")


def make_realiad(root: Path, categories=("audiojack", "pcb"), n_train: int = 3, n_good: int = 2, n_bad: int = 2,
                 split: str = "realiad_jsons", resolutions=REALIAD_RESOLUTION_DIRS, image=write_image) -> Path:
    """Real-IAD tree: <root>/realiad_<res>/<cat>/{OK/S<nnnn>/*.jpg, NG/<defect>/S<nnnn>/*.jpg + *_mask.png}
    for each resolution folder, and <root>/realiad_jsons/<split>/<cat>.json listing them. `image`
    writes one image (path, seed); masks always come from write_mask."""
    for c, category in enumerate(categories):
        train, test = [], []
        entries = []  # (part, relative image path, anomaly class, relative mask path)
        for i in range(n_train + n_good):
            part = "train" if i < n_train else "test"
            entries.append((part, f"OK/S{i:04d}/{category}_{i:04d}_OK_C1_20230922.jpg", "OK", None))
        for i in range(n_bad):
            stem = f"NG/AK/S{50 + i:04d}/{category}_{50 + i:04d}_NG_AK_C2_20230922"
            entries.append(("test", f"{stem}.jpg", "AK", f"{stem}_mask.png"))
        for resolution in resolutions:
            cat_dir = root / resolution / category
            for n, (_, image_path, _, mask_path) in enumerate(entries):
                image(cat_dir / image_path, seed=100 * c + n)
                if mask_path:
                    write_mask(cat_dir / mask_path)
        for part, image_path, anomaly_class, mask_path in entries:
            (train if part == "train" else test).append(
                {"category": category, "anomaly_class": anomaly_class, "image_path": image_path, "mask_path": mask_path})
        write_realiad_json(root, split, category, {"meta": {"prefix": category, "normal_class": "OK"},
                                                   "train": train, "test": test})
    return root


def write_realiad_json(root: Path, split: str, category: str, content) -> Path:
    path = root / "realiad_jsons" / split / f"{category}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(content))
    return path


def make_btad(root: Path, products=("01", "03"), n_train: int = 3, n_good: int = 2, n_bad: int = 2) -> Path:
    """BTAD tree: <product>/train/ok, test/ok, test/ko and ground_truth/ko, with the release's mix of
    formats: product 01 has .bmp images and .png masks, 02 .png and .png, 03 .bmp and .bmp."""
    formats = {"01": (".bmp", ".png"), "02": (".png", ".png"), "03": (".bmp", ".bmp")}
    for c, product in enumerate(products):
        image_suffix, mask_suffix = formats[product]
        for i in range(n_train):
            write_image(root / product / "train" / "ok" / f"{i:04d}{image_suffix}", seed=100 * c + i)
        for i in range(n_good):
            write_image(root / product / "test" / "ok" / f"{i:04d}{image_suffix}", seed=100 * c + 50 + i)
        for i in range(n_bad):
            write_image(root / product / "test" / "ko" / f"{i:04d}{image_suffix}", seed=100 * c + 70 + i)
            write_mask(root / product / "ground_truth" / "ko" / f"{i:04d}{mask_suffix}")
    return root
