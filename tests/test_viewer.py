"""The run viewer's callbacks and outputs (driven without a browser; tests/test_viewer_browser.py
drives it in JupyterLab), finding runs, and the figure functions."""

import html
import json
import os

import numpy as np
import pandas as pd
import pytest
from fixtures_runs import write_maps, write_run
from matplotlib.figure import Figure

from agpnet import plots, viewer
from agpnet.errors import AgpnetError
from agpnet.runfinder import find_runs, resolve_runs_dir
from agpnet.viewer import (
    PICTURE_PX,
    RERUN_HINT,
    RunViewer,
    ViewerApp,
    best_f1_threshold,
    heatmap_examples,
    load_run,
    pixel_f1,
    png_size,
    verdict,
)

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
        "viewer": plots.viewer_figure(image, amap, mask, 0.5, 0.0, 1.0, "anomaly map", [0.1, 0.9], [0, 1], 0.9,
                                      "scores", reference=(image, amap, "normal")),
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


def scaled_category(run_dir, category: str, factor: float) -> None:
    """Multiply one category's maps in maps.npz by `factor` (categories on different scales)."""
    with np.load(run_dir / "maps.npz") as npz:
        arrays = {k: npz[k] for k in npz.files}
    rows = arrays["categories"] == category
    arrays["anomaly_maps"][rows] *= np.float16(factor)
    arrays["scores"][rows] *= factor
    np.savez_compressed(run_dir / "maps.npz", **arrays)


def test_verdicts_and_prev_next(run_dir):
    assert [verdict(1, 0.7, 0.5), verdict(0, 0.7, 0.5), verdict(0, 0.2, 0.5), verdict(1, 0.2, 0.5)] == [
        "TP", "FP", "TN", "FN"]
    assert verdict(1, 0.5, 0.5) == "TP"  # score >= threshold predicts "defective"
    viewer = RunViewer(run_dir, threshold=0.5)
    labels = viewer.run.maps["labels"]
    first, second = viewer.indices[:2]
    assert sorted(labels[[first, second]]) == [0, 1]
    viewer.next.click()
    assert viewer.current == second
    viewer.previous.click()
    viewer.previous.click()  # stays at the start of the list
    assert viewer.current == first
    for i in (first, second):  # one good, one defective image
        viewer.image.value = i
        for threshold, good, defective in ((0.5, "TN", "TP"), (0.15, "FP", "TP"), (viewer.threshold.max, "TN", "FN")):
            viewer.threshold.value = threshold
            expected = defective if labels[i] else good
            assert f"<td class='agpnet-verdict'>{expected}, " in viewer.info.value


def test_best_f1_threshold_is_exact():
    rng = np.random.default_rng(1)
    masks = np.zeros((3, 12, 12), dtype=bool)
    masks[0, 2:6, 2:6] = masks[2, 5:9, 1:4] = True
    maps = (rng.uniform(-0.5, 0.5, masks.shape) + 0.4 * masks + 0.3 * rng.uniform(size=masks.shape)).astype(np.float16)
    maps[1, 0, :2] = (-0.0, 0.0)  # one value, two bit patterns
    brute = max(np.nan_to_num(pixel_f1(maps, masks, float(t))) for t in np.unique(maps.astype(np.float32)))
    threshold, f1 = best_f1_threshold(maps, masks)
    assert 0.5 < f1 < 1 and f1 == pytest.approx(brute)
    assert pixel_f1(maps, masks, threshold) == pytest.approx(f1)
    assert best_f1_threshold(maps.astype(np.float32), masks) == (threshold, f1)  # sorted, not counted
    threshold, f1 = best_f1_threshold(maps[1], masks[1])  # no defect pixel: nothing predicted
    assert np.isnan(f1) and not np.any(maps[1].astype(np.float32) >= threshold)


def test_presets_set_oracle_thresholds_computed_once(run_dir, monkeypatch):
    view = RunViewer(run_dir)
    maps = view.run.maps
    view.category.value = "bottle"
    view.order.value = "false_negatives"  # a defective image first
    view.preset("image")
    assert view.f1 == pytest.approx(1.0)  # the defect square scores above all background pixels
    assert "test-set oracle thresholds, for inspection only" in view.info.value
    calls = []
    real = viewer.best_f1_threshold
    monkeypatch.setattr(viewer, "best_f1_threshold", lambda *args: calls.append(1) or real(*args))
    view.presets["category"].click()
    view.image.value = view.indices[1]
    view.presets["category"].click()
    rows = maps["categories"] == "bottle"
    expected = real(maps["anomaly_maps"][rows], maps["masks"][rows])
    assert len(calls) == 1 and view.threshold.value == pytest.approx(expected[0])
    assert f"= {expected[1]:.3f}" in view.oracle_text and "the 4 images of bottle" in view.oracle_text
    view.presets["all"].click()
    assert len(calls) == 2 and "over all 8 images" in view.oracle_text
    view.threshold.value = view.threshold.value * 0.5 + view.threshold.min * 0.5  # the user moves it
    assert view.oracle_text == "" and "best pixel F1" not in view.info.value


def test_colour_scale_per_category_or_global(run_dir):
    scaled_category(run_dir, "<b>cable</b>", 5.0)
    view = RunViewer(run_dir)
    maps = view.run.maps
    view.category.value = "bottle"
    bottle = maps["anomaly_maps"][maps["categories"] == "bottle"]
    assert view.scale_range == (float(bottle.min()), float(bottle.max()))  # not flattened by cable's scale
    before = bytes(view.picture.value)
    view.scale.value = "global"
    assert view.scale_range == (view.vmin, view.vmax) and view.vmax > 4 * float(bottle.max())
    assert bytes(view.picture.value) != before


def test_whole_image_above_threshold_is_outlined(run_dir):
    fig = Figure()
    ax = fig.subplots()
    amap = np.random.default_rng(0).uniform(0.2, 1.0, (16, 16))
    plots.draw_overlay(ax, np.zeros((16, 16, 3)), amap, threshold=0.1)  # every pixel predicted
    (outline,) = [c for c in ax.collections if c.get_gid() == "predicted"]
    corners = np.concatenate([path.vertices for path in outline.get_paths()])
    assert corners.min() == pytest.approx(-0.5) and corners.max() == pytest.approx(15.5)  # along the border
    view = RunViewer(run_dir, threshold=float(np.float32(RunViewer(run_dir).vmin)))
    assert "1024, the whole image" in view.info.value


def test_pictures_are_drawn_at_their_displayed_size(run_dir):
    view = RunViewer(run_dir)
    assert png_size(bytes(view.picture.value)) == PICTURE_PX
    assert view.picture.layout.width == f"{PICTURE_PX[0]}px"  # shown pixel for pixel, not stretched
    assert view.attention.layout.width == f"{png_size(bytes(view.attention.value))[0]}px"


def test_reference_is_a_normal_image_of_the_same_category(run_dir):
    view = RunViewer(run_dir)
    maps = view.run.maps
    for i in view.indices:
        reference = view.reference(i)
        assert reference != i and maps["labels"][reference] == 0
        assert maps["categories"][reference] == maps["categories"][i]


def test_save_png_export_csv_and_weights_warning(tmp_path):
    run = tmp_path / "random"
    write_run(run, pretrained=False)
    write_maps(run)
    view = RunViewer(run, threshold=0.5, out_dir=tmp_path / "out")
    assert "agpnet-weights-warning" in view.header.value and "no pretrained weights" in view.header.value
    view.save_png.click()
    (png,) = (tmp_path / "out").glob("*.png")
    assert png.read_bytes() == bytes(view.picture.value) and png.name in view.status.value
    view.export_csv.click()
    (csv,) = (tmp_path / "out").glob("*.csv")
    assert csv.read_text().startswith("# WARNING: The encoder had no pretrained weights")
    frame = pd.read_csv(csv, comment="#")
    maps = view.run.maps
    assert list(frame["verdict"]) == [verdict(int(lab), float(s), 0.5) for lab, s in zip(maps["labels"], maps["scores"])]
    assert set(frame["verdict"]) == {"TP", "TN"} and (frame["threshold"] == 0.5).all()
    assert frame["pixel_f1"][frame["label"] == 1].eq(1.0).all()

    (tmp_path / "a file").write_text("")
    blocked = RunViewer(run, out_dir=tmp_path / "a file")
    blocked.save_png.click()  # a button's failure is shown, not lost in the widget log
    assert "not written" in blocked.status.value and "a file" in blocked.status.value

    write_run(tmp_path / "pretrained")
    write_maps(tmp_path / "pretrained")
    view = RunViewer(tmp_path / "pretrained")
    assert "WARNING" not in view.header.value
    assert view.export().parent == tmp_path / "pretrained" / "viewer"  # the default out_dir
    assert not view.export().read_text().startswith("#")


def mvtec_run(run_dir, data_dir, factor: float = 1.0) -> None:
    """A run over bottle/test/{good,broken_large}/000.png (MVTec names files 000.png in every
    defect folder); its maps multiplied by `factor`."""
    write_run(run_dir, categories=("bottle",))
    arrays = write_maps(run_dir, categories=("bottle",), per_category=2)
    arrays["defects"] = np.where(arrays["labels"] == 1, "broken_large", "good")
    paths = []
    for old, defect in zip(arrays["paths"], arrays["defects"]):
        path = data_dir / "bottle" / "test" / str(defect) / "000.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        os.replace(old, path)
        paths.append(str(path))
    arrays["paths"] = np.asarray(paths)
    arrays["anomaly_maps"] *= np.float16(factor)
    arrays["scores"] *= factor
    np.savez_compressed(run_dir / "maps.npz", **arrays)


def test_saved_pictures_of_one_stem_in_two_defect_folders_are_two_files(tmp_path):
    mvtec_run(tmp_path / "run", tmp_path / "data")
    view = RunViewer(tmp_path / "run", threshold=0.5)
    pictures = {}
    for i in view.indices:
        view.image.value = i
        pictures[view.save()] = bytes(view.picture.value)
    assert len(pictures) == 2 and len(set(pictures.values())) == 2
    assert sorted(view.out_dir.glob("*.png")) == sorted(pictures)
    for path, png in pictures.items():
        assert path.read_bytes() == png
    assert {"good" in p.name for p in pictures} == {True, False}
    assert all("broken_large" in p.name for p in pictures if "good" not in p.name)


def test_exports_of_two_runs_into_one_out_dir_are_two_files_each_with_its_run(tmp_path):
    mvtec_run(tmp_path / "runs" / "a", tmp_path / "data")
    mvtec_run(tmp_path / "runs" / "b", tmp_path / "data", factor=0.5)
    app = ViewerApp(tmp_path / "runs", run="a", threshold=0.3, out_dir=tmp_path / "out")
    exported = {"a": app.viewer.export()}
    app.picker.value = app.found.pick("b")
    exported["b"] = app.viewer.export()
    assert sorted((tmp_path / "out").glob("*.csv")) == sorted(exported.values())
    for name, path in exported.items():
        assert f"_{name}_" in path.name
        frame = pd.read_csv(path)
        assert (frame["run"] == str(app.found.runs_dir / name)).all()
        assert list(frame["score"]) == pytest.approx(list(load_run(app.found.runs_dir / name).maps["scores"]))


def test_thresholds_equal_to_four_figures_give_two_files(tmp_path):
    mvtec_run(tmp_path / "run", tmp_path / "data")
    view = RunViewer(tmp_path / "run", threshold=0.5, out_dir=tmp_path / "out")
    written = []
    for threshold in (0.5, 0.50001):
        view.threshold.value = threshold
        written += [view.save(), view.export()]
    assert len(set(written)) == 4 and sorted((tmp_path / "out").iterdir()) == sorted(written)
    csvs = [pd.read_csv(p) for p in written if p.suffix == ".csv"]
    assert [frame["threshold"].iloc[0] for frame in csvs] == [0.5, 0.50001]


def test_a_file_of_the_same_name_with_other_content_is_not_overwritten(tmp_path):
    for runs in ("old", "new"):  # two runs_dir, each with a run named "a", one out_dir
        mvtec_run(tmp_path / runs / "a", tmp_path / "data", factor=1.0 if runs == "old" else 0.5)
    first = ViewerApp(tmp_path / "old", threshold=0.3, out_dir=tmp_path / "out").viewer
    csv, png = first.export(), first.save()
    kept = csv.read_bytes(), png.read_bytes()
    assert first.export() == csv and first.save() == png  # the same content again: written
    second = ViewerApp(tmp_path / "new", threshold=0.3, out_dir=tmp_path / "out").viewer
    for button in (second.export_csv, second.save_png):
        button.click()
        assert "not written" in second.status.value and "other content" in second.status.value
    assert (csv.read_bytes(), png.read_bytes()) == kept and len(list((tmp_path / "out").iterdir())) == 2


def test_run_picker_lists_the_runs_of_a_sweep_folder(tmp_path, monkeypatch):
    sweep = tmp_path / "runs" / "demo"
    for name, setting in (("one", "one-class"), ("multi", "multi-class")):
        write_run(sweep / name, setting=setting)
        write_maps(sweep / name)
    write_run(sweep / "nomaps")
    (tmp_path / "notebooks").mkdir()
    monkeypatch.chdir(tmp_path / "notebooks")  # "runs" is found in the parent folder
    found = find_runs("runs")
    assert found.runs_dir == (tmp_path / "runs").resolve()
    assert [found.name(r) for r in found.runs] == ["demo/multi", "demo/one"]  # multi-class first
    assert found.left_out == ["demo/nomaps: no maps.npz (run with save_maps=true)"]
    assert str(found.runs_dir) in found.describe() and "demo/nomaps" in found.describe()
    app = ViewerApp("runs")
    assert app.picker.value == found.runs[0] and str(found.runs_dir) in app.where.value
    assert [label for label, _ in app.picker.options] == ["demo/multi", "demo/one"]
    app.picker.value = found.runs[1]
    assert app.viewer.run.run_dir == found.runs[1] and app.body.children == (app.viewer_box,)
    assert ViewerApp(sweep / "one").viewer.run.run_dir == found.runs[1]  # a run folder itself
    assert ViewerApp(tmp_path / "runs", run="demo/one").viewer.run.run_dir == found.runs[1]

    # A record of another format among them is listed with its reason; the other runs still show.
    import json

    broken = json.loads((sweep / "one" / "record.json").read_text())
    del broken["metrics"]
    (sweep / "broken").mkdir()
    (sweep / "broken" / "record.json").write_text(json.dumps(broken))
    found = find_runs("runs")
    assert [found.name(r) for r in found.runs] == ["demo/multi", "demo/one"]
    assert any(item.startswith("demo/broken: ") and "metrics" in item for item in found.left_out)


def test_runs_dir_errors_name_the_resolved_folder_and_what_was_found(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(AgpnetError) as err:
        resolve_runs_dir("nowhere")
    assert str(tmp_path / "nowhere") in str(err.value)
    write_run(tmp_path / "runs/a")
    (tmp_path / "runs/b").mkdir()
    (tmp_path / "runs/b/record.json").write_text(json.dumps({"status": "running"}))
    with pytest.raises(AgpnetError) as err:
        ViewerApp("runs")
    message = str(err.value)
    assert str((tmp_path / "runs").resolve()) in message and "\n" not in message
    assert "a: no maps.npz" in message and "b: run not complete" in message
    write_maps(tmp_path / "runs/a")
    with pytest.raises(AgpnetError, match="not among the runs"):
        ViewerApp("runs", run="b")
    assert os.getcwd() == str(tmp_path)


def test_show_displays_a_rerun_hint_for_a_lost_widget(run_dir, monkeypatch):
    shown = []
    monkeypatch.setattr("IPython.display.display", lambda obj, raw=False: shown.append(obj))
    app = ViewerApp(run_dir)
    app.show()
    hint, widget = shown
    assert "re-run this cell" in RERUN_HINT and widget["text/plain"] == RERUN_HINT  # nbconvert, GitHub
    assert widget["application/vnd.jupyter.widget-view+json"]["model_id"] == app.box.model_id
    assert "agpnet-viewer" in app.box._dom_classes
    # In JupyterLab the hint shows only in an output area without a drawn viewer.
    assert ".jp-OutputArea:has(.agpnet-viewer) .agpnet-rerun{display:none}" in hint["text/html"]
    assert html.escape(RERUN_HINT) in hint["text/html"]


def test_a_long_run_name_gives_a_file_name_that_fits_and_stays_unique(tmp_path):
    """A nested sweep cell's name (up to 120 characters) with the image and view in it could pass
    the file systems' 255-byte limit: long names keep their ends around a hash of the whole."""
    mvtec_run(tmp_path / "run", tmp_path / "data")
    paths = [RunViewer(tmp_path / "run", threshold=0.3, out_dir=tmp_path / "out", name=name).save()
             for name in ("x" * 150 + "-a", "x" * 150 + "-b")]
    assert len(set(paths)) == 2 and all(len(p.name) <= 200 and p.name.endswith(".png") for p in paths)
