"""The metrics a run reports, in table order: each key's display label and direction.

Pure data (no torch), so tables, reports and plots read it without loading the metric code.
`MAD_KEYS` lists exactly the metrics that mAD averages: adding a metric to `METRICS` adds a
table column, not a term of mAD.
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class Metric:
    label: str  # column name in tables, reports and plots
    higher_is_better: bool = True


METRICS = {
    "image_auroc": Metric("I-AUROC"),
    "image_ap": Metric("I-AP"),
    "image_f1max": Metric("I-F1max"),
    "pixel_auroc": Metric("P-AUROC"),
    "pixel_ap": Metric("P-AP"),
    "pixel_f1max": Metric("P-F1max"),
    "aupro": Metric("AUPRO"),
    "mad": Metric("mAD"),
}
# mAD = the mean of these seven (docs/metrics.md).
MAD_KEYS = ("image_auroc", "image_ap", "image_f1max", "pixel_auroc", "pixel_ap", "pixel_f1max", "aupro")
# Shown where there is room for a few metrics only (the report's list of runs; ablation plots add mAD).
HEADLINE_KEYS = ("image_auroc", "pixel_auroc", "aupro")

