"""The records the data layer hands to the rest of agpnet: one `Sample` per image, one `Split` per run."""

from dataclasses import dataclass
from pathlib import Path

SETTINGS = ("one-class", "multi-class", "few-shot")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


@dataclass(frozen=True)
class Sample:
    """One image. `label` is 0 (good) or 1 (defective); `defect` is "good" for normal images.

    `mask` is the pixel mask of a defective image (non-zero = defect), or None for good images
    and for defective images of a folder dataset that has no masks (image-level metrics only).
    """

    image: Path
    category: str
    label: int
    defect: str
    mask: Path | None


@dataclass
class Split:
    """Training and test samples of one run, in sorted, deterministic order.

    `few_shot_files` (few-shot setting only): the chosen training files per category, as
    POSIX paths relative to the dataset root.
    """

    train: list[Sample]
    test: list[Sample]
    categories: list[str]
    few_shot_files: dict[str, list[str]] | None = None
