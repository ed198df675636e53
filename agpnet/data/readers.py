"""Readers for the dataset layouts: MVTec-AD, VisA, MVTec-3D AD (RGB only) and a generic folder.

A reader lists the categories under a dataset root and reads one category into training
samples (normal images) and test samples (good and defective images, with masks), each in
sorted order. At read time every image is checked cheaply: PIL opens its header (format and
size), nothing is decoded, so reading a 5000-image dataset takes about a second.

Each layout is a `Reader` in READERS (at the end of this file); DATASETS are its keys.
Layouts (see docs/datasets.md):
- mvtec:   <root>/<category>/train/good/*, test/<defect>/*, ground_truth/<defect>/<stem>_mask.png
- visa:    the raw release (<root>/split_csv/1cls.csv, paths relative to <root>) or VisA already
           converted to the MVTec-AD layout (chosen automatically: the csv wins when present)
- mvtec3d: <root>/<category>/train/good/rgb/*, test/<defect>/rgb/*, test/<defect>/gt/* (validation/ unused)
- mvtec2:  MVTec AD 2: <root>/<category>/train/good/*, test_public/{good,bad}/*,
           test_public/ground_truth/bad/<stem>_mask.png (validation/, test_private*/ not read here)
- realiad: Real-IAD: images in <root>/realiad_<resolution>/<category>/, the split in
           <root>/realiad_jsons/<split>/<category>.json (options realiad_resolution, realiad_split)
- btad:    BTAD: <root>/<01|02|03>/train/ok/*, test/{ok,ko}/*, ground_truth/ko/<stem>.{png,bmp}
- folder:  <root>/train/good/* (normal training images), <root>/test/good/*, <root>/test/<defect>/*,
           optional masks in <root>/ground_truth/ or <root>/masks/ (by stem, "_mask" suffix allowed,
           optionally inside a <defect>/ subfolder). The category is the root folder's name.
           Without a mask folder, defective images have mask None (image-level metrics only).
"""

import csv
import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from agpnet.data.imagefile import image_size
from agpnet.data.sample import IMAGE_SUFFIXES, Sample, Split
from agpnet.errors import AgpnetError

VISA_COLUMNS = ("object", "split", "label", "image", "mask")
MASK_DIR_NAMES = ("ground_truth", "masks")

@dataclass(frozen=True)
class Reader:
    """One dataset layout: `categories(root)` -> sorted names (empty: not this layout),
    `read(root, category)` -> (train, test) samples, and the layout in words for error messages.
    `options`: the DataConfig fields the reader takes as keyword arguments of both functions
    (e.g. realiad_resolution); a reader without options takes none."""

    categories: Callable[..., list[str]]
    read: Callable[..., tuple[list[Sample], list[Sample]]]
    layout: str
    options: tuple[str, ...] = ()


def list_categories(dataset: str, root: str | os.PathLike,
                    options: Mapping[str, object] | None = None) -> list[str]:
    """Sorted category names of the dataset at `root`. `options`: {DataConfig field: value}; the
    reader takes the ones it names in Reader.options and ignores the others."""
    reader, root = _reader(dataset, root)
    categories = reader.categories(root, **_options(reader, options))
    if not categories:
        raise AgpnetError(f"{root}: layout not recognised; expected {reader.layout}")
    return categories


def read_category(dataset: str, root: str | os.PathLike, category: str,
                  options: Mapping[str, object] | None = None) -> tuple[list[Sample], list[Sample]]:
    """(train, test) samples of one category; train holds normal images only."""
    available = list_categories(dataset, root, options)
    reader, root = _reader(dataset, root)
    if category not in available:
        raise AgpnetError(f"unknown category '{category}' in {root}; available: {', '.join(available)}")
    return reader.read(root, category, **_options(reader, options))


def read_folder(
    normal_dir: str | os.PathLike,
    good_dir: str | os.PathLike | None,
    defect_dirs: Sequence[str | os.PathLike] | Mapping[str, str | os.PathLike],
    mask_dir: str | os.PathLike | None = None,
    category: str = "custom",
) -> Split:
    """Split from arbitrary folders: normal training images, good test images, defective test images.

    `defect_dirs` is a list of folders (defect name = folder name) or a {defect: folder} mapping.
    Masks in `mask_dir` match defective images by stem ("<stem>.png" or "<stem>_mask.png"), also
    inside a "<defect>/" subfolder. With `mask_dir=None` defective images get mask None.
    """
    normal_dir = _existing_dir(normal_dir, "normal training images")
    if not isinstance(defect_dirs, Mapping):
        named = {}
        for folder in defect_dirs:
            if Path(folder).name in named:
                raise AgpnetError(f"{folder}: defect folder has the same name as {named[Path(folder).name]} "
                                  "(expected one folder per defect name, or a {defect: folder} mapping)")
            named[Path(folder).name] = folder
        defect_dirs = named
    train = [Sample(p, category, 0, "good", None) for p in _images(normal_dir, required=True)]
    test = []
    if good_dir is not None:
        good_dir = _existing_dir(good_dir, "good test images")
        test += [Sample(p, category, 0, "good", None) for p in _images(good_dir)]
    masks = None
    if mask_dir is not None:
        mask_dir = _existing_dir(mask_dir, "mask images")
        masks = _mask_index(mask_dir)
        masks.update(
            {(d.name, stem): path for d in _subdirs(mask_dir) for stem, path in _mask_index(d).items()}
        )
    flat_users = {}  # flat mask (matched by stem alone) -> the image that uses it
    for defect in sorted(defect_dirs):
        for image in _images(_existing_dir(defect_dirs[defect], "defective test images")):
            mask = None
            if masks is not None:
                mask = masks.get((defect, image.stem))
                if mask is None and image.stem in masks:
                    mask = masks[image.stem]
                    if mask in flat_users:
                        raise AgpnetError(
                            f"{mask}: mask matches both {flat_users[mask]} and {image} "
                            f"(expected a mask per defect folder: {mask_dir}/<defect>/<stem>_mask.png)")
                    flat_users[mask] = image
                if mask is None:
                    expected = (
                        f"{mask_dir}/{image.stem}_mask.png or {mask_dir}/{defect}/{image.stem}_mask.png"
                    )
                    raise AgpnetError(f"{image}: defective test image has no mask (expected {expected})")
            test.append(Sample(image, category, 1, defect, mask))
    test.sort(key=lambda s: str(s.image))
    _check_images(train + test)
    return Split(train=train, test=test, categories=[category])


# --- layouts ---------------------------------------------------------------------------------


def _categories_with(*marker: str) -> Callable[[Path], list[str]]:
    """Categories = the subfolders of the root that hold <category>/<marker...>."""

    def categories(root: Path) -> list[str]:
        return sorted(d.name for d in _subdirs(root) if d.joinpath(*marker).is_dir())

    return categories


_mvtec_categories = _categories_with("train", "good")


def _folder_categories(root: Path) -> list[str]:
    return [Path(os.path.abspath(root)).name] if (root / "train" / "good").is_dir() else []


def _read_folder_layout(root: Path, category: str) -> tuple[list[Sample], list[Sample]]:
    mask_dir = next((root / name for name in MASK_DIR_NAMES if (root / name).is_dir()), None)
    test_dir = _test_dir(root)
    defect_dirs = {d.name: d for d in _subdirs(test_dir) if d.name != "good"}
    good_dir = test_dir / "good" if (test_dir / "good").is_dir() else None
    split = read_folder(root / "train" / "good", good_dir, defect_dirs, mask_dir, category)
    return split.train, split.test


def _visa_categories(root: Path) -> list[str]:
    if _visa_is_raw(root):
        return sorted({row["object"] for _, row in _visa_rows(root)[1]})
    return _mvtec_categories(root)


def _read_visa(root: Path, category: str) -> tuple[list[Sample], list[Sample]]:
    return _read_visa_csv(root, category) if _visa_is_raw(root) else _read_mvtec(root, category)


def _read_mvtec(root: Path, category: str) -> tuple[list[Sample], list[Sample]]:
    cat_dir = root / category
    return _read_defect_folders(category, cat_dir / "train" / "good", _test_dir(cat_dir),
                                cat_dir / "ground_truth")


def _read_mvtec2(root: Path, category: str) -> tuple[list[Sample], list[Sample]]:
    """MVTec AD 2: evaluation on test_public (the only test set with masks); validation/good is for
    threshold selection (agpnet.submission) and test_private* have no labels, so neither is read."""
    test_dir = _existing_dir(root / category / "test_public",
                             "public test images: good/, bad/, ground_truth/bad/")
    return _read_defect_folders(category, root / category / "train" / "good", test_dir,
                                test_dir / "ground_truth")


def _read_btad(root: Path, category: str) -> tuple[list[Sample], list[Sample]]:
    cat_dir = root / category
    return _read_defect_folders(category, cat_dir / "train" / "ok", _test_dir(cat_dir),
                                cat_dir / "ground_truth", good="ok", mask_name="{stem}.png or {stem}.bmp")


def _read_defect_folders(category: str, train_dir: Path, test_dir: Path, mask_root: Path, good: str = "good",
                         mask_name: str = "{stem}_mask.png") -> tuple[list[Sample], list[Sample]]:
    """The MVTec-AD pattern: normal training images in `train_dir`; test images in `test_dir/<good>/`
    and `test_dir/<defect>/`, each defective one with a mask in `mask_root/<defect>/` matched by
    stem (`mask_name` says how in the error). A `mask_root` inside `test_dir` is not a defect."""
    train = [Sample(p, category, 0, "good", None) for p in _images(train_dir, required=True)]
    test = []
    for defect_dir in _subdirs(test_dir):
        defect = defect_dir.name
        if defect_dir == mask_root:
            continue
        if defect == good:
            test += [Sample(p, category, 0, "good", None) for p in _images(defect_dir)]
            continue
        masks = _mask_index(mask_root / defect)
        for image in _images(defect_dir):
            if image.stem not in masks:
                expected = mask_root / defect / mask_name.format(stem=image.stem)
                raise AgpnetError(f"{image}: defective test image has no mask (expected {expected})")
            test.append(Sample(image, category, 1, defect, masks[image.stem]))
    _check_images(train + test)
    return train, test


def _read_mvtec3d(root: Path, category: str) -> tuple[list[Sample], list[Sample]]:
    cat_dir = root / category
    train_dir = cat_dir / "train" / "good" / "rgb"
    train = [Sample(p, category, 0, "good", None) for p in _images(train_dir, required=True)]
    test = []
    for defect_dir in _subdirs(_test_dir(cat_dir)):
        defect = defect_dir.name
        images = _images(_existing_dir(defect_dir / "rgb", "RGB test images (MVTec-3D AD layout)"))
        if defect == "good":
            test += [Sample(p, category, 0, "good", None) for p in images]
            continue
        masks = _mask_index(defect_dir / "gt")
        for image in images:
            if image.stem not in masks:
                raise AgpnetError(
                    f"{image}: defective test image has no mask (expected {defect_dir / 'gt' / image.name})"
                )
            test.append(Sample(image, category, 1, defect, masks[image.stem]))
    _check_images(train + test)
    return train, test


def _visa_is_raw(root: Path) -> bool:
    """VisA release (csv split) rather than VisA converted to the MVTec-AD layout."""
    if (root / "split_csv").is_dir():
        return True
    subdirs = _subdirs(root)
    if any((d / "train" / "good").is_dir() for d in subdirs):
        return False
    return any((d / "Data").is_dir() for d in subdirs)


def _visa_rows(root: Path) -> tuple[Path, list[tuple[int, dict[str, str]]]]:
    """The official split file and its rows as (line number, row)."""
    csv_path = root / "split_csv" / "1cls.csv"
    if not csv_path.is_file():
        raise AgpnetError(
            f"{csv_path}: VisA split file not found (expected the release's split_csv/1cls.csv)"
        )
    with open(csv_path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        header = [name.strip() for name in next(reader, [])]
        missing = [name for name in VISA_COLUMNS if name not in header]
        if missing:
            raise AgpnetError(
                f"{csv_path}: missing columns {', '.join(missing)} "
                f"(expected columns {','.join(VISA_COLUMNS)})"
            )
        rows = [
            (n, dict(zip(header, (v.strip() for v in values))))
            for n, values in enumerate(reader, 2)
            if values
        ]
    if not rows:
        raise AgpnetError(f"{csv_path}: no rows (expected one row per VisA image)")
    return csv_path, rows


def _read_visa_csv(root: Path, category: str) -> tuple[list[Sample], list[Sample]]:
    csv_path, rows = _visa_rows(root)
    train, test = [], []
    for line, row in rows:
        if row["object"] != category:
            continue
        where = f"{csv_path} line {line}"
        if row["split"] not in ("train", "test") or row["label"] not in ("normal", "anomaly"):
            raise AgpnetError(
                f"{where}: split '{row['split']}', label '{row['label']}' "
                "(expected split train/test and label normal/anomaly)"
            )
        image = root / row["image"]
        if not image.is_file():
            raise AgpnetError(f"{image}: image listed in {where} not found (expected a file)")
        if row["split"] == "train":
            if row["label"] != "normal":
                raise AgpnetError(
                    f"{where}: anomaly in the train split (expected only normal training images)"
                )
            train.append(Sample(image, category, 0, "good", None))
        elif row["label"] == "normal":
            test.append(Sample(image, category, 0, "good", None))
        else:
            mask = root / row["mask"] if row["mask"] else None
            if mask is None or not mask.is_file():
                raise AgpnetError(
                    f"{image}: defective test image has no mask "
                    f"(expected {mask or 'a mask path'} from {where})"
                )
            test.append(Sample(image, category, 1, "anomaly", mask))
    if not train:
        raise AgpnetError(
            f"{csv_path}: category '{category}' has no training images (expected rows with split=train)"
        )
    train.sort(key=lambda s: str(s.image))
    test.sort(key=lambda s: str(s.image))
    _check_images(train + test)
    return train, test


def _realiad_categories(root: Path, realiad_resolution: str = "1024",
                        realiad_split: str = "realiad_jsons") -> list[str]:
    """The category folders of the chosen resolution (`realiad_split` is taken, as every Real-IAD
    option is, but a category's missing <category>.json is reported when the category is read)."""
    image_root = root / f"realiad_{realiad_resolution}"
    return [d.name for d in _subdirs(image_root)] if image_root.is_dir() else []


def _read_realiad(root: Path, category: str, realiad_resolution: str = "1024",
                  realiad_split: str = "realiad_jsons") -> tuple[list[Sample], list[Sample]]:
    """Real-IAD from its official split file: `train` and `test` lists of entries with image_path,
    anomaly_class ("OK" = normal, else the defect code) and mask_path, relative to the category's
    image folder. Listing stats each file; image headers are opened as for every layout."""
    image_dir = root / f"realiad_{realiad_resolution}" / category
    split_dir = root / "realiad_jsons" / realiad_split
    split_file = split_dir / f"{category}.json"
    if not split_file.is_file():
        found = [d.name for d in _subdirs(split_dir.parent)] if split_dir.parent.is_dir() else []
        raise AgpnetError(f"{split_file}: Real-IAD split file not found (expected <root>/realiad_jsons/"
                          f"{realiad_split}/{category}.json; "
                          f"split folders found: {', '.join(found) or 'none'})")
    try:
        lists = json.loads(split_file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as err:
        raise AgpnetError(f"{split_file}: not a readable JSON file ({' '.join(str(err).split())}); expected "
                          "the Real-IAD split file") from None
    if not (isinstance(lists, dict) and all(isinstance(lists.get(part), list) for part in ("train", "test"))):
        raise AgpnetError(f"{split_file}: expected a JSON object with 'train' and 'test' lists "
                          "(Real-IAD split file)")
    samples = {"train": [], "test": []}
    for part, entries in ((part, lists[part]) for part in samples):
        for n, entry in enumerate(entries):
            where = f"{split_file} {part}[{n}]"
            if not (isinstance(entry, dict) and isinstance(entry.get("image_path"), str)
                    and isinstance(entry.get("anomaly_class"), str)):
                raise AgpnetError(f"{where}: expected an entry with image_path and anomaly_class strings")
            image = image_dir / entry["image_path"]
            if not image.is_file():
                raise AgpnetError(f"{image}: image listed in {where} not found (expected a file)")
            if entry["anomaly_class"] == "OK":
                samples[part].append(Sample(image, category, 0, "good", None))
                continue
            if part == "train":
                raise AgpnetError(f"{where}: anomaly class '{entry['anomaly_class']}' in the train split "
                                  "(expected only OK images)")
            mask = image_dir / entry["mask_path"] if isinstance(entry.get("mask_path"), str) else None
            if mask is None or not mask.is_file():
                raise AgpnetError(f"{image}: defective test image has no mask "
                                  f"(expected {mask or 'a mask_path'} from {where})")
            samples[part].append(Sample(image, category, 1, entry["anomaly_class"], mask))
    train, test = (sorted(samples[part], key=lambda s: str(s.image)) for part in ("train", "test"))
    if not train:
        raise AgpnetError(f"{split_file}: category '{category}' has no training images "
                          "(expected OK entries in train)")
    _check_images(train + test)
    return train, test


# --- files -----------------------------------------------------------------------------------


def _reader(dataset: str, root: str | os.PathLike) -> tuple[Reader, Path]:
    if dataset not in READERS:
        raise AgpnetError(f"unknown dataset '{dataset}' (expected one of {', '.join(READERS)})")
    reader, root = READERS[dataset], Path(root)
    if not root.is_dir():
        raise AgpnetError(f"{root}: dataset root not found (expected a folder: {reader.layout})")
    return reader, root


def _options(reader: Reader, options: Mapping[str, object] | None) -> dict[str, object]:
    """The reader's own options out of `options` (missing ones take the reader's defaults)."""
    return {name: value for name, value in (options or {}).items() if name in reader.options}


def _existing_dir(path: str | os.PathLike, what: str) -> Path:
    path = Path(path)
    if not path.is_dir():
        raise AgpnetError(f"{path}: folder not found (expected a folder of {what})")
    return path


def _test_dir(parent: Path) -> Path:
    return _existing_dir(parent / "test", "test images: test/good/ and test/<defect>/")


def _subdirs(folder: Path) -> list[Path]:
    return sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))


def _images(folder: Path, required: bool = False) -> list[Path]:
    """Sorted image files of a folder (hidden files and other suffixes ignored). A sub-folder
    holding images stops the read: its images would be skipped silently."""
    files = _image_files(folder)
    for sub in _subdirs(folder) if folder.is_dir() else []:
        if any(_is_image(p) for p in sub.rglob("*")):
            raise AgpnetError(f"{folder}: sub-folder {sub.name}/ holds images, which would not be read "
                              f"(expected the images directly in {folder}/, no sub-folders)")
    if required and not files:
        raise AgpnetError(f"{folder}: no training images (expected {'/'.join(IMAGE_SUFFIXES)} files)")
    return files


def _image_files(folder: Path) -> list[Path]:
    """Sorted image files directly in a folder (hidden files and other suffixes ignored)."""
    return sorted(p for p in folder.iterdir() if _is_image(p)) if folder.is_dir() else []


def _is_image(path: Path) -> bool:
    """An image file by its suffix, not hidden."""
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".") and path.is_file()


def _mask_index(folder: Path) -> dict[str, Path]:
    """{image stem: mask file} for "<stem>_mask.*" and "<stem>.*" files; "_mask" wins on a tie."""
    index = {}
    for path in _image_files(folder):
        stem = path.stem
        if stem.endswith("_mask"):
            index[stem[: -len("_mask")]] = path
        else:
            index.setdefault(stem, path)
    return index


def _check_images(samples: list[Sample]) -> None:
    """Open every image and mask header; a mask must have the size of its image."""
    for sample in samples:
        size = image_size(sample.image)
        if sample.mask is not None:
            mask_size = image_size(sample.mask, "mask")
            if mask_size != size:
                raise AgpnetError(
                    f"{sample.mask}: mask size {mask_size[0]}x{mask_size[1]} differs from image "
                    f"{sample.image} size {size[0]}x{size[1]} (expected the same size)"
                )


# --- the registry: adding a dataset is a reader function and one entry here -------------------

READERS: dict[str, Reader] = {
    "mvtec": Reader(_mvtec_categories, _read_mvtec, "<root>/<category>/train/good/ (MVTec-AD layout)"),
    "visa": Reader(_visa_categories, _read_visa,
                   "<root>/split_csv/1cls.csv (VisA release) "
                   "or <root>/<category>/train/good/ (VisA in MVTec-AD layout)"),
    "mvtec3d": Reader(_categories_with("train", "good", "rgb"), _read_mvtec3d,
                      "<root>/<category>/train/good/rgb/ (MVTec-3D AD layout)"),
    "folder": Reader(_folder_categories, _read_folder_layout,
                     "<root>/train/good/ with test/good/ and test/<defect>/ (folder layout)"),
    "mvtec2": Reader(_mvtec_categories, _read_mvtec2,
                     "<root>/<category>/train/good/ and test_public/ (MVTec AD 2 layout)"),
    "realiad": Reader(_realiad_categories, _read_realiad,
                      "<root>/realiad_<realiad_resolution>/<category>/ "
                      "with <root>/realiad_jsons/<realiad_split>/<category>.json (Real-IAD layout)",
                      options=("realiad_resolution", "realiad_split")),
    "btad": Reader(_categories_with("train", "ok"), _read_btad, "<root>/<01|02|03>/train/ok/ (BTAD layout)"),
    # MPDD is released in the MVTec-AD layout; its own name keys its tables and published rows.
    "mpdd": Reader(_mvtec_categories, _read_mvtec, "<root>/<category>/train/good/ (MPDD, MVTec-AD layout)"),
}
DATASETS = tuple(READERS)
