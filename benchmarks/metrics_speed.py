"""Speed of agpnet.metrics.pixel_metrics against scikit-learn plus a reference AUPRO.

Data: N anomaly maps of SxS (float32), about half of the images defective with 1-4 regions
(elliptic blobs and thin scratches of various sizes); scores = smoothed noise plus a
smoothed signal inside the regions.

Ours: P-AUROC, P-AP, P-F1max and AUPRO in one call (one sort), best of 3 after a warm-up.
Reference (one run): sklearn roc_auc_score + average_precision_score + precision_recall_curve
(for F1-max), and AUPRO as in the official MVTec AD evaluation (per-pixel FPR/PRO weights,
a stable argsort, cumulative sums, the last point of each tie block, trapezoid to the limit).

    python benchmarks/metrics_speed.py [--device cpu|cuda] [--n 200] [--size 256]

The last line printed is one JSON object: ours_s, reference_s, ratio, max_abs_diff, n_pixels, device.
"""

import argparse
import json
import time

import numpy as np
import torch
from scipy import ndimage
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

from agpnet.metrics import pixel_metrics

FPR_LIMIT = 0.3


def make_data(n: int, size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """maps (n, size, size) float32, masks (n, size, size) bool."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:size, 0:size].astype(np.float32)
    masks = np.zeros((n, size, size), dtype=bool)
    for image in range(0, n, 2):  # every other image is defective
        for _ in range(rng.integers(1, 5)):
            cy, cx = rng.uniform(0, size, 2)
            if rng.random() < 0.5:  # elliptic blob
                ry, rx = rng.uniform(1.5, size / 6, 2)
                masks[image] |= ((rows - cy) / ry) ** 2 + ((cols - cx) / rx) ** 2 <= 1
            else:  # scratch: a thin segment at any angle
                angle, length = rng.uniform(0, np.pi), rng.uniform(size / 8, size / 2)
                dy, dx = np.sin(angle), np.cos(angle)
                along = (rows - cy) * dy + (cols - cx) * dx
                across = np.abs(-(rows - cy) * dx + (cols - cx) * dy)
                masks[image] |= (np.abs(along) <= length / 2) & (across <= rng.uniform(0.5, 2.0))
    noise = ndimage.gaussian_filter(rng.normal(size=(n, size, size)), sigma=(0, 3, 3))
    signal = ndimage.gaussian_filter(masks.astype(np.float64), sigma=(0, 1.5, 1.5))
    maps = noise / noise.std() + 2.5 * signal
    return maps.astype(np.float32), masks


def reference_aupro(maps: np.ndarray, masks: np.ndarray, fpr_limit: float) -> float:
    """AUPRO the way the official MVTec AD evaluation computes it (exact, one stable argsort)."""
    fpr_step = np.zeros(maps.shape)
    pro_step = np.zeros(maps.shape)
    normal = ~masks
    fpr_step[normal] = 1.0 / normal.sum()
    n_regions = 0
    for image, mask in enumerate(masks):
        labels, count = ndimage.label(mask, structure=np.ones((3, 3)))
        for label, box in enumerate(ndimage.find_objects(labels), start=1):
            inside = labels[box] == label
            pro_step[image][box][inside] = 1.0 / inside.sum()  # each region counts once in PRO
        n_regions += count
    pro_step /= n_regions
    order = np.argsort(maps.ravel(), kind="stable")[::-1]
    scores = maps.ravel()[order]
    fpr = np.cumsum(fpr_step.ravel()[order])
    pro = np.cumsum(pro_step.ravel()[order])
    last = np.append(scores[1:] != scores[:-1], True)
    fpr = np.concatenate(([0.0], fpr[last]))
    pro = np.concatenate(([0.0], pro[last]))
    inside = np.searchsorted(fpr, fpr_limit, side="right")  # points with fpr <= limit
    area = np.trapezoid(pro[:inside], fpr[:inside])
    if inside < len(fpr):
        x0, y0, x1, y1 = fpr[inside - 1], pro[inside - 1], fpr[inside], pro[inside]
        y_limit = y0 + (y1 - y0) * (fpr_limit - x0) / (x1 - x0)
        area += (fpr_limit - x0) * (y0 + y_limit) / 2
    return float(area / fpr_limit)


def reference_metrics(maps: np.ndarray, masks: np.ndarray) -> dict[str, float]:
    scores, labels = maps.ravel(), masks.ravel()
    precision, recall, _ = precision_recall_curve(labels, scores)
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-300)
    return {
        "pixel_auroc": float(roc_auc_score(labels, scores)),
        "pixel_ap": float(average_precision_score(labels, scores)),
        "pixel_f1max": float(f1.max()),
        "aupro": reference_aupro(maps, masks, FPR_LIMIT),
    }


def time_ours(maps, masks, device: str) -> tuple[float, dict[str, float]]:
    def run():
        start = time.perf_counter()
        result = pixel_metrics(maps, masks, fpr_limit=FPR_LIMIT)
        if device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start, result

    run()  # warm-up
    times, result = zip(*(run() for _ in range(3)), strict=True)
    return min(times), result[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--size", type=int, default=256)
    args = parser.parse_args()

    maps, masks = make_data(args.n, args.size)
    print(
        f"data: {args.n} maps {args.size}x{args.size}, {masks.mean():.4f} anomalous pixels, device {args.device}"
    )
    if args.device == "cuda":
        ours_s, ours = time_ours(torch.from_numpy(maps).cuda(), torch.from_numpy(masks).cuda(), "cuda")
    else:
        ours_s, ours = time_ours(maps, masks, "cpu")
    start = time.perf_counter()
    reference = reference_metrics(maps, masks)
    reference_s = time.perf_counter() - start

    for key in reference:
        print(f"{key:12s} ours {ours[key]:.12f}  reference {reference[key]:.12f}")
    max_abs_diff = max(abs(ours[key] - reference[key]) for key in reference)
    print(
        f"ours {ours_s:.3f} s (best of 3), reference {reference_s:.3f} s, ratio {reference_s / ours_s:.1f}x"
    )
    print(
        json.dumps(
            {
                "ours_s": round(ours_s, 4),
                "reference_s": round(reference_s, 4),
                "ratio": round(reference_s / ours_s, 2),
                "max_abs_diff": max_abs_diff,
                "n_pixels": int(maps.size),
                "device": args.device,
            }
        )
    )


if __name__ == "__main__":
    main()
