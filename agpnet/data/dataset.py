"""Torch dataset over `Sample`s: image loading, resizing, ImageNet normalisation, masks.

Images are resized to S x S (no crop; PIL bilinear with antialiasing), converted to RGB
(grayscale, palette, RGBA and 16-bit images included) and normalised with the ImageNet mean
and std. Masks are resized with nearest neighbour and binarised with > 0; good images get an
all-False mask.
"""

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from agpnet.data.imagefile import image_size, load_mask, load_rgb
from agpnet.data.sample import Sample

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class AnomalyDataset(Dataset):
    """Item: dict(image=float32 (3,S,S) normalised, mask=bool (S,S), label=int, category=str,
    defect=str, path=str, index=int).

    With `cache=True` the resized uint8 image and the bit-packed mask stay in memory after the
    first read, so later epochs skip decoding (about 3*S*S + S*S/8 bytes per image; each
    DataLoader worker process keeps its own cache). `fast_jpeg=True` decodes JPEGs in Pillow's
    draft mode at a reduced scale (still >= S) before the resize: faster for large photos, but not
    the full decode that published numbers use.

    `random_transform = False`: an item is the same at every read (no random augmentation), so
    training may keep decoded images and encoder features of it; a dataset with a random
    transform must set it True, and training then refuses those caches.
    """

    random_transform = False

    def __init__(
        self,
        samples: Sequence[Sample],
        image_size: int = 256,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        cache: bool = False,
        fast_jpeg: bool = False,
    ):
        self.samples = list(samples)
        self.image_size = int(image_size)
        self.mean, self.std = tuple(mean), tuple(std)
        self._offset = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1) * 255.0
        self._scale = torch.tensor(std, dtype=torch.float32).view(3, 1, 1) * 255.0
        self.cache = cache
        self.fast_jpeg = fast_jpeg
        self._cached: dict[int, tuple[np.ndarray, np.ndarray | None]] = {}

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict:
        sample = self.samples[index]
        if index in self._cached:
            pixels, packed = self._cached[index]
        else:
            pixels, packed = self._load(sample)
            if self.cache:
                self._cached[index] = (pixels, packed)
        size = self.image_size
        image = self.normalize(torch.from_numpy(pixels))
        if packed is None:
            mask = torch.zeros(size, size, dtype=torch.bool)
        else:
            mask = torch.from_numpy(np.unpackbits(packed, count=size * size).reshape(size, size).astype(bool))
        return {
            "image": image,
            "mask": mask,
            "label": int(sample.label),
            "category": sample.category,
            "defect": sample.defect,
            "path": str(sample.image),
            "index": index,
        }

    def read_pixels(self, index: int) -> np.ndarray:
        """The decoded, resized image of item `index`: uint8 (3, S, S) (not kept in the dataset's cache)."""
        if index in self._cached:
            return self._cached[index][0]
        return self._decode(self.samples[index])

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 (..., 3, S, S) on any device -> float32 normalised images, exactly as items are."""
        offset, scale = self._offset.to(pixels.device), self._scale.to(pixels.device)
        return (pixels.float() - offset) / scale

    def _decode(self, sample: Sample) -> np.ndarray:
        size = (self.image_size, self.image_size)
        draft_size = size if self.fast_jpeg else None
        image = load_rgb(sample.image, draft_size=draft_size).resize(size, Image.BILINEAR)
        return np.ascontiguousarray(np.asarray(image, dtype=np.uint8).transpose(2, 0, 1))

    def _load(self, sample: Sample) -> tuple[np.ndarray, np.ndarray | None]:
        """(uint8 (3,S,S) image, bit-packed (S*S,) mask or None)."""
        size = (self.image_size, self.image_size)
        pixels = self._decode(sample)
        if sample.mask is None:
            return pixels, None
        mask = Image.fromarray(load_mask(sample.mask, image_size(sample.image))).resize(size, Image.NEAREST)
        return pixels, np.packbits(np.asarray(mask) > 0)


def denormalize(
    image: torch.Tensor | np.ndarray,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> np.ndarray:
    """Normalised (3,H,W) image (tensor or array, any device) -> uint8 (H,W,3) for plotting."""
    if isinstance(image, torch.Tensor):
        image = image.detach().float().cpu().numpy()
    image = np.asarray(image, dtype=np.float32)
    rgb = image * np.asarray(std, np.float32)[:, None, None] + np.asarray(mean, np.float32)[:, None, None]
    return np.clip(np.rint(rgb.transpose(1, 2, 0) * 255.0), 0, 255).astype(np.uint8)
