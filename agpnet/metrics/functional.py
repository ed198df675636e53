"""Image and pixel metrics of one category (definitions: docs/metrics.md).

Values are fractions in [0, 1]. Undefined values are NaN and come with a `MetricWarning`
that names the reason (and the category when given).

Pixel metrics sort the category's pixels once (see `ranking`). Maps and masks may be numpy
arrays or torch tensors on any device: host data (numpy, CPU tensors) is processed with
numpy, accelerator tensors with torch on their device (the maps stay there; only the masks,
packed to bits, go to the host for 8-connected region labelling).
Peak memory beyond the inputs: the int64 sort key (8 B/pixel; 24 B/pixel while `torch.sort`
runs on an accelerator) plus about 100 MB of temporaries (measured on the host: 12 B/pixel
in all for 200 maps of 256x256, i.e. 160 MB).
"""

import warnings
from collections.abc import Sequence

import numpy as np
import torch

from agpnet.errors import AgpnetError
from agpnet.metrics.ranking import DescendingOrder, block_points, curve_metrics, fits_float32, pack_key
from agpnet.metrics.regions import label_regions, pack_masks, unpack_masks
from agpnet.metrics.registry import MAD_KEYS

_PIXELS_PER_STEP = 1 << 22  # pixels labelled and packed per step (bounds the temporaries)


class MetricWarning(UserWarning):
    """A metric is undefined (NaN) for the given data."""


def image_metrics(scores, labels, category: str | None = None) -> dict[str, float]:
    """scores (N,) float, labels (N,) 0/1 (numpy or torch) -> {image_auroc, image_ap, image_f1max}."""
    scores = host_vector(scores, "scores").astype(np.float64)
    labels = host_vector(labels, "labels")
    if len(scores) != len(labels):
        raise AgpnetError(f"image_metrics: scores has {len(scores)} values but labels has {len(labels)}")
    if len(scores) == 0:
        raise AgpnetError("image_metrics: no images (scores is empty)")
    _check_no_nan(scores, "scores")
    if not np.isin(labels, (0, 1)).all():
        raise AgpnetError("image_metrics: labels must be 0 (good) or 1 (defective)")
    ids = labels.astype(np.int64)
    n_pos = int(ids.sum())
    n_neg = len(ids) - n_pos
    if n_pos == 0:
        _warn("no defective images: image AUROC, AP and F1-max are NaN", category)
    elif n_neg == 0:
        _warn("no good images: image AUROC is NaN", category)
    order = DescendingOrder.from_scores(scores, ids)
    stats = curve_metrics(order, n_pos, n_neg)
    return {"image_auroc": stats["auroc"], "image_ap": stats["ap"], "image_f1max": stats["f1max"]}


def pixel_metrics(maps, masks, fpr_limit: float = 0.3, category: str | None = None) -> dict[str, float]:
    """maps (N,H,W) float, masks (N,H,W) bool -> {pixel_auroc, pixel_ap, pixel_f1max, aupro}.

    numpy arrays or torch tensors (masks may be on another device than maps).
    """
    check_pixel_inputs(maps, masks)
    return pixel_metrics_of_parts([(numpy_if_on_host(maps), pack_masks(masks))], fpr_limit, category)


def aupro(maps, masks, fpr_limit: float = 0.3, category: str | None = None) -> float:
    """Area under the PRO curve up to FPR = `fpr_limit`, divided by `fpr_limit` (in [0, 1])."""
    return pixel_metrics(maps, masks, fpr_limit, category)["aupro"]


def pro_curve(maps, masks) -> tuple[np.ndarray, np.ndarray]:
    """(fpr, pro) float64 numpy arrays for plotting: (0, 0), then one point per distinct score
    in descending order (ends at (1, 1)). Empty arrays when there is no region or no normal pixel."""
    check_pixel_inputs(maps, masks)
    return pro_curve_of_parts([(numpy_if_on_host(maps), pack_masks(masks))])


def mad(metrics: dict) -> float:
    """Mean of the seven `MAD_KEYS` values of `metrics` (NaN if any of them is NaN); other keys
    of `metrics` do not count."""
    missing = [key for key in MAD_KEYS if key not in metrics]
    if missing:
        raise AgpnetError(f"mad: metrics lacks {', '.join(missing)}")
    return float(sum(float(metrics[key]) for key in MAD_KEYS) / len(MAD_KEYS))


# Internals shared with the accumulator.


class _SortedPixels:
    """All pixels of a category in descending score order, with their region weights."""

    def __init__(self, order: DescendingOrder, weights, n_pos: int, n_neg: int):
        self.order, self.weights, self.n_pos, self.n_neg = order, weights, n_pos, n_neg


def pixel_metrics_of_parts(parts: Sequence, fpr_limit: float, category: str | None) -> dict[str, float]:
    """Pixel metrics of the images given as parts (the accumulator's batches): pairs of maps
    (N_i, H_i, W_i) and their packed masks (N_i, ceil(H_i*W_i/8)); sizes may differ between parts.
    The pixels of all images count as one set; regions are those of each image."""
    if not 0 < fpr_limit <= 1:
        raise AgpnetError(f"fpr_limit: expected a number in (0, 1], got {fpr_limit}")
    pixels = _sorted_pixels(parts)
    if pixels.n_pos == 0:
        _warn("no anomalous pixels (no mask region): pixel AUROC, AP, F1-max and AUPRO are NaN", category)
    elif pixels.n_neg == 0:
        _warn("no normal pixels: pixel AUROC and AUPRO are NaN", category)
    stats = curve_metrics(pixels.order, pixels.n_pos, pixels.n_neg, pixels.weights, fpr_limit)
    return {
        "pixel_auroc": stats["auroc"],
        "pixel_ap": stats["ap"],
        "pixel_f1max": stats["f1max"],
        "aupro": stats["aupro"],
    }


def pro_curve_of_parts(parts: Sequence):
    """`pro_curve` of (maps, packed masks) parts as in `pixel_metrics_of_parts`."""
    pixels = _sorted_pixels(parts)
    if pixels.n_pos == 0 or pixels.n_neg == 0:
        return np.zeros(0), np.zeros(0)
    fpr, pro = [np.zeros(1)], [np.zeros(1)]
    for _, fp, pro_at in block_points(pixels.order, pixels.weights):
        fpr.append(_to_numpy(fp).astype(np.float64) / pixels.n_neg)
        pro.append(_to_numpy(pro_at))
    return np.concatenate(fpr), np.concatenate(pro)


def _sorted_pixels(parts: Sequence) -> _SortedPixels:
    """Label the regions, build one sort key per pixel (on the maps' device) and sort.

    Region weights: each pixel of region r weighs 1 / (size_r * number of regions), so the
    cumulative weight in descending score order is PRO (normal pixels weigh 0).
    """
    packable = all(fits_float32(maps) for maps, _ in parts)
    first = parts[0][0]
    n = sum(maps.shape[0] * maps.shape[1] * maps.shape[2] for maps, _ in parts)
    if packable:
        key = _empty(n, first, torch.int64, np.int64)
    else:
        scores = _empty(n, first, torch.float64, np.float64)
        ids = _empty(n, first, torch.int32, np.int32)
    sizes, n_regions, pixel = [], 0, 0  # running totals
    for maps, packed_masks in parts:
        shape = tuple(maps.shape[1:])
        step = max(1, _PIXELS_PER_STEP // (shape[0] * shape[1]))
        for i in range(0, len(maps), step):
            flat = maps[i : i + step].reshape(-1)
            _check_no_nan(flat, "maps")
            regions, region_sizes = label_regions(unpack_masks(packed_masks[i : i + step], shape),
                                                  n_regions + 1)
            regions = regions.reshape(-1)
            if isinstance(flat, torch.Tensor):
                regions = torch.from_numpy(regions).to(flat.device)
            span = slice(pixel, pixel + len(flat))
            if packable:
                pack_key(flat, regions, key[span])
            else:
                scores[span], ids[span] = flat, regions
            sizes.append(region_sizes)
            n_regions += len(region_sizes)
            pixel += len(flat)
    sizes = np.concatenate(sizes)
    weights = np.zeros(n_regions + 1)
    weights[1:] = 1.0 / (sizes * float(n_regions))
    if isinstance(first, torch.Tensor):
        weights = torch.from_numpy(weights).to(first.device)
    order = DescendingOrder.from_key(key) if packable else DescendingOrder.by_argsort(scores, ids)
    n_pos = int(sizes.sum())
    return _SortedPixels(order, weights, n_pos, n - n_pos)


def check_pixel_inputs(maps, masks) -> None:
    for name, x in (("maps", maps), ("masks", masks)):
        if not isinstance(x, np.ndarray | torch.Tensor):
            raise AgpnetError(f"{name}: expected a numpy array or torch tensor, got {type(x).__name__}")
        if x.ndim != 3:
            raise AgpnetError(f"{name}: expected shape (N, H, W), got {tuple(x.shape)}")
    if tuple(maps.shape) != tuple(masks.shape):
        raise AgpnetError(f"masks: expected the maps' shape {tuple(maps.shape)}, got {tuple(masks.shape)}")
    if maps.shape[0] == 0:
        raise AgpnetError("maps: no images (N = 0)")
    if not (maps.dtype.is_floating_point if isinstance(maps, torch.Tensor) else maps.dtype.kind == "f"):
        raise AgpnetError(f"maps: expected floating point scores, got {maps.dtype}")


def numpy_if_on_host(x):
    """CPU tensors as numpy views (numpy runs the many small steps faster on the CPU); others as given."""
    if isinstance(x, torch.Tensor) and x.device.type == "cpu":
        return _to_numpy(x)
    return x


def host_vector(x, name: str) -> np.ndarray:
    """Any 1-D numbers (numpy, torch on any device, sequence) -> numpy on the host."""
    array = _to_numpy(x) if isinstance(x, torch.Tensor) else np.asarray(x)
    if array.ndim != 1:
        raise AgpnetError(f"{name}: expected a 1-D array, got shape {array.shape}")
    if array.dtype.kind not in "biuf":
        raise AgpnetError(f"{name}: expected numbers, got {array.dtype}")
    return array


def _to_numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach()
        return (x.float() if x.dtype == torch.bfloat16 else x).cpu().numpy()
    return np.asarray(x)


def _check_no_nan(x, name: str) -> None:
    has_nan = torch.isnan(x).any() if isinstance(x, torch.Tensor) else np.isnan(x).any()
    if has_nan:
        raise AgpnetError(f"{name}: contains NaN (expected numbers)")


def _empty(n: int, like, torch_dtype, numpy_dtype):
    if isinstance(like, torch.Tensor):
        return torch.empty(n, dtype=torch_dtype, device=like.device)
    return np.empty(n, dtype=numpy_dtype)


def _warn(reason: str, category: str | None) -> None:
    where = f" (category {category!r})" if category is not None else ""
    warnings.warn(f"{reason}{where}", MetricWarning, stacklevel=3)
