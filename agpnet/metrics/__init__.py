"""Exact evaluation metrics: image/pixel AUROC, AP, F1-max, AUPRO, mAD (docs/metrics.md)."""

from agpnet.metrics.accumulator import MetricAccumulator
from agpnet.metrics.functional import (
    METRIC_KEYS,
    MetricWarning,
    aupro,
    image_metrics,
    mad,
    pixel_metrics,
    pro_curve,
)

__all__ = [
    "METRIC_KEYS",
    "MetricAccumulator",
    "MetricWarning",
    "aupro",
    "image_metrics",
    "mad",
    "pixel_metrics",
    "pro_curve",
]
