"""agpnet.metrics: the test vectors of docs/metrics.md, undefined cases, backends and chunking."""

import math

import numpy as np
import pytest
import torch

from agpnet.errors import AgpnetError
from agpnet.metrics import (
    MAD_KEYS,
    MetricWarning,
    aupro,
    functional,
    image_metrics,
    mad,
    pixel_metrics,
    pro_curve,
    ranking,
)
from agpnet.metrics.regions import pack_masks


def random_pixels(seed: int, n: int = 3, size: int = 12, levels: int = 8):
    """Maps with many tied scores (float32) and masks with several small regions per image."""
    rng = np.random.default_rng(seed)
    masks = rng.random((n, size, size)) < 0.25
    masks[0, 0, 0] = True  # at least one region
    masks[0, -1, -1] = False  # at least one normal pixel
    maps = (rng.integers(0, levels, (n, size, size)) + 2 * masks).astype(np.float32) / levels
    return maps, masks


def torch_backend(maps, masks, fpr_limit: float = 0.3):
    """Pixel metrics and PRO curve computed with the torch backend (the one accelerator tensors
    take) on CPU tensors; the public functions hand CPU tensors to numpy."""
    parts = [(torch.as_tensor(maps), pack_masks(torch.as_tensor(masks)))]
    return functional.pixel_metrics_of_parts(parts, fpr_limit, None), functional.pro_curve_of_parts(parts)


# Test vectors (docs/metrics.md).


def test_image_vector_distinct_scores():
    metrics = image_metrics(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1]))
    assert metrics["image_auroc"] == pytest.approx(0.75, abs=1e-12)
    assert metrics["image_ap"] == pytest.approx(5 / 6, abs=1e-12)  # not the trapezoidal 0.7917
    assert metrics["image_f1max"] == pytest.approx(0.8, abs=1e-12)


def test_image_vector_ties():
    assert image_metrics([0.5, 0.5, 0.5, 0.9], [0, 1, 0, 1])["image_auroc"] == pytest.approx(0.75, abs=1e-12)
    all_tied = image_metrics([0.5] * 4, [0, 1, 0, 1])
    assert all_tied["image_ap"] == pytest.approx(0.5, abs=1e-12)
    assert all_tied["image_auroc"] == pytest.approx(0.5, abs=1e-12)


def test_image_vector_mixed_tie():
    # The tie at 0.7 holds one defective and one good image: one threshold, half a pair in AUROC.
    metrics = image_metrics([0.9, 0.7, 0.7, 0.3, 0.1], [1, 0, 1, 0, 1])
    assert metrics["image_auroc"] == pytest.approx(7 / 12, abs=1e-12)
    assert metrics["image_ap"] == pytest.approx(34 / 45, abs=1e-12)
    assert metrics["image_f1max"] == pytest.approx(0.75, abs=1e-12)


def test_pixel_vector_one_row():
    # Region A = pixels 0-1, region B = pixel 12; A's second pixel ties with a normal one at 0.4.
    maps = np.array([0.9, 0.4, 0.8, 0.7, 0.4, 0.3, 0.2, 0.2, 0.2, 0.1, 0.1, 0.1, 0.6]).reshape(1, 1, 13)
    masks = np.zeros(maps.shape, dtype=bool)
    masks[0, 0, [0, 1, 12]] = True
    metrics = pixel_metrics(maps, masks)
    assert metrics["pixel_auroc"] == pytest.approx(0.85, abs=1e-12)
    assert metrics["pixel_ap"] == pytest.approx(2 / 3, abs=1e-12)
    assert metrics["pixel_f1max"] == pytest.approx(2 / 3, abs=1e-12)
    assert metrics["aupro"] == pytest.approx(11 / 24, abs=1e-12)
    assert aupro(maps, masks, fpr_limit=0.25) == pytest.approx(0.3625, abs=1e-12)  # PRO interpolated at 0.25
    fpr, pro = pro_curve(maps, masks)
    np.testing.assert_allclose(fpr[:6], [0.0, 0.0, 0.1, 0.2, 0.2, 0.3], atol=1e-12)
    np.testing.assert_allclose(pro[:6], [0.0, 0.25, 0.25, 0.25, 0.75, 1.0], atol=1e-12)


def test_aupro_vector_column_region():
    maps = (np.arange(2800) / 2800).reshape(1, 400, 7)
    masks = np.zeros(maps.shape, dtype=bool)
    masks[0, :, 3] = True
    # Exact staircase area: 53333 / 960000 / (1/3); metrics.md rounds it to 1/6.
    value = aupro(maps, masks, fpr_limit=1 / 3)
    assert value == pytest.approx(53333 * 3 / 960000, abs=1e-12)
    assert value == pytest.approx(1 / 6, abs=1e-5)


def test_aupro_vector_tied_region_and_curve():
    maps = np.zeros((2, 10, 10))
    masks = np.zeros((2, 10, 10), dtype=bool)
    masks[0, 4:6, 4:6] = True  # 2x2 region scored 0, tied with all background
    masks[1, 1:9, 1:9] = True  # 8x8 region scored 1
    maps[1, 1:9, 1:9] = 1.0
    assert aupro(maps, masks) == pytest.approx(0.575, abs=1e-12)
    fpr, pro = pro_curve(maps, masks)
    np.testing.assert_allclose(fpr, [0.0, 0.0, 1.0], atol=1e-12)
    np.testing.assert_allclose(pro, [0.0, 0.5, 1.0], atol=1e-12)


def test_perfect_separation():
    maps, masks = random_pixels(0)
    perfect = masks.astype(np.float32)
    assert aupro(perfect, masks) == pytest.approx(1.0, abs=1e-12)
    assert all(v == pytest.approx(1.0, abs=1e-12) for v in pixel_metrics(perfect, masks).values())
    labels = np.array([0, 1, 1, 0])
    assert all(v == pytest.approx(1.0, abs=1e-12) for v in image_metrics(labels * 2.0, labels).values())


def test_regions_are_eight_connected():
    # A 2x2 block touching a 3x3 block only at a corner: one region of 13 pixels, not two.
    maps = np.zeros((1, 6, 6), dtype=np.float32)
    masks = np.zeros((1, 6, 6), dtype=bool)
    masks[0, 0:2, 0:2] = True
    masks[0, 2:5, 2:5] = True
    maps[0, 0:2, 0:2] = 1.0
    pro_first = 4 / 13  # (two regions would give 0.5)
    assert aupro(maps, masks) == pytest.approx(pro_first + 0.15 * (1 - pro_first), abs=1e-12)


def test_signed_zero_ties_and_negative_scores():
    assert image_metrics([-0.0, 0.0], [0, 1])["image_auroc"] == 0.5
    scores = np.array([-np.inf, -2.0, -1.0, -0.5, 0.0, 3.0, np.inf], dtype=np.float32)
    assert image_metrics(scores, [0, 0, 0, 1, 0, 1, 1])["image_auroc"] == pytest.approx(11 / 12, abs=1e-12)


def test_fpr_limit_one_is_the_whole_area():
    maps = np.zeros((2, 10, 10))
    masks = np.zeros((2, 10, 10), dtype=bool)
    masks[0, 4:6, 4:6] = True
    masks[1, 1:9, 1:9] = True
    maps[1, 1:9, 1:9] = 1.0
    assert aupro(maps, masks, fpr_limit=1.0) == pytest.approx(0.75, abs=1e-12)


def test_mad_is_the_mean_of_the_seven():
    metrics = dict(zip(MAD_KEYS, [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7], strict=True))
    assert mad(metrics) == pytest.approx(0.4, abs=1e-12)
    assert mad({**metrics, "another_metric": 0.9}) == pytest.approx(0.4, abs=1e-12)  # only MAD_KEYS count
    assert math.isnan(mad({**metrics, "aupro": float("nan")}))
    with pytest.raises(AgpnetError, match="aupro"):
        mad({k: v for k, v in metrics.items() if k != "aupro"})


# Undefined cases: NaN and a warning naming the reason and the category.


def test_no_defective_images_gives_nan_and_warning():
    with pytest.warns(MetricWarning, match=r"no defective images.*'screw'"):
        metrics = image_metrics([0.1, 0.2], [0, 0], category="screw")
    assert all(math.isnan(v) for v in metrics.values())


def test_no_good_images_gives_nan_auroc_only():
    with pytest.warns(MetricWarning, match="no good images"):
        metrics = image_metrics([0.1, 0.2], [1, 1])
    assert math.isnan(metrics["image_auroc"])
    assert metrics["image_ap"] == 1.0 and metrics["image_f1max"] == 1.0


def test_no_region_gives_nan_and_warning():
    maps = np.random.default_rng(0).random((2, 8, 8)).astype(np.float32)
    with pytest.warns(MetricWarning, match=r"no anomalous pixels.*'grid'"):
        metrics = pixel_metrics(maps, np.zeros(maps.shape, dtype=bool), category="grid")
    assert all(math.isnan(v) for v in metrics.values())
    with pytest.warns(MetricWarning, match="no anomalous pixels"):
        assert math.isnan(aupro(maps, np.zeros(maps.shape, dtype=bool)))
    fpr, pro = pro_curve(maps, np.zeros(maps.shape, dtype=bool))
    assert len(fpr) == len(pro) == 0


def test_all_pixels_anomalous_gives_nan_auroc_and_aupro():
    maps = np.random.default_rng(0).random((1, 4, 4)).astype(np.float32)
    with pytest.warns(MetricWarning, match="no normal pixels"):
        metrics = pixel_metrics(maps, np.ones(maps.shape, dtype=bool))
    assert math.isnan(metrics["pixel_auroc"]) and math.isnan(metrics["aupro"])
    assert metrics["pixel_ap"] == 1.0


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: image_metrics([0.1, float("nan")], [0, 1]), "NaN"),
        (lambda: image_metrics([0.1, 0.2], [0, 2]), "labels"),
        (lambda: image_metrics([0.1, 0.2, 0.3], [0, 1]), "scores has 3"),
        (lambda: image_metrics([], []), "no images"),
        (lambda: pixel_metrics(np.full((1, 2, 2), np.nan), np.ones((1, 2, 2), bool)), "NaN"),
        (lambda: pixel_metrics(np.zeros((1, 2, 2)), np.ones((1, 2, 3), bool)), "masks"),
        (lambda: pixel_metrics(np.zeros((2, 2)), np.ones((2, 2), bool)), r"\(N, H, W\)"),
        (lambda: pixel_metrics(np.zeros((1, 2, 2), int), np.ones((1, 2, 2), bool)), "floating"),
        (lambda: aupro(np.zeros((1, 2, 2)), np.eye(2, dtype=bool)[None], fpr_limit=0), "fpr_limit"),
    ],
)
def test_bad_input_raises_one_line_error(call, message):
    with pytest.raises(AgpnetError, match=message) as error:
        call()
    assert "\n" not in str(error.value)


# Backends, sort paths and chunking agree.


def test_numpy_and_torch_backends_agree():
    maps, masks = random_pixels(1)
    ours, ours_curve = pixel_metrics(maps, masks), pro_curve(maps, masks)
    on_torch, torch_curve = torch_backend(maps, masks)
    for key, value in ours.items():
        assert on_torch[key] == pytest.approx(value, abs=1e-9), key
    for from_torch, from_numpy in zip(torch_curve, ours_curve, strict=True):
        np.testing.assert_allclose(from_torch, from_numpy, atol=1e-12)
    public_with_tensors = pixel_metrics(torch.from_numpy(maps), torch.from_numpy(masks))
    assert public_with_tensors == ours


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_float64_argsort_path_equals_packed_path(backend):
    maps, masks = random_pixels(2)
    packed = pixel_metrics(maps, masks)  # float32: packed int64 keys
    shifted = maps.astype(np.float64) + 1e-12 * (maps >= 1)  # keeps ties and order; not float32-exact
    assert not ranking.fits_float32(shifted)
    argsorted = pixel_metrics(shifted, masks) if backend == "numpy" else torch_backend(shifted, masks)[0]
    for key, value in packed.items():
        assert argsorted[key] == pytest.approx(value, abs=1e-9), key


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_small_chunks_and_steps_give_the_same_values(monkeypatch, backend):
    maps, masks = random_pixels(3, n=5, levels=3)  # long tie blocks cross chunk boundaries
    expected, expected_curve = pixel_metrics(maps, masks, fpr_limit=0.2), pro_curve(maps, masks)
    monkeypatch.setattr(ranking, "CHUNK_HOST", 7)
    monkeypatch.setattr(functional, "_PIXELS_PER_STEP", 300)  # 2 images per step
    if backend == "numpy":
        chunked, chunked_curve = pixel_metrics(maps, masks, fpr_limit=0.2), pro_curve(maps, masks)
    else:
        chunked, chunked_curve = torch_backend(maps, masks, fpr_limit=0.2)
    for key, value in expected.items():
        assert chunked[key] == pytest.approx(value, abs=1e-12), key
    for ours, reference in zip(chunked_curve, expected_curve, strict=True):
        np.testing.assert_allclose(ours, reference, atol=1e-12)


def test_float16_maps_and_masks_as_numbers():
    maps, masks = random_pixels(4)
    expected = pixel_metrics(maps.astype(np.float16).astype(np.float32), masks)
    ours = pixel_metrics(torch.from_numpy(maps).half(), torch.from_numpy(masks.astype(np.uint8)))
    for key, value in expected.items():
        assert ours[key] == pytest.approx(value, abs=1e-12), key


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_agrees_with_cpu():
    maps, masks = random_pixels(5, n=4, size=32)
    cpu = pixel_metrics(maps, masks)
    cuda = pixel_metrics(torch.from_numpy(maps).cuda(), torch.from_numpy(masks).cuda())
    for key, value in cpu.items():
        assert cuda[key] == pytest.approx(value, abs=1e-9), key
    shifted = torch.from_numpy(maps).double().cuda() + 1e-12 * (torch.from_numpy(maps).cuda() >= 1)
    argsorted = pixel_metrics(shifted, torch.from_numpy(masks).cuda())
    for key, value in cpu.items():
        assert argsorted[key] == pytest.approx(value, abs=1e-9), key
    scores, labels = torch.tensor([0.1, 0.4, 0.35, 0.8]).cuda(), torch.tensor([0, 0, 1, 1]).cuda()
    assert image_metrics(scores, labels)["image_ap"] == pytest.approx(5 / 6, abs=1e-12)
