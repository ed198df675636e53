"""agpnet.metrics.MetricAccumulator: batches in, per-category metrics equal to direct calls."""

import math
import warnings

import numpy as np
import pytest
import torch
from test_metrics_properties import reference_aupro, sklearn_metrics

from agpnet.errors import AgpnetError
from agpnet.metrics import METRICS, MetricAccumulator, MetricWarning, image_metrics, mad, pixel_metrics


def make_dataset(seed: int = 0, n: int = 14, size: int = 16):
    """Two interleaved categories; maps float32 with values that float16 rounds."""
    rng = np.random.default_rng(seed)
    categories = np.array(["bottle", "cable"])[rng.integers(0, 2, n)]
    categories[:4] = ["bottle", "cable", "bottle", "cable"]
    labels = np.zeros(n, dtype=np.int64)
    labels[:4] = [0, 0, 1, 1]
    labels[4:] = rng.integers(0, 2, n - 4)
    masks = np.zeros((n, size, size), dtype=bool)
    for i in np.flatnonzero(labels):
        masks[i] |= rng.random((size, size)) < 0.15
        masks[i, 2:5, 3:7] = True
    maps = (rng.random((n, size, size)) + 0.5 * masks).astype(np.float32)
    scores = maps.reshape(n, -1).max(axis=1).astype(np.float64) + rng.normal(0, 0.3, n)
    return categories, scores, labels, maps, masks


def add_in_batches(accumulator, data, batch: int, backend=np.asarray):
    categories, scores, labels, maps, masks = data
    for start in range(0, len(scores), batch):
        rows = slice(start, start + batch)
        accumulator.add(
            list(categories[rows]),
            backend(scores[rows]),
            backend(labels[rows]),
            backend(maps[rows]),
            backend(masks[rows]),
        )


def assert_same(ours: dict, expected: dict) -> None:
    """Equal up to float64 summation order (numpy and torch cumulate in different orders)."""
    assert list(ours) == list(expected)
    for key, value in expected.items():
        assert ours[key] == pytest.approx(value, abs=1e-12, nan_ok=True), key


def direct(data, category: str, map_dtype=np.float16) -> dict:
    categories, scores, labels, maps, masks = data
    rows = categories == category
    stored = maps[rows].astype(map_dtype).astype(np.float32)  # what the accumulator keeps
    metrics = {**image_metrics(scores[rows], labels[rows]), **pixel_metrics(stored, masks[rows])}
    return {**metrics, "mad": mad(metrics)}


@pytest.mark.parametrize("backend", [np.asarray, torch.from_numpy])
def test_matches_direct_calls_per_category(backend):
    data = make_dataset()
    accumulator = MetricAccumulator()
    add_in_batches(accumulator, data, batch=4, backend=backend)
    results = accumulator.compute()
    assert list(results) == ["bottle", "cable", "mean"]
    for category in ("bottle", "cable"):
        assert_same(results[category], direct(data, category))  # over the float16-rounded maps
    for key in METRICS:
        expected = (results["bottle"][key] + results["cable"][key]) / 2
        assert results["mean"][key] == pytest.approx(expected, abs=1e-12)
    assert results["mean"]["mad"] == pytest.approx(mad(results["mean"]), abs=1e-12)


def test_float16_storage_differs_from_float32_and_float32_option_keeps_it():
    data = make_dataset(1)
    half, full = MetricAccumulator(), MetricAccumulator(map_dtype=torch.float32)
    add_in_batches(half, data, batch=5)
    add_in_batches(full, data, batch=5)
    kept = full.compute()["cable"]
    assert_same(kept, direct(data, "cable", map_dtype=np.float32))
    assert half.compute()["cable"]["pixel_auroc"] != kept["pixel_auroc"]


def test_batch_size_does_not_matter_and_mixed_backends():
    data = make_dataset(2)
    one_by_one, mixed = MetricAccumulator(), MetricAccumulator()
    add_in_batches(one_by_one, data, batch=1)
    categories, scores, labels, maps, masks = data
    mixed.add(list(categories[:7]), scores[:7], labels[:7], maps[:7], masks[:7])
    mixed.add(
        list(categories[7:]), *(torch.from_numpy(x) for x in (scores[7:], labels[7:], maps[7:], masks[7:]))
    )
    whole = one_by_one.compute()
    for category, metrics in mixed.compute().items():
        assert_same(metrics, whole[category])
    assert_same(whole["bottle"], direct(data, "bottle"))


def test_category_without_defects_is_nan_and_left_out_of_the_mean():
    data = make_dataset(3)
    categories, scores, labels, maps, masks = data
    accumulator = MetricAccumulator()
    add_in_batches(accumulator, data, batch=6)
    good = np.zeros(2, dtype=np.int64)
    accumulator.add("carpet", scores[:2], good, maps[:2], np.zeros_like(masks[:2]))
    with pytest.warns(MetricWarning) as caught:
        results = accumulator.compute()
    messages = " | ".join(str(w.message) for w in caught)
    assert "'carpet'" in messages and "no defective images" in messages
    assert "mean image_auroc leaves out categories where it is NaN: carpet" in messages
    assert all(math.isnan(v) for v in results["carpet"].values())
    expected = (results["bottle"]["aupro"] + results["cable"]["aupro"]) / 2
    assert results["mean"]["aupro"] == pytest.approx(expected, abs=1e-12)


def test_bad_input_raises():
    accumulator = MetricAccumulator()
    with pytest.raises(AgpnetError, match="no batches"):
        accumulator.compute()
    with pytest.raises(AgpnetError, match="batch sizes differ"):
        accumulator.add(["a", "a"], [0.1], [0], np.zeros((1, 4, 4)), np.zeros((1, 4, 4), bool))
    with pytest.raises(AgpnetError, match="shape"):
        accumulator.add(["a"], [0.1], [0], np.zeros((1, 4, 4)), np.zeros((1, 4, 5), bool))
    accumulator.add(["a"], [0.1], [0], np.zeros((1, 4, 4)), np.zeros((1, 4, 4), bool))
    with pytest.raises(AgpnetError, match="labels"):
        accumulator.add(["b", "a"], [0.1, 0.2], [0, 2], np.zeros((2, 8, 8)), np.zeros((2, 8, 8), bool))
    with pytest.warns(MetricWarning):  # "a" has neither defective images nor regions
        assert list(accumulator.compute()) == ["a", "mean"]  # the bad batch left no trace
    with pytest.raises(AgpnetError, match="reserved"):
        accumulator.add("mean", [0.1], [0], np.zeros((1, 4, 4)), np.zeros((1, 4, 4), bool))
    with pytest.raises(AgpnetError, match="map_dtype"):
        MetricAccumulator(map_dtype=torch.int8)


@pytest.mark.parametrize("backend", [np.asarray, torch.from_numpy])
def test_maps_of_different_sizes_in_one_category(backend):
    """Images of their original sizes: pixel metrics over all their pixels as one set, AUPRO
    over the regions of each image (references: sklearn, and AUPRO from its definition)."""
    rng = np.random.default_rng(7)
    sizes = [(12, 9), (7, 15), (12, 9), (5, 5), (16, 11)]  # (H, W)
    masks = [rng.random(size) < 0.2 for size in sizes]
    masks[-1][:] = False  # a good image
    maps = [(rng.integers(0, 6, mask.shape) + 2 * mask).astype(np.float32) / 8 for mask in masks]  # float16-exact
    labels = np.array([int(mask.any()) for mask in masks])
    scores = np.array([m.max() for m in maps], dtype=np.float64)
    accumulator = MetricAccumulator()
    for rows in ([0, 2], [1], [3], [4]):  # images 0 and 2 share a size: one batch
        accumulator.add("part", backend(scores[rows]), backend(labels[rows]), backend(np.stack([maps[i] for i in rows])),
                        backend(np.stack([masks[i] for i in rows])))
    ours = accumulator.compute(fpr_limit=0.3)["part"]

    pixels = np.concatenate([m.ravel() for m in maps])
    truth = np.concatenate([m.ravel() for m in masks])
    auroc, ap, f1 = sklearn_metrics(pixels, truth)
    assert ours["pixel_auroc"] == pytest.approx(auroc, abs=1e-9)
    assert ours["pixel_ap"] == pytest.approx(ap, abs=1e-9)
    assert ours["pixel_f1max"] == pytest.approx(f1, abs=1e-9)
    assert ours["aupro"] == pytest.approx(reference_aupro(maps, masks, 0.3), abs=1e-9)
    assert ours["image_auroc"] == pytest.approx(image_metrics(scores, labels)["image_auroc"], abs=1e-12)


def category_batches(seed: int = 11) -> list[tuple]:
    """(category, scores, labels, maps, masks) batches, each category's together, maps of mixed
    sizes (also within a category); "empty" has no defective images (NaN metrics and warnings)."""
    rng = np.random.default_rng(seed)
    plan = {"bottle": [(16, 16), (16, 16), (9, 13)], "cable": [(12, 12), (12, 12)], "empty": [(8, 8)],
            "wood": [(10, 7), (15, 15)]}
    batches = []
    for name, sizes in plan.items():
        for height, width in sizes:
            labels = np.array([0, 0, 0] if name == "empty" else [1, 0, rng.integers(0, 2)], dtype=np.int64)
            masks = (rng.random((3, height, width)) < 0.2) & labels.astype(bool)[:, None, None]
            maps = (rng.random((3, height, width)) + 0.5 * masks).astype(np.float32)
            scores = maps.reshape(3, -1).max(axis=1).astype(np.float64) + rng.normal(0, 0.2, 3)
            batches.append((name, scores, labels, maps, masks))
    return batches


@pytest.mark.parametrize("backend", [np.asarray, torch.from_numpy])
def test_finishing_categories_early_gives_the_same_results_and_warnings(backend):
    batches = category_batches()
    at_end, early = MetricAccumulator(), MetricAccumulator()
    with warnings.catch_warnings(record=True) as warned_at_end:
        warnings.simplefilter("always")
        for name, *arrays in batches:
            at_end.add(name, *(backend(x) for x in arrays))
        expected = at_end.compute(fpr_limit=0.2)
    with warnings.catch_warnings(record=True) as warned_early:
        warnings.simplefilter("always")
        for i, (name, *arrays) in enumerate(batches):
            early.add(name, *(backend(x) for x in arrays))
            if name != "wood" and batches[i + 1][0] != name:  # "wood" is left to compute()
                early.finish(name, fpr_limit=0.2)
        ours = early.compute(fpr_limit=0.2)
    assert list(ours) == list(expected) == ["bottle", "cable", "empty", "wood", "mean"]
    np.testing.assert_equal(ours, expected)  # exactly equal, NaN equal to NaN
    assert all(math.isnan(v) for v in ours["empty"].values())
    assert [str(w.message) for w in warned_early] == [str(w.message) for w in warned_at_end]
    assert any("'empty'" in str(w.message) for w in warned_early)


@pytest.mark.parametrize("backend", [np.asarray, torch.from_numpy])
def test_a_finished_category_holds_no_maps(backend):
    n, height, width = 3, 10, 12
    masks = np.zeros((n, height, width), dtype=bool)
    masks[1:, 2:5, 2:6] = True
    labels = np.array([0, 1, 1])
    maps = np.random.default_rng(0).random((n, height, width)).astype(np.float32) + masks
    scores = maps.reshape(n, -1).max(axis=1)
    accumulator = MetricAccumulator(map_dtype=torch.float32)
    for name in ("a", "b"):
        accumulator.add(name, *(backend(x) for x in (scores, labels, maps, masks)))
    # float32 maps, masks packed to bits, float64 scores and int64 labels
    per_category = n * height * width * 4 + n * math.ceil(height * width / 8) + n * 16
    assert accumulator.stored_bytes == 2 * per_category
    accumulator.finish("a")
    assert accumulator.stored_bytes == per_category
    accumulator.finish("b")
    assert accumulator.stored_bytes == 0
    assert list(accumulator.compute()) == ["a", "b", "mean"]


def test_adding_to_a_finished_category_raises_and_leaves_no_trace():
    masks = np.zeros((2, 8, 8), dtype=bool)
    masks[1, 2:4, 2:5] = True
    maps, scores, labels = masks + 0.5 * np.eye(8, dtype=np.float32), [0.1, 0.9], [0, 1]
    accumulator = MetricAccumulator()
    accumulator.add("a", scores, labels, maps, masks)
    accumulator.finish("a")
    with pytest.raises(AgpnetError, match="category 'a' was already finished"):
        accumulator.add(["b", "a"], scores, labels, maps, masks)
    assert accumulator.stored_bytes == 0  # "b" was not added either
    with pytest.raises(AgpnetError, match="category 'a' was already finished"):
        accumulator.finish("a")
    with pytest.raises(AgpnetError, match="no batches of category 'b'"):
        accumulator.finish("b")
    with pytest.raises(AgpnetError, match="fpr_limit 0.2 differs from the 0.3 category 'a' was finished with"):
        accumulator.compute(fpr_limit=0.2)
    assert list(accumulator.compute()) == ["a", "mean"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_batches_match_cpu():
    data = make_dataset(5)
    on_cpu, on_cuda = MetricAccumulator(), MetricAccumulator()
    add_in_batches(on_cpu, data, batch=4)
    add_in_batches(on_cuda, data, batch=4, backend=lambda x: torch.from_numpy(x).cuda())
    cpu, cuda = on_cpu.compute(), on_cuda.compute()
    for category in cpu:
        for key, value in cpu[category].items():
            assert cuda[category][key] == pytest.approx(value, abs=1e-9), (category, key)
