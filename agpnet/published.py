"""Published numbers (docs/published.md) to print beside ours, always labelled "published".

Values are in percent, as the sources print them, by metric key (agpnet.metrics.METRICS); a
metric a source does not give is left out (None in `published_rows`).
These are dataset means (the "mean" row of a table), never per-category numbers, and never
our results. Peers use different AUPRO / F1 protocols and some select the best epoch on the
test set (docs/metrics.md), so compare with care.
"""

from agpnet.metrics import MAD_KEYS, METRICS

PUBLISHED_LABEL = "published"

# The categories of each benchmark: published means are over all of them.
DATASET_CATEGORIES = {
    "mvtec": ("bottle", "cable", "capsule", "carpet", "grid", "hazelnut", "leather", "metal_nut", "pill",
              "screw", "tile", "toothbrush", "transistor", "wood", "zipper"),
    "visa": ("candle", "capsules", "cashew", "chewinggum", "fryum", "macaroni1", "macaroni2", "pcb1", "pcb2",
             "pcb3", "pcb4", "pipe_fryum"),
    "mvtec3d": ("bagel", "cable_gland", "carrot", "cookie", "dowel", "foam", "peach", "potato", "rope",
                "tire"),
    "realiad": ("audiojack", "bottle_cap", "button_battery", "end_cap", "eraser", "fire_hood", "mint",
                "mounts", "pcb", "phone_battery", "plastic_nut", "plastic_plug", "porcelain_doll",
                "regulator", "rolled_strip_base", "sim_card_set", "switch", "tape", "terminalblock",
                "toothbrush", "toy", "toy_brick", "transistor1", "u_block", "usb", "usb_adaptor", "vcpill",
                "wooden_beads", "woodstick", "zipper"),
    "btad": ("01", "02", "03"),
    "mpdd": ("bracket_black", "bracket_brown", "bracket_white", "connector", "metal_plate", "tubes"),
}

_MULTI_CLASS = {
    # method: (source, {dataset: {metric key: percent}}), only the metrics the source gives
    "AGPNet (paper)": ("arXiv 2408.07490", {
        "mvtec": dict(image_auroc=98.7, pixel_auroc=98.0, aupro=92.9),
        "visa": dict(image_auroc=92.3, pixel_auroc=98.4),
        "mvtec3d": dict(image_auroc=84.9, pixel_auroc=98.0),
    }),
    "ViTAD": ("ADer configs/vitad README", {
        "mvtec": dict(image_auroc=98.3, image_ap=99.4, image_f1max=97.3,
                      pixel_auroc=97.7, pixel_ap=55.3, pixel_f1max=58.7, aupro=91.4),
        "visa": dict(image_auroc=90.5, image_ap=91.7, image_f1max=86.3,
                     pixel_auroc=98.2, pixel_ap=36.6, pixel_f1max=41.1, aupro=85.1),
        "mvtec3d": dict(image_auroc=79.0, image_ap=93.1, image_f1max=91.8,
                        pixel_auroc=98.2, pixel_ap=27.3, pixel_f1max=33.3, aupro=91.6),
    }),
    "MambaAD": ("MambaAD README", {
        "mvtec": dict(image_auroc=98.6, image_ap=99.6, image_f1max=97.8,
                      pixel_auroc=97.7, pixel_ap=56.3, pixel_f1max=59.2, aupro=93.1),
        "visa": dict(image_auroc=94.3, image_ap=94.5, image_f1max=89.4,
                     pixel_auroc=98.5, pixel_ap=39.4, pixel_f1max=44.0, aupro=91.0),
        "mvtec3d": dict(image_auroc=86.2, image_ap=95.8, image_f1max=92.8,
                        pixel_auroc=98.6, pixel_ap=37.5, pixel_f1max=41.1, aupro=93.6),
    }),
    "UniAD (ADer re-run)": ("ADer configs/uniad README", {
        "mvtec": dict(image_auroc=97.5, image_ap=99.1, image_f1max=97.3,
                      pixel_auroc=97.0, pixel_ap=45.1, pixel_f1max=50.4, aupro=90.7),
        "visa": dict(image_auroc=88.8, image_ap=90.8, image_f1max=85.8,
                     pixel_auroc=98.3, pixel_ap=33.7, pixel_f1max=39.0, aupro=85.5),
        "mvtec3d": dict(image_auroc=78.9, image_ap=93.4, image_f1max=91.4,
                        pixel_auroc=96.5, pixel_ap=21.2, pixel_f1max=28.0, aupro=88.1),
    }),
    "Dinomaly ViT-B": ("Dinomaly (CVPR 2025)", {
        "mvtec": dict(image_auroc=99.6, image_ap=99.8, image_f1max=99.0,
                      pixel_auroc=98.4, pixel_ap=69.3, pixel_f1max=69.2, aupro=94.8),
        "visa": dict(image_auroc=98.7, image_ap=98.9, image_f1max=96.2,
                     pixel_auroc=98.7, pixel_ap=53.2, pixel_f1max=55.7, aupro=94.5),
    }),
}


# ADer's own re-runs of each method (configs/benchmark/README.md of github.com/zhangzjn/ADer at commit
# ac5f4fc): Real-IAD at 100 epochs, BTAD and MPDD at 300 epochs (ours: 500).
_ADER_BENCHMARK = {
    "realiad": ("ADer benchmark README (Real-IAD, 100 epochs)", {
        "ViTAD": dict(image_auroc=82.7, image_ap=80.2, image_f1max=73.7,
                      pixel_auroc=97.2, pixel_ap=24.3, pixel_f1max=32.3, aupro=84.8),
        "MambaAD": dict(image_auroc=87.0, image_ap=85.3, image_f1max=77.6,
                        pixel_auroc=98.6, pixel_ap=32.4, pixel_f1max=38.1, aupro=91.2),
        "UniAD (ADer re-run)": dict(image_auroc=83.1, image_ap=81.2, image_f1max=74.5,
                                    pixel_auroc=97.4, pixel_ap=23.3, pixel_f1max=30.9, aupro=87.1),
    }),
    "btad": ("ADer benchmark README (BTAD, 300 epochs)", {
        "ViTAD": dict(image_auroc=94.0, image_ap=97.0, image_f1max=93.7,
                      pixel_auroc=97.6, pixel_ap=58.3, pixel_f1max=56.5, aupro=72.8),
        "MambaAD": dict(image_auroc=92.9, image_ap=96.2, image_f1max=93.0,
                        pixel_auroc=97.6, pixel_ap=51.2, pixel_f1max=55.1, aupro=77.3),
        "UniAD (ADer re-run)": dict(image_auroc=94.5, image_ap=98.4, image_f1max=94.9,
                                    pixel_auroc=97.4, pixel_ap=52.4, pixel_f1max=55.5, aupro=78.9),
    }),
    "mpdd": ("ADer benchmark README (MPDD, 300 epochs)", {
        "ViTAD": dict(image_auroc=87.4, image_ap=90.8, image_f1max=87.0,
                      pixel_auroc=97.8, pixel_ap=34.6, pixel_f1max=37.8, aupro=92.9),
        "MambaAD": dict(image_auroc=89.2, image_ap=93.1, image_f1max=90.3,
                        pixel_auroc=97.7, pixel_ap=33.5, pixel_f1max=38.6, aupro=92.8),
        "UniAD (ADer re-run)": dict(image_auroc=80.1, image_ap=83.2, image_f1max=85.1,
                                    pixel_auroc=95.4, pixel_ap=19.0, pixel_f1max=25.6, aupro=83.8),
    }),
}


def _row(method, source, dataset, setting, shots, values: dict) -> dict:
    unknown = sorted(set(values) - (set(METRICS) - {"mad"}))  # mAD is computed, never copied
    if unknown:
        raise ValueError(f"published {method} {dataset} {setting}: unknown metric key(s) {unknown}")
    metrics = {key: values.get(key) for key in METRICS}
    # mAD is the mean of the MAD_KEYS (metrics.md); only where the source gives all of them.
    given = all(key in values for key in MAD_KEYS)
    metrics["mad"] = sum(values[key] for key in MAD_KEYS) / len(MAD_KEYS) if given else None
    return {"method": method, "dataset": dataset, "setting": setting, "shots": shots,
            "metrics": metrics, "source": source, "label": PUBLISHED_LABEL}


def _all_rows() -> list[dict]:
    rows = []
    for method, (source, per_dataset) in _MULTI_CLASS.items():
        for dataset, values in per_dataset.items():
            rows.append(_row(method, source, dataset, "multi-class", None, values))
    for dataset, (source, per_method) in _ADER_BENCHMARK.items():
        for method, values in per_method.items():
            rows.append(_row(method, source, dataset, "multi-class", None, values))
    rows.append(_row("Dinomaly ViT-B", "Dinomaly (CVPR 2025), abstract", "realiad", "multi-class", None,
                     dict(image_auroc=89.3)))
    paper = "arXiv 2408.07490"
    rows.append(_row("AGPNet (paper)", paper, "mvtec", "one-class", None,
                     dict(image_auroc=99.2, pixel_auroc=98.3)))
    for shots, p_auroc in ((2, 96.2), (4, 97.3)):
        rows.append(_row("AGPNet (paper)", paper, "mvtec", "few-shot", shots, dict(pixel_auroc=p_auroc)))
    return rows


PUBLISHED = _all_rows()


def published_rows(dataset: str, setting: str = "multi-class", shots: int | None = None) -> list[dict]:
    """Published rows for one table: dicts with method, source, label="published" and `metrics`
    {every METRICS key: percent or None}. Empty when nothing was published for it."""
    return [dict(row, metrics=dict(row["metrics"])) for row in PUBLISHED
            if row["dataset"] == dataset and row["setting"] == setting
            and (setting != "few-shot" or row["shots"] == shots)]

