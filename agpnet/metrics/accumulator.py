"""Collect predictions batch by batch and compute the metrics per category.

Storage: anomaly maps as float16 (default) on the accelerator they come on (host data as
numpy arrays), so the metrics are exact over the stored float16 values (pass
`map_dtype=torch.float32` to keep float32, 4 B per pixel); masks as packed bits on the host
(1 bit per pixel); scores and labels on the host.

Memory: what was added is kept until its category is computed (`stored_bytes`: about 4.1 B
per pixel with float32 maps, 2.1 B with float16). `finish(category)` computes a category's
metrics at once and frees its maps and masks (only its small result dict stays), so a test set
that comes category by category costs at its peak the largest category's maps and masks plus
their sort (8 B per pixel of that category on the host, 24 B on an accelerator; see
`agpnet.metrics.functional`), not the whole test set. `compute()` computes the categories left
open, one at a time.

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
    """What was added for one category: per-batch parts, in the order they came; once finished,
    only its metrics and the fpr_limit they were computed with."""

    def __init__(self):
        self.scores: list[np.ndarray] = []
        self.labels: list[np.ndarray] = []
        self.maps: list = []  # numpy arrays or tensors (N_b, H_b, W_b) of map_dtype
        self.masks: list[np.ndarray] = []  # packed bits (N_b, ceil(H_b*W_b/8)) uint8
        self.finished: tuple[float, dict[str, float]] | None = None  # (fpr_limit, metrics)

    def metrics(self, name: str, fpr_limit: float) -> dict[str, float]:
        """{every METRICS key} of what was added."""
        metrics = image_metrics(np.concatenate(self.scores), np.concatenate(self.labels), category=name)
        parts = list(zip(_same_backend(self.maps), self.masks, strict=True))
        metrics.update(pixel_metrics_of_parts(parts, fpr_limit, name))
        metrics["mad"] = mad(metrics)
        return metrics

    def nbytes(self) -> int:
        arrays = self.scores + self.labels + self.maps + self.masks
        return sum(a.numel() * a.element_size() if isinstance(a, torch.Tensor) else a.nbytes for a in arrays)


class MetricAccumulator:
    """`add()` batches of (categories, scores, labels, maps, masks); `finish()` a category whose
    images are all in (optional: frees its maps); `compute()` the metrics."""

    def __init__(self, map_dtype: torch.dtype = torch.float16):
        if map_dtype not in _MAP_DTYPES:
            raise AgpnetError(f"map_dtype: expected torch.float16 or torch.float32, got {map_dtype}")
        self.map_dtype = map_dtype
        self._categories: dict[str, _Category] = {}  # first-seen order

    @property
    def stored_bytes(self) -> int:
        """Bytes of the maps, packed masks, scores and labels held now (on any device); a finished
        category holds none."""
        return sum(store.nbytes() for store in self._categories.values())

    def add(self, categories: Sequence[str] | str, scores, labels, maps, masks) -> None:
        """categories: B names (or one name for the whole batch); scores (B,) float; labels (B,) 0/1;
        maps (B, H, W) float; masks (B, H, W) bool. numpy arrays or torch tensors, any device;
        H and W may change from batch to batch. A finished category takes no more images."""
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
        if "mean" in categories:
            raise AgpnetError("MetricAccumulator.add: 'mean' is reserved for the mean over categories")
        names = list(dict.fromkeys(categories.tolist()))  # first-seen order, plain str
        done = {name for name, store in self._categories.items() if store.finished is not None}
        finished = [name for name in names if name in done]
        if finished:
            raise AgpnetError(f"MetricAccumulator.add: category '{finished[0]}' was already finished (its "
                              "metrics are computed); expected all images of a category before finish()")
        maps = numpy_if_on_host(maps)
        if isinstance(maps, torch.Tensor):
            maps = maps.detach().to(self.map_dtype)
        else:
            maps = np.asarray(maps, dtype=_MAP_DTYPES[self.map_dtype])
        packed = pack_masks(masks)
        for name in names:
            rows = np.flatnonzero(categories == name)
            store = self._categories.setdefault(name, _Category())
            take = torch.from_numpy(rows).to(maps.device) if isinstance(maps, torch.Tensor) else rows
            store.scores.append(scores[rows])
            store.labels.append(labels[rows])
            store.maps.append(maps[take])
            store.masks.append(packed[rows])

    def finish(self, category: str, fpr_limit: float = 0.3) -> None:
        """Compute `category`'s metrics now (as `compute()` would) and free its maps and masks;
        `compute()` must then be called with the same `fpr_limit`. Adding to it afterwards raises."""
        store = self._categories.get(category)
        if store is None:
            raise AgpnetError(f"MetricAccumulator.finish: no batches of category '{category}' were added")
        if store.finished is not None:
            raise AgpnetError(f"MetricAccumulator.finish: category '{category}' was already finished")
        store.finished = (fpr_limit, store.metrics(category, fpr_limit))
        store.scores, store.labels, store.maps, store.masks = [], [], [], []

    def compute(self, fpr_limit: float = 0.3) -> dict[str, dict[str, float]]:
        """{category: {every METRICS key}, "mean": {same keys, mean over categories}}, categories in
        the order they were first added (finished ones included).

        The mean ignores NaN values (with a warning naming the categories that lack them).
        """
        if not self._categories:
            raise AgpnetError("MetricAccumulator.compute: no batches were added")
        for name, store in self._categories.items():
            if store.finished is not None and store.finished[0] != fpr_limit:
                raise AgpnetError(f"MetricAccumulator.compute: fpr_limit {fpr_limit} differs from the "
                                  f"{store.finished[0]} category '{name}' was finished with")
        results = {}
        for name, store in self._categories.items():
            if store.finished is None:
                results[name] = store.metrics(name, fpr_limit)
            else:
                results[name] = dict(store.finished[1])
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
