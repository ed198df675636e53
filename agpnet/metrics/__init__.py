"""Exact evaluation metrics: image/pixel AUROC, AP, F1-max, AUPRO, mAD (docs/metrics.md).

The registry (`METRICS`, `MAD_KEYS`, `HEADLINE_KEYS`) imports without torch; the metric code
(`image_metrics`, `MetricAccumulator`, ...) is imported on first use, so the torch-free parts of
agpnet (tables, reports, sweeps) can read the registry and still start fast.
"""

import importlib

from agpnet.metrics.registry import HEADLINE_KEYS, MAD_KEYS, METRICS, Metric

_LAZY = {
    "MetricAccumulator": "accumulator",
    "MetricWarning": "functional",
    "aupro": "functional",
    "image_metrics": "functional",
    "mad": "functional",
    "pixel_metrics": "functional",
    "pro_curve": "functional",
}

__all__ = ["HEADLINE_KEYS", "MAD_KEYS", "METRICS", "Metric", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f"agpnet.metrics.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'agpnet.metrics' has no attribute {name!r}")
