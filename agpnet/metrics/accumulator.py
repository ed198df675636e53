"""Collect predictions batch by batch and compute the metrics per category.

Storage: anomaly maps as float16 (default) on the accelerator they come on (host data as
numpy arrays), so the metrics are exact over the stored float16 values (pass
`map_dtype=torch.float32` to keep float32); masks as packed bits on the host (1 bit per
pixel); scores and labels on the host. A dataset thus costs about 2 B per pixel, plus,
during `compute()`, the sort of one category at a time (8 B per pixel of that category on
the host, 24 B on an accelerator; see `agpnet.metrics.functional`).

Map sizes may differ between batches, also within a category (images of their original sizes):
the pixel metrics count the pixels of all its images, AUPRO the regions of each image.
"""

import warnings
from collections.abc import Sequence

import numpy as np
import torch

from agpnet.errors import AgpnetError
from agpnet.metrics.functional import (
    MetricWarning,
    check_pixel_inputs,
    host_vector,
    image_metrics,
    mad,
    numpy_if_on_host,
    pixel_metrics_of_parts,
)
from agpnet.metrics.regions import pack_masks
from agpnet.metrics.registry import METRICS

_MAP_DTYPES = {torch.float16: np.float16, torch.float32: np.float32}


class _Category:
    """What was added for one category: per-batch parts, in the order they came."""

    def __init__(self):
        self.scores: list[np.ndarray] = []
        self.labels: list[np.ndarray] = []
        self.maps: list = []  # numpy arrays or tensors (N_b, H_b, W_b) of map_dtype
        self.masks: list[np.ndarray] = []  # packed bits (N_b, ceil(H_b*W_b/8)) uint8


class MetricAccumulator:
    """`add()` batches of (categories, scores, labels, maps, masks); `compute()` the metrics."""

    def __init__(self, map_dtype: torch.dtype = torch.float16):
        if map_dtype not in _MAP_DTYPES:
            raise AgpnetError(f"map_dtype: expected torch.float16 or torch.float32, got {map_dtype}")
        self.map_dtype = map_dtype
        self._categories: dict[str, _Category] = {}

    def add(self, categories: Sequence[str] | str, scores, labels, maps, masks) -> None:
        """categories: B names (or one name for the whole batch); scores (B,) float; labels (B,) 0/1;
        maps (B, H, W) float; masks (B, H, W) bool. numpy arrays or torch tensors, any device;
        H and W may change from batch to batch."""
        check_pixel_inputs(maps, masks)
        scores = host_vector(scores, "scores").astype(np.float64)
        labels = host_vector(labels, "labels").astype(np.int64)
        batch = len(scores)
        if isinstance(categories, str):
            categories = [categories] * batch
        categories = np.asarray(categories, dtype=str)
        if not (len(categories) == len(labels) == batch == maps.shape[0] == masks.shape[0]):
            raise AgpnetError(
                f"MetricAccumulator.add: batch sizes differ (categories {len(categories)}, scores {batch}, "
                f"labels {len(labels)}, maps {maps.shape[0]}, masks {masks.shape[0]})"
            )
        if not np.isin(labels, (0, 1)).all():
            raise AgpnetError("MetricAccumulator.add: labels must be 0 (good) or 1 (defective)")
        maps = numpy_if_on_host(maps)
        if isinstance(maps, torch.Tensor):
            maps = maps.detach().to(self.map_dtype)
        else:
            maps = np.asarray(maps, dtype=_MAP_DTYPES[self.map_dtype])
        packed = pack_masks(masks)
        if "mean" in categories:
            raise AgpnetError("MetricAccumulator.add: 'mean' is reserved for the mean over categories")
        for name in dict.fromkeys(categories.tolist()):  # first-seen order, plain str
            rows = np.flatnonzero(categories == name)
            store = self._categories.setdefault(name, _Category())
            take = torch.from_numpy(rows).to(maps.device) if isinstance(maps, torch.Tensor) else rows
            store.scores.append(scores[rows])
            store.labels.append(labels[rows])
            store.maps.append(maps[take])
            store.masks.append(packed[rows])

    def compute(self, fpr_limit: float = 0.3) -> dict[str, dict[str, float]]:
        """{category: {every METRICS key}, "mean": {same keys, mean over categories}}.

        The mean ignores NaN values (with a warning naming the categories that lack them).
        """
        if not self._categories:
            raise AgpnetError("MetricAccumulator.compute: no batches were added")
        results = {}
        for name, store in self._categories.items():
            metrics = image_metrics(np.concatenate(store.scores), np.concatenate(store.labels), category=name)
            parts = list(zip(_same_backend(store.maps), store.masks, strict=True))
            metrics.update(pixel_metrics_of_parts(parts, fpr_limit, name))
            metrics["mad"] = mad(metrics)
            results[name] = metrics
        results["mean"] = _mean_over_categories(results)
        return results


def _same_backend(parts: list) -> list:
    """All parts as tensors on the first tensor's device if any part is a tensor, else as given."""
    device = next((part.device for part in parts if isinstance(part, torch.Tensor)), None)
    if device is None:
        return parts
    return [torch.as_tensor(part).to(device) for part in parts]


def _mean_over_categories(results: dict[str, dict[str, float]]) -> dict[str, float]:
    mean = {}
    for key in METRICS:
        values = np.array([metrics[key] for metrics in results.values()], dtype=np.float64)
        lacking = [name for name, metrics in results.items() if np.isnan(metrics[key])]
        if lacking and len(lacking) < len(values):
            warnings.warn(
                f"mean {key} leaves out categories where it is NaN: {', '.join(lacking)}",
                MetricWarning,
                stacklevel=3,
            )
        mean[key] = float(np.nanmean(values)) if len(lacking) < len(values) else float("nan")
    return mean
