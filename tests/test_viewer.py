"""The run viewer's callbacks and outputs (driven without a browser), and the figure functions."""

import html

import numpy as np
import pandas as pd
import pytest
from fixtures_runs import write_maps, write_run
from matplotlib.figure import Figure

from agpnet import plots
from agpnet.errors import AgpnetError
from agpnet.viewer import RunViewer, heatmap_examples, pixel_f1

PNG = b"\x89PNG\r\n\x1a\n"
CATEGORIES = ("bottle", "<b>cable</b>")


@pytest.fixture
def run_dir(tmp_path):
    run = tmp_path / "run"
    write_run(run, categories=CATEGORIES)
    write_maps(run, categories=CATEGORIES, per_category=4)
    return run


def test_viewer_callbacks_update_outputs(run_dir):
    viewer = RunViewer(run_dir)
    maps = viewer.run.maps
    assert len(viewer.indices) == 8 and viewer.current == viewer.indices[0]
    assert bytes(viewer.picture.value).startswith(PNG) and bytes(viewer.attention.value).startswith(PNG)

    # Category: the defect menu and the image list follow; the text is escaped.
    viewer.category.value = "<b>cable</b>"
    assert all(maps["categories"][i] == "<b>cable</b>" for i in viewer.indices) and len(viewer.indices) == 4
    assert list(viewer.defect.options) == ["all", "good", "scratch"]
    assert html.escape("<b>cable</b>") in viewer.info.value and "<b>cable</b>" not in viewer.info.value
    viewer.defect.value = "scratch"
    assert [str(maps["defects"][i]) for i in viewer.indices] == ["scratch", "scratch"]

    # Picking an image redraws it.
    before = bytes(viewer.picture.value)
    viewer.image.value = viewer.indices[1]
    assert viewer.current == viewer.indices[1] and bytes(viewer.picture.value) != before

    # Threshold: the pixel F1 of this image at the threshold (defect square scores >= 0.6).
    current = viewer.current
    viewer.threshold.value = 0.5
    assert viewer.f1 == pytest.approx(1.0)
    assert viewer.f1 == pixel_f1(maps["anomaly_maps"][current], maps["masks"][current], 0.5)
    viewer.threshold.value = 0.1  # most background pixels are above: low precision
    assert 0 < viewer.f1 < 0.5
    assert f"{viewer.f1:.3f}" in viewer.info.value


def test_viewer_orders_find_worst_false_positives_and_negatives(run_dir):
    viewer = RunViewer(run_dir)
    maps = viewer.run.maps
    scores, labels = maps["scores"].astype(float), maps["labels"]
    viewer.order.value = "false_positives"
    assert all(labels[i] == 0 for i in viewer.indices) and len(viewer.indices) == 4
    assert list(scores[viewer.indices]) == sorted(scores[labels == 0], reverse=True)
    assert viewer.current == viewer.indices[0]  # the worst false positive is shown first
    viewer.order.value = "false_negatives"
    assert all(labels[i] == 1 for i in viewer.indices)
    assert list(scores[viewer.indices]) == sorted(scores[labels == 1])
    worst = viewer.worst_false_negatives(2)
    assert [s for _, s in worst] == pytest.approx(sorted(scores[labels == 1])[:2])
    assert viewer.worst_false_positives(1)[0][1] == pytest.approx(scores[labels == 0].max())


def test_good_image_f1_is_undefined_without_predictions(run_dir):
    viewer = RunViewer(run_dir, threshold=10.0)
    viewer.order.value = "false_positives"
    assert np.isnan(viewer.f1) and "n/a" in viewer.info.value


def test_viewer_needs_maps(tmp_path):
    write_run(tmp_path / "run")
    with pytest.raises(AgpnetError, match="maps.npz"):
        RunViewer(tmp_path / "run")


def test_heatmap_examples_and_figures(run_dir):
    assert isinstance(heatmap_examples(run_dir, n_defective=2, n_good=1), Figure)
    rng = np.random.default_rng(0)
    image, amap = rng.uniform(size=(32, 32, 3)), rng.uniform(size=(32, 32))
    mask = np.zeros((32, 32), bool)
    mask[4:9, 4:9] = True
    attention = rng.uniform(size=(4, 4))
    stage = {
        "progress": 0.5,
        "alpha": 10.0,
        "ratio": 0.25,
        "a_prior": attention,
        "a_learn": attention,
        "a_final": attention,
        "image_perturbed": image,
        "feature_noise_std": attention,
    }
    long = pd.DataFrame(
        {
            "noise": ["none", "none", "attention", "attention"] * 2,
            "seed": [0, 1, 0, 1] * 2,
            "run_dir": list("abcd") * 2,
            "metric": ["I-AUROC"] * 4 + ["mAD"] * 4,
            "value": [80.0, 82, 90, 91, 70, 71, 75, 77],
        }
    )
    figures = {
        "loss": plots.loss_curve([1.0, 0.6, 0.4]),
        "overlay": plots.heatmap_overlay(image, amap, mask, threshold=0.5),
        "attention": plots.attention_panels(
            image, attention, attention, attention, image, attention, amap, mask
        ),
        "stages": plots.perturbation_stages(image, [dict(stage, progress=0.0), stage], amap, mask),
        "ablation": plots.ablation_plot(long, "noise"),
    }
    assert len(figures["attention"].axes) >= 8 and len(figures["ablation"].axes) == 2
    for figure in figures.values():
        png = plots.to_png(figure)
        assert png.startswith(PNG) and len(png) > 2000
