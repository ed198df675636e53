"""agpnet.metrics against scikit-learn (AUROC, AP, F1-max) and a direct AUPRO reference, on random data."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

from agpnet.metrics import aupro, image_metrics, pixel_metrics, pro_curve
from agpnet.metrics.functional import pixel_metrics_of_parts
from agpnet.metrics.regions import pack_masks

PROPERTY = settings(max_examples=100, deadline=None, derandomize=True)


def sklearn_metrics(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float, float]:
    precision, recall, _ = precision_recall_curve(labels, scores)
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-300)
    return roc_auc_score(labels, scores), average_precision_score(labels, scores), float(f1.max())


def reference_aupro(maps, masks, fpr_limit: float) -> float:
    """Straight from the definition: one threshold per distinct score, regions by scipy 8-connectivity.
    maps and masks: (N, H, W) arrays, or lists of (H_i, W_i) arrays of any sizes."""
    regions = []
    for image, mask in enumerate(masks):
        labels, count = ndimage.label(mask, structure=np.ones((3, 3)))
        regions += [(image, labels == region) for region in range(1, count + 1)]
    n_normal = sum((~mask).sum() for mask in masks)
    fprs, pros = [0.0], [0.0]
    for threshold in np.unique(np.concatenate([m.ravel() for m in maps]))[::-1]:
        above = [m >= threshold for m in maps]
        fprs.append(sum((a & ~mask).sum() for a, mask in zip(above, masks, strict=True)) / n_normal)
        pros.append(np.mean([above[image][region].mean() for image, region in regions]))
    area = 0.0
    for x0, y0, x1, y1 in zip(fprs[:-1], pros[:-1], fprs[1:], pros[1:], strict=True):
        if x1 <= fpr_limit:
            area += (x1 - x0) * (y0 + y1) / 2
        elif x0 < fpr_limit:
            y_limit = y0 + (y1 - y0) * (fpr_limit - x0) / (x1 - x0)
            area += (fpr_limit - x0) * (y0 + y_limit) / 2
    return area / fpr_limit


@st.composite
def scored_labels(draw):
    """Scores with many ties (one decimal, signed) and labels with both classes."""
    n = draw(st.integers(2, 60))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    labels = rng.random(n) < draw(st.floats(0.05, 0.95))
    labels[:2] = [False, True]
    scores = np.round(rng.normal(size=n) + draw(st.floats(0, 2)) * labels, 1)
    dtype = draw(st.sampled_from([np.float64, np.float32]))  # argsort path / packed-key path
    return scores.astype(dtype), labels.astype(np.int64)


@st.composite
def scored_masks(draw):
    """Maps with ties and masks with several regions per image (diagonal contacts included)."""
    n = draw(st.integers(1, 3))
    h, w = draw(st.integers(3, 9)), draw(st.integers(3, 9))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    masks = rng.random((n, h, w)) < draw(st.floats(0.1, 0.5))
    masks[0, :2, :2] = [[True, False], [False, True]]  # a diagonal-only contact
    masks[-1, -1, -1] = False
    levels = draw(st.integers(2, 12))
    maps = (rng.integers(0, levels, (n, h, w)) + draw(st.integers(0, 3)) * masks) / levels
    return maps.astype(draw(st.sampled_from([np.float64, np.float32]))), masks


@PROPERTY
@given(scored_labels())
def test_image_metrics_equal_sklearn(data):
    scores, labels = data
    ours = image_metrics(scores, labels)
    auroc, ap, f1 = sklearn_metrics(scores, labels)
    assert ours["image_auroc"] == pytest.approx(auroc, abs=1e-9)
    assert ours["image_ap"] == pytest.approx(ap, abs=1e-9)
    assert ours["image_f1max"] == pytest.approx(f1, abs=1e-9)


@PROPERTY
@given(scored_masks(), st.sampled_from([0.05, 0.3, 1.0]))
def test_pixel_metrics_equal_sklearn_and_reference_aupro(data, fpr_limit):
    maps, masks = data
    ours = pixel_metrics(maps, masks, fpr_limit=fpr_limit)
    auroc, ap, f1 = sklearn_metrics(maps.ravel(), masks.ravel())
    assert ours["pixel_auroc"] == pytest.approx(auroc, abs=1e-9)
    assert ours["pixel_ap"] == pytest.approx(ap, abs=1e-9)
    assert ours["pixel_f1max"] == pytest.approx(f1, abs=1e-9)
    assert ours["aupro"] == pytest.approx(reference_aupro(maps, masks, fpr_limit), abs=1e-9)


@PROPERTY
@given(scored_masks())
def test_torch_backend_equals_numpy_backend(data):
    maps, masks = data
    ours = pixel_metrics(maps, masks)
    # The torch backend (taken by accelerator tensors) run on CPU tensors.
    on_torch = pixel_metrics_of_parts([(torch.from_numpy(maps), pack_masks(masks))], 0.3, None)
    for key, value in ours.items():
        assert on_torch[key] == pytest.approx(value, abs=1e-9), key


@settings(max_examples=30, deadline=None, derandomize=True)
@given(scored_masks())
def test_pro_curve_ends_at_one_and_gives_aupro(data):
    maps, masks = data
    fpr, pro = pro_curve(maps, masks)
    assert (fpr[0], pro[0]) == (0.0, 0.0)
    assert fpr[-1] == pytest.approx(1.0) and pro[-1] == pytest.approx(1.0)
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(pro) >= -1e-12)
    assert aupro(maps, masks, fpr_limit=1.0) == pytest.approx(np.trapezoid(pro, fpr), abs=1e-9)
