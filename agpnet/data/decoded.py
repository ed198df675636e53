"""Decoded training images kept in memory: every image is read, decoded and resized once.

`DecodedImages(dataset, device, workers)` holds uint8 (N, 3, S, S) pixels (3*S*S bytes per image:
0.7 GB for the 3,629 MVTec-AD training images at 256 px) on `device` (a GPU, or the host), filled in
one pass of a DataLoader. `batch(index)` gathers a batch there, moves it to the training device and
normalises it, bit-identical to the dataset's own items. (Host memory is not pinned: a gathered
batch is a new tensor, so pinning the store would not make its copy asynchronous.)
"""

import torch
from torch.utils.data import DataLoader, Dataset


class DecodedImages:
    """uint8 pixels of every item of an AnomalyDataset-like `dataset` (it must have
    read_pixels(index) -> uint8 (3, S, S) and normalize(pixels))."""

    def __init__(self, dataset, device: torch.device, workers: int = 0, batch_size: int = 32):
        self.dataset = dataset
        n, s = len(dataset), dataset.image_size
        self.pixels = torch.empty(n, 3, s, s, dtype=torch.uint8, device=device)
        for index, pixels in DataLoader(_Pixels(dataset), batch_size=batch_size, num_workers=workers):
            self.pixels[index.to(device)] = pixels.to(device)

    def __len__(self) -> int:
        return len(self.pixels)

    def batch(self, index: torch.Tensor, device: torch.device) -> torch.Tensor:
        """Normalised float32 images (B, 3, S, S) of the items `index` (B,), on `device`."""
        pixels = self.pixels[index.to(self.pixels.device)]
        return self.dataset.normalize(pixels.to(device))

    @staticmethod
    def size_of(dataset) -> int:
        """Bytes the pixels of `dataset` take."""
        return len(dataset) * 3 * dataset.image_size ** 2


class _Pixels(Dataset):
    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        return index, torch.from_numpy(self.dataset.read_pixels(index))
