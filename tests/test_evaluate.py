"""Evaluation at the input resolution (default) and at each image's original resolution; memory
held per category."""

from collections import Counter

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader

import agpnet.evaluate
from agpnet.data import AnomalyDataset, load_mask, load_split
from agpnet.evaluate import evaluate
from agpnet.metrics import MetricAccumulator, image_metrics, pixel_metrics
from agpnet.model import AGPNetConfig, build_model


def _model(fields: dict, image_size: int):
    with pytest.warns(UserWarning, match="RANDOM"):
        model, _ = build_model(AGPNetConfig(**{**fields, "image_size": image_size}), weights="random")
    return model.eval()


def _test_set(root, model, category="wood"):
    split = load_split("mvtec", root, "one-class", category=category)
    return AnomalyDataset(split.test, image_size=model.cfg.image_size, mean=model.mean, std=model.std)


def test_original_resolution_equals_input_resolution_when_sizes_match(synth_root, tiny_model_fields):
    model = _model(tiny_model_fields, image_size=64)  # the synthetic images are 64 px
    test_set = _test_set(synth_root, model)
    at_input = evaluate(model, test_set, torch.device("cpu"), batch_size=4)
    at_original = evaluate(model, test_set, torch.device("cpu"), batch_size=4, resolution="original")
    assert at_input.resolution.startswith("input resolution 64x64")
    assert at_original.resolution.startswith("original image resolution")
    assert at_original.metrics.keys() == at_input.metrics.keys()
    for category, values in at_input.metrics.items():
        assert at_original.metrics[category] == pytest.approx(values, nan_ok=True), category


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_original_resolution_upsamples_maps_to_the_original_masks(synth_root, tiny_model_fields, precision):
    model = _model(tiny_model_fields, image_size=32)  # maps 32 px, images and masks 64 px
    test_set = _test_set(synth_root, model)
    result = evaluate(model, test_set, torch.device("cpu"), batch_size=4, resolution="original", precision=precision)
    assert result.precision == precision

    images = torch.stack([test_set[i]["image"] for i in range(len(test_set))])
    with torch.no_grad():
        out = model.predict(images)
    maps = F.interpolate(out["anomaly_map"][:, None], size=(64, 64), mode="bilinear", align_corners=False)[:, 0]
    masks = torch.stack([torch.from_numpy(load_mask(s.mask) > 0) if s.mask else torch.zeros(64, 64, dtype=bool)
                         for s in test_set.samples])
    labels = torch.tensor([s.label for s in test_set.samples])
    # fp32: the metrics of the float32 maps, exactly; bf16: the accumulator keeps float16 maps
    kept = maps if precision == "fp32" else maps.half().float()
    expected = {**image_metrics(out["score"], labels), **pixel_metrics(kept, masks)}
    for key, value in expected.items():
        assert result.metrics["wood"][key] == pytest.approx(value, abs=1e-9), key


def test_original_resolution_with_images_of_different_sizes(tmp_path, tiny_model_fields):
    """Phone photos and folder datasets mix sizes: pixel metrics over all original pixels as one
    set, AUPRO over each image's regions (references: sklearn and AUPRO from its definition)."""
    from fixtures_data import make_mvtec, write_image, write_mask
    from test_metrics_properties import reference_aupro, sklearn_metrics

    root = make_mvtec(tmp_path / "mixed", categories=("bottle",), n_train=1)
    test = root / "bottle" / "test"
    write_image(test / "crack" / "001.png", size=(48, 24), seed=5)  # (width, height)
    write_mask(root / "bottle" / "ground_truth" / "crack" / "001_mask.png", size=(48, 24), box=(4, 4, 30, 12))
    write_image(test / "good" / "001.png", size=(20, 40), seed=6)
    model = _model(tiny_model_fields, image_size=32)
    test_set = _test_set(root, model, category="bottle")
    result = evaluate(model, test_set, torch.device("cpu"), batch_size=4, resolution="original")

    maps, masks = [], []
    with torch.no_grad():
        out = model.predict(torch.stack([test_set[i]["image"] for i in range(len(test_set))]))
    for sample, anomaly_map in zip(test_set.samples, out["anomaly_map"], strict=True):
        width, height = Image.open(sample.image).size
        upsampled = F.interpolate(anomaly_map[None, None], size=(height, width), mode="bilinear", align_corners=False)
        maps.append(upsampled[0, 0].numpy())  # eval_precision fp32: the accumulator keeps float32
        masks.append(load_mask(sample.mask) > 0 if sample.mask else np.zeros((height, width), dtype=bool))
    assert len({m.shape for m in maps}) == 3
    auroc, ap, f1 = sklearn_metrics(np.concatenate([m.ravel() for m in maps]), np.concatenate([m.ravel() for m in masks]))
    metrics = result.metrics["bottle"]
    assert metrics["pixel_auroc"] == pytest.approx(auroc, abs=1e-9)
    assert metrics["pixel_ap"] == pytest.approx(ap, abs=1e-9)
    assert metrics["pixel_f1max"] == pytest.approx(f1, abs=1e-9)
    assert metrics["aupro"] == pytest.approx(reference_aupro(maps, masks, 0.3), abs=1e-9)


@pytest.mark.parametrize("order", ["by category", "interleaved"])
def test_each_category_is_freed_once_its_images_are_in(synth_root, tiny_model_fields, monkeypatch, order):
    """The readers give each category's test images together: evaluate then holds one category's
    maps at a time. Another order holds them longer; the metrics are those of keeping every map."""
    model = _model(tiny_model_fields, image_size=64)
    samples = load_split("mvtec", synth_root, "multi-class").test
    if order == "interleaved":
        samples = sorted(samples, key=lambda s: (str(s.image.name), s.category))
    test_set = AnomalyDataset(samples, image_size=64, mean=model.mean, std=model.std)
    counts = Counter(s.category for s in samples)
    held = []

    class Recording(MetricAccumulator):
        def add(self, *args):
            super().add(*args)
            held.append(self.stored_bytes)

    monkeypatch.setattr(agpnet.evaluate, "MetricAccumulator", Recording)
    result = evaluate(model, test_set, torch.device("cpu"), batch_size=3)

    kept = MetricAccumulator(map_dtype=torch.float32)  # every map until compute(), in the same batches
    with torch.no_grad():
        for batch in DataLoader(test_set, batch_size=3):
            out = model.predict(batch["image"])
            kept.add(batch["category"], out["score"], batch["label"], out["anomaly_map"], batch["mask"])
    expected = kept.compute()
    assert list(result.metrics) == list(expected) == [*dict.fromkeys(s.category for s in samples), "mean"]
    np.testing.assert_equal(result.metrics, expected)  # exactly equal, NaN equal to NaN
    per_image = 64 * 64 * 4 + 64 * 64 // 8 + 16  # float32 map, packed mask, score and label
    if order == "by category":
        assert len(counts) == 3 and max(held) == max(counts.values()) * per_image
    else:
        assert max(held) > max(counts.values()) * per_image


@pytest.mark.parametrize(("precision", "tf32_inside"), [("fp32", False), ("bf16", True)])
def test_fp32_evaluation_turns_tf32_off_while_it_runs(synth_root, tiny_model_fields, monkeypatch, precision,
                                                      tf32_inside):
    """cuDNN runs fp32 convolutions in TF32 (10-bit mantissa) by default, so "fp32" evaluation on
    CUDA was not fp32 (found in review): the model now runs with TF32 off, and the flags are
    restored afterwards (tests/test_cuda.py compares the CUDA numbers with the CPU's)."""
    model = _model(tiny_model_fields, image_size=64)
    seen = []
    predict = model.predict
    monkeypatch.setattr(model, "predict", lambda images: seen.append(
        (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)) or predict(images))
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)
    evaluate(model, _test_set(synth_root, model), torch.device("cpu"), batch_size=8, precision=precision)
    assert seen and all(cudnn == tf32_inside and not matmul for cudnn, matmul in seen)
    assert torch.backends.cudnn.allow_tf32 is True
