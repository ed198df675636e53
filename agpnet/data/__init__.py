"""Data layer: dataset readers, training settings and the torch dataset.

    split = load_split("mvtec", "/data/mvtec", "one-class", category="bottle")
    train_set = AnomalyDataset(split.train, image_size=256)

Image files (EXIF orientation applied) are read by `agpnet.data.imagefile`. The synthetic demo dataset
lives in `agpnet.data.synth` (imported on demand).
"""

from agpnet.data.dataset import IMAGENET_MEAN, IMAGENET_STD, AnomalyDataset, denormalize
from agpnet.data.imagefile import image_size, load_mask, load_rgb
from agpnet.data.readers import DATASETS, list_categories, read_category, read_folder
from agpnet.data.sample import IMAGE_SUFFIXES, SETTINGS, Sample, Split
from agpnet.data.splits import load_split

__all__ = [
    "DATASETS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "IMAGE_SUFFIXES",
    "SETTINGS",
    "AnomalyDataset",
    "Sample",
    "Split",
    "denormalize",
    "image_size",
    "list_categories",
    "load_mask",
    "load_rgb",
    "load_split",
    "read_category",
    "read_folder",
]
