"""Ground-truth masks: packing to bits (1 bit per pixel, on the host) and 8-connected regions.

Masks of device tensors are packed on the device and only the bits travel to the host, where
scipy labels the regions.
"""

import numpy as np
import torch
from scipy import ndimage

_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)
_BIT_VALUES = (128, 64, 32, 16, 8, 4, 2, 1)  # np.packbits' (big-endian) bit order


def pack_masks(masks) -> np.ndarray:
    """(N, H, W) masks (bool, or numbers binarised with > 0), numpy or torch
    -> (N, ceil(H*W/8)) uint8 on the host."""
    n = masks.shape[0]
    if not isinstance(masks, torch.Tensor):
        return np.packbits(np.asarray(masks).reshape(n, -1) > 0, axis=1)
    flat = (masks.reshape(n, -1) > 0).to(torch.uint8)
    pad = -flat.shape[1] % 8
    if pad:
        flat = torch.nn.functional.pad(flat, (0, pad))
    bit_values = torch.tensor(_BIT_VALUES, dtype=torch.uint8, device=flat.device)
    packed = (flat.reshape(n, -1, 8) * bit_values).sum(dim=2, dtype=torch.uint8)  # disjoint bits: no overflow
    return packed.cpu().numpy()


def unpack_masks(packed: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Inverse of `pack_masks`: (N, nbytes) uint8 -> (N, H, W) bool."""
    h, w = shape
    bits = np.unpackbits(packed, axis=1, count=h * w)
    return bits.reshape(len(packed), h, w).view(bool)


def label_regions(masks: np.ndarray, first_id: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """8-connected regions of each (H, W) mask of (N, H, W) bool.

    Returns (ids, sizes): ids int32 (N, H, W), 0 = normal, regions numbered first_id,
    first_id + 1, ... over the N images (each image's regions get their own numbers);
    sizes int64 (number of regions,) in pixels.
    """
    ids = np.zeros(masks.shape, dtype=np.int32)
    sizes = [np.zeros(0, np.int64)]
    next_id = first_id
    for mask, image_ids in zip(masks, ids, strict=True):
        count = ndimage.label(mask, structure=_EIGHT_CONNECTED, output=image_ids)
        if count:
            sizes.append(np.bincount(image_ids.ravel(), minlength=count + 1)[1:])
            image_ids[mask] += next_id - 1
            next_id += count
    return ids, np.concatenate(sizes)
