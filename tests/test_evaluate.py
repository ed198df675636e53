"""Evaluation at the input resolution (default) and at each image's original resolution."""

import pytest
import torch
import torch.nn.functional as F

from agpnet.data import AnomalyDataset, load_mask, load_split
from agpnet.evaluate import evaluate
from agpnet.metrics import image_metrics, pixel_metrics
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
