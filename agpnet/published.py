"""Published numbers (docs/published.md) to print beside ours, always labelled "published".

Values are in percent, as the sources print them; None where a source gives no number.
These are dataset means (the "mean" row of a table), never per-category numbers, and never
our results. Peers use different AUPRO / F1 protocols and some select the best epoch on the
test set (docs/metrics.md), so compare with care.
"""

PUBLISHED_LABEL = "published"

# The order of the seven numbers below (published.md): I-AUROC / I-AP / I-F1max | P-AUROC / P-AP / P-F1max / AUPRO.
METRIC_ORDER = ("image_auroc", "image_ap", "image_f1max", "pixel_auroc", "pixel_ap", "pixel_f1max", "aupro")

# The categories of each benchmark: published means are over all of them.
DATASET_CATEGORIES = {
    "mvtec": ("bottle", "cable", "capsule", "carpet", "grid", "hazelnut", "leather", "metal_nut", "pill", "screw",
              "tile", "toothbrush", "transistor", "wood", "zipper"),
    "visa": ("candle", "capsules", "cashew", "chewinggum", "fryum", "macaroni1", "macaroni2", "pcb1", "pcb2", "pcb3",
             "pcb4", "pipe_fryum"),
    "mvtec3d": ("bagel", "cable_gland", "carrot", "cookie", "dowel", "foam", "peach", "potato", "rope", "tire"),
}

_MULTI_CLASS = {
    # method: (source, {dataset: seven metrics in METRIC_ORDER})
    "AGPNet (paper)": ("arXiv 2408.07490", {
        "mvtec": (98.7, None, None, 98.0, None, None, 92.9),
        "visa": (92.3, None, None, 98.4, None, None, None),
        "mvtec3d": (84.9, None, None, 98.0, None, None, None),
    }),
    "ViTAD": ("ADer configs/vitad README", {
        "mvtec": (98.3, 99.4, 97.3, 97.7, 55.3, 58.7, 91.4),
        "visa": (90.5, 91.7, 86.3, 98.2, 36.6, 41.1, 85.1),
        "mvtec3d": (79.0, 93.1, 91.8, 98.2, 27.3, 33.3, 91.6),
    }),
    "MambaAD": ("MambaAD README", {
        "mvtec": (98.6, 99.6, 97.8, 97.7, 56.3, 59.2, 93.1),
        "visa": (94.3, 94.5, 89.4, 98.5, 39.4, 44.0, 91.0),
        "mvtec3d": (86.2, 95.8, 92.8, 98.6, 37.5, 41.1, 93.6),
    }),
    "UniAD (ADer re-run)": ("ADer configs/uniad README", {
        "mvtec": (97.5, 99.1, 97.3, 97.0, 45.1, 50.4, 90.7),
        "visa": (88.8, 90.8, 85.8, 98.3, 33.7, 39.0, 85.5),
        "mvtec3d": (78.9, 93.4, 91.4, 96.5, 21.2, 28.0, 88.1),
    }),
    "Dinomaly ViT-B": ("Dinomaly (CVPR 2025)", {
        "mvtec": (99.6, 99.8, 99.0, 98.4, 69.3, 69.2, 94.8),
        "visa": (98.7, 98.9, 96.2, 98.7, 53.2, 55.7, 94.5),
    }),
}


def _row(method, source, dataset, setting, shots, values):
    metrics = dict(zip(METRIC_ORDER, values))
    known = [v for v in values if v is not None]
    # mAD is the mean of the seven metrics (metrics.md); only where the source gives all seven.
    metrics["mad"] = sum(known) / len(known) if len(known) == len(METRIC_ORDER) else None
    return {"method": method, "dataset": dataset, "setting": setting, "shots": shots,
            "metrics": metrics, "source": source, "label": PUBLISHED_LABEL}


def _all_rows() -> list[dict]:
    rows = []
    for method, (source, per_dataset) in _MULTI_CLASS.items():
        for dataset, values in per_dataset.items():
            rows.append(_row(method, source, dataset, "multi-class", None, values))
    paper = "arXiv 2408.07490"
    rows.append(_row("AGPNet (paper)", paper, "mvtec", "one-class", None,
                     (99.2, None, None, 98.3, None, None, None)))
    for shots, p_auroc in ((2, 96.2), (4, 97.3)):
        rows.append(_row("AGPNet (paper)", paper, "mvtec", "few-shot", shots,
                         (None, None, None, p_auroc, None, None, None)))
    return rows


PUBLISHED = _all_rows()


def published_rows(dataset: str, setting: str = "multi-class", shots: int | None = None) -> list[dict]:
    """Published rows for one table: dicts with method, source, label="published" and `metrics`
    {7 METRIC_ORDER keys + "mad": percent or None}. Empty when nothing was published for it."""
    return [dict(row, metrics=dict(row["metrics"])) for row in PUBLISHED
            if row["dataset"] == dataset and row["setting"] == setting
            and (setting != "few-shot" or row["shots"] == shots)]

