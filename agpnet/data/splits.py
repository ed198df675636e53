"""The three training settings: one-class, multi-class and few-shot.

- one-class:   one category; train on its normal images, test on its test images.
- multi-class: several categories (all, or a comma-separated subset) in one training set;
               each sample keeps its category.
- few-shot:    k normal training images per category (k = 1, 2, 4 or 8 in the literature),
               drawn from the sorted file list of each category with `random.Random("{seed}/{category}")`
               (each category its own draw, reproducible across Python versions and processes);
               the test split is unchanged. Applies to `category` if given, else to all.
"""

import os
import random
from collections.abc import Mapping
from pathlib import Path

from agpnet.data.readers import list_categories, read_category
from agpnet.data.sample import SETTINGS, Sample, Split
from agpnet.errors import AgpnetError


def load_split(
    dataset: str,
    root: str | os.PathLike,
    setting: str,
    category: str | None = None,
    shots: int | None = None,
    seed: int = 0,
    options: Mapping[str, object] | None = None,
) -> Split:
    """Read `dataset` at `root` and build the split for `setting` (see the module docstring).

    `category`: one name (one-class; may be omitted when the dataset has a single category) or a
    comma-separated subset (multi-class, few-shot); None means all. `shots`: k, few-shot only.
    `options`: per-dataset reader options {DataConfig field: value} (DataConfig.reader_options(),
    e.g. realiad_resolution); a dataset's reader takes the ones it names and ignores the others.
    """
    if setting not in SETTINGS:
        raise AgpnetError(f"unknown setting '{setting}' (expected one of {', '.join(SETTINGS)})")
    if setting != "few-shot" and shots is not None:
        raise AgpnetError(f"shots={shots} given with setting '{setting}' (expected shots only with few-shot)")
    if setting == "few-shot" and (shots is None or int(shots) < 1):
        raise AgpnetError(
            f"few-shot setting: shots={shots} (expected a number of images k >= 1, e.g. 1, 2, 4, 8)"
        )
    available = list_categories(dataset, root, options)
    categories = _choose_categories(setting, category, available, root)
    train, test, few_shot_files = [], [], None
    for name in categories:
        cat_train, cat_test = read_category(dataset, root, name, options)
        if setting == "few-shot":
            cat_train = _draw_shots(cat_train, int(shots), f"{seed}/{name}")
            few_shot_files = few_shot_files or {}
            few_shot_files[name] = [_relative(s.image, root) for s in cat_train]
        train += cat_train
        test += cat_test
    return Split(train=train, test=test, categories=categories, few_shot_files=few_shot_files)


def _choose_categories(setting: str, category: str | None, available: list[str], root) -> list[str]:
    if category is None:
        if setting == "one-class" and len(available) > 1:
            raise AgpnetError(
                f"one-class setting needs a category for {root}; available: {', '.join(available)}"
            )
        return available
    chosen = sorted({name.strip() for name in category.split(",") if name.strip()})
    unknown = [name for name in chosen if name not in available]
    if unknown or not chosen:
        raise AgpnetError(
            f"unknown category '{', '.join(unknown) or category}' in {root}; "
            f"available: {', '.join(available)}"
        )
    if setting == "one-class" and len(chosen) > 1:
        raise AgpnetError(f"one-class setting: category '{category}' names several (expected exactly one)")
    return chosen


def _draw_shots(train: list[Sample], shots: int, seed: str) -> list[Sample]:
    """`shots` samples drawn with random.Random(seed) from the sorted list, returned sorted."""
    if shots > len(train):
        folder = train[0].image.parent
        raise AgpnetError(
            f"few-shot k={shots} but {folder} has only {len(train)} normal training images "
            f"(expected k <= {len(train)})"
        )
    ordered = sorted(train, key=lambda s: str(s.image))
    chosen = random.Random(seed).sample(range(len(ordered)), shots)
    return [ordered[i] for i in sorted(chosen)]


def _relative(path: Path, root) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()
