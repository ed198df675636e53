"""Look at runs: an ipywidgets viewer over a run's maps.npz + record.json, and the attention
masks of its checkpoint at a few training stages (for notebooks/attention_masks.ipynb).

`ViewerApp(runs_dir).show()` in JupyterLab: pick a run below runs_dir (see agpnet.runfinder),
then a category, defect type and image (or step with prev / next); see the image, its ground
truth, the anomaly map with the predicted region and the filled predicted mask, a normal
reference image of the same category on the same colour scale, and the histogram of image
scores. Move the threshold (or press a best-F1 preset: test-set oracle thresholds, for
inspection only) to see the image's pixel F1 and its verdict (TP / FP / TN / FN: image score
against the threshold). "Save PNG" writes the picture, "Export CSV" every image's score and
verdict, under names that hold the run, the image and the exact threshold (see RunViewer.save and
RunViewer.export); a file of the same name with other content is never overwritten. Every
callback is a plain method and every output a widget value, so tests drive the viewer without a
browser (tests/test_viewer_browser.py drives it in JupyterLab).
"""

import hashlib
import html
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from agpnet.atomic import write_bytes
from agpnet.data import denormalize, load_rgb
from agpnet.errors import AgpnetError
from agpnet.records import load_record

MAPS_KEYS = ("anomaly_maps", "masks", "scores", "labels", "paths", "categories", "defects")
ATTENTION_KEYS = ("a_prior", "a_learn", "a_final")
PICTURE_PX = (960, 540)  # (width, height) of the viewer's picture, shown pixel for pixel
DPI = 100
ALL = "all"
ORDERS = {
    "file": "file name",
    "score": "score, highest first",
    "false_positives": "false positives: good images, highest score first",
    "false_negatives": "false negatives: defective images, lowest score first",
}
PRESETS = {"image": "this image", "category": "this category", "all": "all images"}
ORACLE_NOTE = "test-set oracle thresholds, for inspection only"
RERUN_HINT = ('If the viewer below reads "Error displaying widget: model not found", '
              "the kernel has restarted or the notebook was reopened since it was drawn: re-run this cell.")


@dataclass
class RunData:
    """A run folder: its record.json and maps.npz arrays (see docs/contracts.md; anomaly_maps
    as stored, float16). `oracle` caches best-F1 thresholds by preset key."""

    run_dir: Path
    record: dict
    maps: dict[str, np.ndarray]
    oracle: dict = field(default_factory=dict)


def load_run(run_dir: str | Path) -> RunData:
    """Read record.json and maps.npz of a finished run folder (the run must have used save_maps=true)."""
    run_dir = Path(run_dir)
    record_path, maps_path = run_dir / "record.json", run_dir / "maps.npz"
    if not record_path.is_file():
        raise AgpnetError(f"{record_path}: no run record (expected a finished run folder; "
                          "for a folder of runs use ViewerApp(runs_dir), the viewer notebook's runs_dir)")
    record = load_record(record_path)
    if not maps_path.is_file():
        raise AgpnetError(f"{maps_path}: no maps.npz (run with save_maps=true to use the viewer)")
    try:
        with np.load(maps_path, allow_pickle=False) as npz:
            maps = {k: npz[k] for k in npz.files}
    except (ValueError, OSError) as err:
        raise AgpnetError(f"{maps_path}: unreadable maps.npz ({err})") from None
    missing = [k for k in MAPS_KEYS if k not in maps]
    if missing:
        raise AgpnetError(f"{maps_path}: missing arrays {', '.join(missing)} (see docs/contracts.md)")
    return RunData(run_dir=run_dir, record=record, maps=maps)


def weights_warning(record: dict) -> str | None:
    """A warning when the run's encoder did not have pretrained weights (None when it had)."""
    weights = record.get("weights") or {}
    if weights.get("pretrained", False):
        return None
    source = weights.get("source") or "unknown"
    return (f"The encoder had no pretrained weights (weights: {source}): these maps are not AGPNet results, "
            "and scores near chance and a pixel F1 near 0 are expected.")


def load_image(path: str, size: tuple[int, int]) -> np.ndarray:
    """(H, W, 3) uint8 image (maps.npz stores absolute paths) resized to `size`; mid-grey when the
    file is gone (e.g. the run folder was copied to another machine)."""
    from PIL import Image

    if not Path(path).is_file():
        return np.full((*size, 3), 128, dtype=np.uint8)
    return np.asarray(load_rgb(path).resize((size[1], size[0]), Image.BILINEAR))


def pixel_f1(anomaly_map: np.ndarray, mask: np.ndarray, threshold: float) -> float:
    """F1 of the region map >= threshold against the mask; NaN when both are empty."""
    predicted = np.asarray(anomaly_map, dtype=np.float32) >= threshold
    mask = mask.astype(bool)
    tp = np.count_nonzero(predicted & mask)
    wrong = np.count_nonzero(predicted ^ mask)
    return float("nan") if tp + wrong == 0 else 2 * tp / (2 * tp + wrong)


def best_f1_threshold(anomaly_maps: np.ndarray, masks: np.ndarray) -> tuple[float, float]:
    """(threshold, pixel F1): the threshold t maximising the F1 of all pixels map >= t against
    the masks, over (..., H, W) maps and masks; exact. Without defect pixels the F1 is undefined
    (NaN) and t is just above the highest value (nothing predicted). float16 maps (maps.npz) are
    counted per float16 value in linear time; others are compared as float32, like the viewer."""
    values, truth = np.asarray(anomaly_maps).ravel(), np.asarray(masks, dtype=bool).ravel()
    if values.dtype == np.float16:  # at most 2**16 distinct values: count each bit pattern
        codes = values.view(np.uint16)
        total, positive = np.bincount(codes, minlength=2**16), np.bincount(codes[truth], minlength=2**16)
        present = total > 0
        values = np.arange(2**16, dtype=np.uint32).astype(np.uint16).view(np.float16)[present]
        total, positive = total[present], positive[present]
    else:
        values = values.astype(np.float32)
        total, positive = np.ones(len(values)), truth
    levels, inverse = np.unique(values.astype(np.float32), return_inverse=True)  # ascending
    total = np.bincount(inverse, weights=total)[::-1]
    positive = np.bincount(inverse, weights=positive)[::-1]
    n_positive = positive.sum()
    if n_positive == 0:
        return float(np.nextafter(levels[-1], np.float32(np.inf))), float("nan")
    f1 = 2 * np.cumsum(positive) / (np.cumsum(total) + n_positive)  # predicting the k+1 highest levels
    best = int(np.argmax(f1))
    return float(levels[::-1][best]), float(f1[best])


def verdict(label: int, score: float, threshold: float) -> str:
    """TP / FP / TN / FN of one image: its score >= threshold predicts "defective"."""
    predicted = score >= threshold
    return ("T" if predicted == bool(label) else "F") + ("P" if predicted else "N")


def scores_frame(run: RunData, threshold: float) -> pd.DataFrame:
    """One row per test image: run (the run folder, absolute), path, category, defect, label,
    score, threshold, verdict and pixel_f1 (NaN for a good image with nothing predicted) at
    `threshold`."""
    maps = run.maps
    rows = []
    for i in range(len(maps["scores"])):
        label, score = int(maps["labels"][i]), float(maps["scores"][i])
        rows.append({"run": str(run.run_dir.absolute()), "path": str(maps["paths"][i]),
                     "category": str(maps["categories"][i]), "defect": str(maps["defects"][i]),
                     "label": label, "score": score,
                     "threshold": threshold, "verdict": verdict(label, score, threshold),
                     "pixel_f1": pixel_f1(maps["anomaly_maps"][i], maps["masks"][i], threshold)})
    return pd.DataFrame(rows)


def scores_csv(run: RunData, threshold: float) -> str:
    """`scores_frame` as CSV text; a first line "# WARNING: ..." when the encoder had random
    weights (read it back with pandas.read_csv(path, comment="#"))."""
    warning = weights_warning(run.record)
    return (f"# WARNING: {warning}\n" if warning else "") + scores_frame(run, threshold).to_csv(index=False)


def write_unless_other(path: Path, data: bytes) -> Path:
    """Write `data` to `path` atomically, unless a file with other content is there already
    (AgpnetError naming it: a file of the same name from another run or view is kept)."""
    if path.is_file() and path.read_bytes() != data:
        raise AgpnetError(f"{path}: a file of this name with other content is there already "
                          "(not overwritten: move it, or pick another out_dir)")
    return write_bytes(path, data)


def png_size(png: bytes) -> tuple[int, int]:
    """(width, height) in pixels from a PNG's header."""
    return int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")


def display_with_hint(box) -> None:
    """Display a widget box, preceded by a hint to re-run the cell that shows only where the widget
    cannot be drawn (a notebook reopened or a kernel restarted: JupyterLab then reads "Error
    displaying widget"); the widget's plain-text form (GitHub, nbconvert) is the hint too."""
    from IPython.display import display

    box.add_class("agpnet-viewer")
    hint = html.escape(RERUN_HINT)
    display({"text/html": "<style>.jp-OutputArea:has(.agpnet-viewer) .agpnet-rerun{display:none}</style>"
                          f"<p class='agpnet-rerun' style='color:#a00'><b>{hint}</b></p>",
             "text/plain": RERUN_HINT}, raw=True)
    display({"text/plain": RERUN_HINT,
             "application/vnd.jupyter.widget-view+json": {"version_major": 2, "version_minor": 0,
                                                          "model_id": box.model_id}}, raw=True)


class RunViewer:
    """Widget viewer over one run folder. State after every callback: `indices` (maps.npz rows
    listed, in order), `current` (the row shown), `f1` (pixel F1 of that image at the threshold),
    `scale_range` ((vmin, vmax) of the colour scale), `picture.value` / `attention.value` (PNG
    bytes), `info.value` and `status.value` (HTML), `oracle_text` (after a best-F1 preset).
    Save PNG and Export CSV write to `out_dir` (default: <run_dir>/viewer); `name` is the run's
    name in their file names (ViewerApp: its folder relative to runs_dir; default: the folder's
    name)."""

    def __init__(self, run_dir: str | Path, threshold: float | None = None,
                 out_dir: str | Path | None = None, name: str | None = None):
        import ipywidgets as w

        self.run = load_run(run_dir)
        self.name = name if name not in (None, ".") else self.run.run_dir.absolute().name
        self.out_dir = (Path(out_dir).expanduser().absolute() if out_dir is not None
                        else self.run.run_dir / "viewer")
        maps = self.run.maps
        self.size = tuple(maps["anomaly_maps"].shape[1:])
        self.vmin, self.vmax = float(maps["anomaly_maps"].min()), float(maps["anomaly_maps"].max())
        self._images: dict[int, np.ndarray] = {}
        self._scales: dict[str, tuple[float, float]] = {}
        self._holding = False
        self._presetting = False  # the threshold is being set by a preset: keep its "best F1" text
        self._attention_for: int | None = None
        self.indices: list[int] = []
        self.current: int | None = None
        self.f1 = float("nan")
        self.scale_range = (self.vmin, self.vmax)  # the colour scale of the picture shown
        self.oracle_text = ""

        categories = sorted(set(maps["categories"].tolist()))
        step = (self.vmax - self.vmin) / 200 or 1e-3
        self.category = w.Dropdown(options=[ALL, *categories], value=ALL, description="category")
        self.defect = w.Dropdown(options=[ALL], value=ALL, description="defect")
        self.order = w.Dropdown(options=[(label, key) for key, label in ORDERS.items()], value="file",
                                description="order")
        self.image = w.Dropdown(options=[], description="image", layout=w.Layout(width="60%"))
        self.previous = w.Button(description="◀ prev", layout=w.Layout(width="80px"))
        self.next = w.Button(description="next ▶", layout=w.Layout(width="80px"))
        initial = threshold if threshold is not None else (self.vmin + self.vmax) / 2
        self.threshold = w.FloatSlider(min=self.vmin, max=self.vmax + step, step=step, readout_format=".4g",
                                       value=initial,
                                       description="threshold", continuous_update=False,
                                       layout=w.Layout(width="60%"))
        self.presets = {key: w.Button(description=f"best F1: {label}", layout=w.Layout(width="auto"),
                                      tooltip=f"the threshold with the best pixel F1 over {label} "
                                              f"({ORACLE_NOTE})")
                        for key, label in PRESETS.items()}
        self.scale = w.ToggleButtons(options=[("per category", "category"), ("global", "global")],
                                     value="category", style={"button_width": "110px"})
        self.header = w.HTML(self._header())
        self.info = w.HTML()
        self.picture = w.Image(format="png")
        self.attention = w.Image(format="png")
        self.save_png = w.Button(description="Save PNG", icon="download")
        self.export_csv = w.Button(description="Export CSV", icon="table")
        self.status = w.HTML(layout=w.Layout(width="auto"))
        styled = ("category", "defect", "order", "image", "threshold", "scale", "info", "picture", "status")
        for name in styled:
            getattr(self, name).add_class(f"agpnet-{name}")
        for key, button in self.presets.items():
            button.add_class(f"agpnet-preset-{key}")
            button.on_click(lambda _, key=key: self.preset(key))
        self.previous.add_class("agpnet-prev")
        self.next.add_class("agpnet-next")
        self.save_png.add_class("agpnet-save-png")
        self.export_csv.add_class("agpnet-export-csv")

        self.category.observe(self.on_category, names="value")
        self.defect.observe(self.on_filter, names="value")
        self.order.observe(self.on_filter, names="value")
        self.image.observe(self.on_image, names="value")
        self.threshold.observe(self.on_threshold, names="value")
        self.scale.observe(self.on_threshold, names="value")
        self.previous.on_click(lambda _: self.step(-1))
        self.next.on_click(lambda _: self.step(1))
        self.save_png.on_click(lambda _: self._writing(self.save))
        self.export_csv.on_click(lambda _: self._writing(self.export))
        self.on_category()

    def widget(self):
        """The widget box (to embed; `show()` displays it)."""
        import ipywidgets as w

        oracle = w.HTML(f"<i>{html.escape(ORACLE_NOTE)}:</i>")
        return w.VBox([self.header, w.HBox([self.category, self.defect, self.order]),
                       w.HBox([self.image, self.previous, self.next]), self.threshold,
                       w.HBox([oracle, *self.presets.values()]),
                       w.HBox([w.HTML("<i>colour scale:</i>"), self.scale]),
                       self.info, self.picture,
                       w.HBox([self.save_png, self.export_csv, self.status]), self.attention])

    def show(self) -> None:
        """Display the viewer (with the re-run hint for a lost widget state)."""
        display_with_hint(self.widget())

    # Callbacks (traitlets observers and button handlers; tests call them directly).

    def on_category(self, change=None):
        """New category: refill the defect menu, then the image list."""
        rows = self._rows(self.category.value, ALL)
        defects = sorted(set(self.run.maps["defects"][rows].tolist()))
        self._holding = True
        try:
            self.defect.options = [ALL, *defects]
            self.defect.value = ALL
        finally:
            self._holding = False
        self.on_filter()

    def on_filter(self, change=None):
        """New defect type or order: refill the image list and show its first image."""
        if self._holding:
            return
        self.indices = self._ordered(self._rows(self.category.value, self.defect.value), self.order.value)
        maps = self.run.maps
        options = [(f"{Path(str(maps['paths'][i])).name}  [{maps['defects'][i]}]  "
                    f"score {maps['scores'][i]:.4g}", int(i))
                   for i in self.indices]
        self._holding = True
        try:
            self.image.options = options
            self.image.value = options[0][1] if options else None
        finally:
            self._holding = False
        self.on_image()

    def on_image(self, change=None):
        if self._holding:
            return
        self.current = self.image.value
        self.oracle_text = ""
        self.render()

    def on_threshold(self, change=None):
        if self._holding:
            return
        if not self._presetting:  # a threshold of the user's: the preset's text no longer applies
            self.oracle_text = ""
        self.render()

    def step(self, offset: int):
        """Show the image `offset` places after the current one in the list (prev -1, next +1)."""
        if self.current in self.indices:
            position = min(max(self.indices.index(self.current) + offset, 0), len(self.indices) - 1)
            self.image.value = self.indices[position]

    def preset(self, key: str):
        """Set the threshold to the best pixel-F1 threshold over this image, its category or all
        images (key "image", "category", "all"); category and all are computed once per run."""
        if self.current is None:
            return
        i, maps = self.current, self.run.maps
        category = str(maps["categories"][i])
        in_category = self._rows(category, ALL)
        rows, over, cache_key = {
            "image": ([i], f"this image ({Path(str(maps['paths'][i])).name})", ("image", i)),
            "category": (in_category, f"the {len(in_category)} images of {category}", ("category", category)),
            "all": (slice(None), f"all {len(maps['scores'])} images", ("all",)),
        }[key]
        if cache_key not in self.run.oracle:
            self.run.oracle[cache_key] = best_f1_threshold(maps["anomaly_maps"][rows], maps["masks"][rows])
        threshold, f1 = self.run.oracle[cache_key]
        f1_text = "undefined: no defect pixels, nothing predicted" if np.isnan(f1) else f"{f1:.3f}"
        self.oracle_text = (f"threshold {threshold:.4g}: best pixel F1 over {over} = {f1_text} "
                            f"({ORACLE_NOTE})")
        threshold = min(max(threshold, self.threshold.min), self.threshold.max)
        if threshold == self.threshold.value:
            self.render()
        else:
            self._presetting = True
            try:
                self.threshold.value = threshold  # renders
            finally:
                self._presetting = False

    def save(self) -> Path | None:
        """Write the picture shown (PNG) to out_dir; returns its path. The name holds all the
        picture depends on: <run>_<category>_<defect>_<stem>_threshold-<t>_scale-<category|global>
        _histogram-<all|category>.png (t: repr of the float; the histogram's images: all or this
        category). A file of that name with other content is kept (AgpnetError)."""
        if self.current is None or not self.picture.value:
            return None
        maps, i = self.run.maps, self.current
        histogram = "all" if self.category.value == ALL else "category"
        name = (f"{self.name}_{maps['categories'][i]}_{maps['defects'][i]}_{Path(str(maps['paths'][i])).stem}"
                f"_threshold-{float(self.threshold.value)!r}_scale-{self.scale.value}_histogram-{histogram}.png")
        path = write_unless_other(self.out_dir / _safe_name(name), bytes(self.picture.value))
        self.status.value = f"saved <code>{html.escape(str(path))}</code>"
        return path

    def export(self) -> Path:
        """Write every image's score, verdict and pixel F1 at the threshold (`scores_csv`) to
        out_dir as scores_<run>_threshold-<t>.csv (t in full); returns its path. A file of that
        name with other content is kept (AgpnetError)."""
        threshold = float(self.threshold.value)
        name = _safe_name(f"scores_{self.name}_threshold-{threshold!r}.csv")
        path = write_unless_other(self.out_dir / name, scores_csv(self.run, threshold).encode())
        self.status.value = f"exported <code>{html.escape(str(path))}</code>"
        return path

    def _writing(self, write):
        """Run a button's file writing; a failure (e.g. a read-only folder) is shown in the status line."""
        try:
            write()
        except (AgpnetError, OSError) as err:
            self.status.value = f"<span style='color:#b00'>not written: {html.escape(str(err))}</span>"

    # Outputs.

    def render(self):
        """Recompute the pixel F1, the verdict and the info text, and redraw both pictures."""
        from agpnet.plots import attention_panels, to_png, viewer_figure

        if self.current is None:
            self.f1 = float("nan")
            self.info.value = "<p>No image matches this selection.</p>"
            self.picture.value = b""
            self.attention.value = b""
            self._attention_for = None
            return
        i, maps = self.current, self.run.maps
        threshold = self.threshold.value
        anomaly_map, mask = maps["anomaly_maps"][i].astype(np.float32), maps["masks"][i].astype(bool)
        self.f1 = pixel_f1(anomaly_map, mask, threshold)
        self.info.value = self._info(i, anomaly_map, mask, threshold)
        category = str(maps["categories"][i])
        vmin, vmax = self.scale_range = self._scale(category)
        scale_label = (f"anomaly map, scale of {category}" if self.scale.value == "category"
                       else "anomaly map, one scale for all categories")
        rows = self._rows(self.category.value, ALL)
        reference = self.reference(i)
        figure = viewer_figure(
            self._image(i), anomaly_map, mask, threshold, vmin, vmax, scale_label,
            maps["scores"][rows], maps["labels"][rows], float(maps["scores"][i]),
            f"image scores: {self.category.value if self.category.value != ALL else 'all categories'}",
            reference=None if reference is None else (
                self._image(reference), maps["anomaly_maps"][reference].astype(np.float32),
                f"normal: {Path(str(maps['paths'][reference])).name}"),
            size_px=PICTURE_PX, dpi=DPI)
        self._show_png(self.picture, to_png(figure, dpi=DPI, tight=False))
        # the attention panels do not depend on the threshold
        if self._attention_for != i and all(k in maps for k in ATTENTION_KEYS):
            arrays = (maps[k][i].astype(np.float32) for k in ATTENTION_KEYS)
            figure = attention_panels(self._image(i), *arrays)
            self._show_png(self.attention, to_png(figure, dpi=DPI))
            self._attention_for = i

    def worst_false_positives(self, n: int = 10) -> list[tuple[str, float]]:
        """(path, score) of the good images with the highest scores, in the selected category."""
        rows = self._ordered(self._rows(self.category.value, ALL), "false_positives")[:n]
        return [(str(self.run.maps["paths"][i]), float(self.run.maps["scores"][i])) for i in rows]

    def worst_false_negatives(self, n: int = 10) -> list[tuple[str, float]]:
        """(path, score) of the defective images with the lowest scores, in the selected category."""
        rows = self._ordered(self._rows(self.category.value, ALL), "false_negatives")[:n]
        return [(str(self.run.maps["paths"][i]), float(self.run.maps["scores"][i])) for i in rows]

    def _header(self) -> str:
        run = self.run
        parts = [f"<b>run</b> <code>{html.escape(str(run.run_dir))}</code>"]
        warning = weights_warning(run.record)
        if warning:
            parts.append("<div class='agpnet-weights-warning' "
                         "style='background:#b00;color:white;padding:4px 8px;"
                         f"font-weight:bold'>WARNING: {html.escape(warning)}</div>")
        return "".join(parts)

    def _info(self, i: int, anomaly_map: np.ndarray, mask: np.ndarray, threshold: float) -> str:
        maps = self.run.maps
        above = int(np.count_nonzero(anomaly_map >= threshold))
        false_pixels = int(np.count_nonzero((anomaly_map >= threshold) & ~mask))
        label, score = int(maps["labels"][i]), float(maps["scores"][i])
        name = {"TP": "true positive", "FP": "false positive", "TN": "true negative", "FN": "false negative"}
        result = verdict(label, score, threshold)
        relation = "≥" if score >= threshold else "<"
        f1_text = "n/a (no defect pixels and none predicted)" if np.isnan(self.f1) else f"{self.f1:.3f}"
        everywhere = ", the whole image" if above == anomaly_map.size else ""
        rank = self.indices.index(i) + 1 if i in self.indices else "-"
        fields = [("file", str(maps["paths"][i]), ""), ("category", str(maps["categories"][i]), ""),
                  ("defect", f"{maps['defects'][i]} ({'defective' if label else 'good'})", ""),
                  ("image verdict",
                   f"{result}, {name[result]}: score {score:.4g} {relation} threshold {threshold:.4g}",
                   "agpnet-verdict"),
                  ("rank in list", f"{rank} of {len(self.indices)}", ""),
                  ("pixel F1 at threshold", f1_text, "agpnet-f1"),
                  ("pixels above threshold", f"{above}{everywhere} ({false_pixels} outside the mask)", "")]
        rows = "".join(f"<tr><th style='text-align:left;padding-right:1em'>{html.escape(k)}</th>"
                       f"<td class='{css}'>{html.escape(v)}</td></tr>" for k, v, css in fields)
        oracle = ""
        if self.oracle_text:
            oracle = f"<p class='agpnet-oracle'><i>{html.escape(self.oracle_text)}</i></p>"
        return f"<table>{rows}</table>{oracle}"

    def _scale(self, category: str) -> tuple[float, float]:
        """(vmin, vmax) of the colour scale: over the category's maps, or over all maps."""
        if self.scale.value == "global":
            return self.vmin, self.vmax
        if category not in self._scales:
            part = self.run.maps["anomaly_maps"][self._rows(category, ALL)]
            self._scales[category] = float(part.min()), float(part.max())
        return self._scales[category]

    def reference(self, i: int) -> int | None:
        """A normal test image of i's category (not i): the one with the median score."""
        maps = self.run.maps
        rows = [r for r in self._rows(str(maps["categories"][i]), "good") if r != i]
        if not rows:
            return None
        return int(sorted(rows, key=lambda r: float(maps["scores"][r]))[len(rows) // 2])

    def _show_png(self, image_widget, png: bytes):
        """Set a PNG, sized to its pixels (no stretching by the browser)."""
        width, _ = png_size(png)
        image_widget.layout.width = f"{width}px"
        image_widget.value = png

    def _rows(self, category: str, defect: str) -> np.ndarray:
        maps = self.run.maps
        keep = np.ones(len(maps["scores"]), dtype=bool)
        if category != ALL:
            keep &= maps["categories"] == category
        if defect != ALL:
            keep &= maps["defects"] == defect
        return np.flatnonzero(keep)

    def _ordered(self, rows: np.ndarray, order: str) -> list[int]:
        maps = self.run.maps
        scores, labels = maps["scores"].astype(float), maps["labels"].astype(int)
        if order == "false_positives":
            rows = rows[labels[rows] == 0]
            return [int(i) for i in rows[np.argsort(-scores[rows], kind="stable")]]
        if order == "false_negatives":
            rows = rows[labels[rows] == 1]
            return [int(i) for i in rows[np.argsort(scores[rows], kind="stable")]]
        if order == "score":
            return [int(i) for i in rows[np.argsort(-scores[rows], kind="stable")]]
        return [int(i) for i in sorted(rows, key=lambda i: str(maps["paths"][i]))]

    def _image(self, i: int) -> np.ndarray:
        if i not in self._images:
            self._images[i] = load_image(str(self.run.maps["paths"][i]), self.size)
        return self._images[i]


class ViewerApp:
    """A run picker over the runs with maps.npz below `runs_dir`, and the RunViewer of the run
    picked (`run`: its folder relative to runs_dir; default the first, multi-class first)."""

    def __init__(self, runs_dir: str | Path = "runs", run: str | None = None, threshold: float | None = None,
                 out_dir: str | Path | None = None):
        import ipywidgets as w

        from agpnet.runfinder import find_runs

        self.found = find_runs(runs_dir, needs=("maps.npz",)).require()
        self.threshold, self.out_dir = threshold, out_dir
        self.picker = w.Dropdown(options=[(self.found.name(r), r) for r in self.found.runs],
                                 value=self.found.pick(run), description="run", layout=w.Layout(width="80%"))
        self.picker.add_class("agpnet-run")
        where = (f"<b>runs_dir</b> <code>{html.escape(str(self.found.runs_dir))}</code>: "
                 f"{len(self.found.runs)} run(s) with maps.npz")
        if self.found.left_out:
            shown = html.escape("; ".join(self.found.left_out[:3]))
            where += f" ({len(self.found.left_out)} left out: {shown})"
        self.where = w.HTML(where)
        self.viewer = RunViewer(self.picker.value, threshold=threshold, out_dir=out_dir,
                                name=self.found.name(self.picker.value))
        self.viewer_box = self.viewer.widget()
        self.body = w.VBox([self.viewer_box])
        self.box = w.VBox([self.where, self.picker, self.body])
        self.picker.observe(self.on_run, names="value")

    def on_run(self, change=None):
        """Another run picked: a new RunViewer in place of the old one."""
        self.viewer = RunViewer(self.picker.value, threshold=self.threshold, out_dir=self.out_dir,
                                name=self.found.name(self.picker.value))
        self.viewer_box = self.viewer.widget()
        self.body.children = [self.viewer_box]

    def show(self) -> None:
        """Display the picker and viewer (with the re-run hint for a lost widget state)."""
        display_with_hint(self.box)


def _safe_name(name: str) -> str:
    """A file name of letters, digits, ".", "_" and "-" only, at most 200 characters (a longer one
    keeps its start and end around a hash of the whole, so it stays unique)."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", name)
    if len(name) > 200:
        name = f"{name[:100]}-{hashlib.sha1(name.encode()).hexdigest()[:8]}-{name[-90:]}"
    return name


def heatmap_examples(run_dir: str | Path, n_defective: int = 3, n_good: int = 1):
    """Figure: the highest-scored defective images (one per category in turn) and the
    highest-scored good images of a run (image | ground truth | anomaly map, one scale)."""
    from agpnet.plots import heatmap_grid

    run = load_run(run_dir)
    maps = run.maps
    by_score = np.argsort(-maps["scores"].astype(float), kind="stable")
    good = [int(i) for i in by_score if int(maps["labels"][i]) == 0]
    rows = _pick_defective(maps, n_defective) + good[:n_good]
    if not rows:
        raise AgpnetError(f"{run.run_dir / 'maps.npz'}: no test images")
    size = tuple(maps["anomaly_maps"].shape[1:])
    titles = [f"{maps['categories'][i]} / {maps['defects'][i]} / {Path(str(maps['paths'][i])).name}: "
              f"score {float(maps['scores'][i]):.4g}" for i in rows]
    return heatmap_grid([load_image(str(maps["paths"][i]), size) for i in rows],
                        [maps["anomaly_maps"][i] for i in rows], [maps["masks"][i] for i in rows], titles,
                        vmin=float(maps["anomaly_maps"].min()), vmax=float(maps["anomaly_maps"].max()))


def attention_stages(run_dir: str | Path, n_images: int = 3, progresses=(0.0, 0.5, 1.0),
                     device: str = "cpu") -> list[dict]:
    """For a few defective test images (the highest-scored of each category in turn): the
    attention masks and both perturbations of the run's final model at training progress t.

    Returns one dict per image: title, name (a PNG file name), image (S, S, 3), anomaly_map, mask
    (maps.npz size) and stages [{progress, alpha, ratio, a_prior, a_learn, a_final (h, w),
    image_perturbed (S, S, 3), feature_noise_std (h, w)}] with alpha(t) and the mask ratio r(t) of
    the run's schedules."""
    import torch

    from agpnet.data import AnomalyDataset, Sample
    from agpnet.model.checkpoint import load_checkpoint
    from agpnet.runtime import resolve_device

    run = load_run(run_dir)
    checkpoint = run.run_dir / "checkpoint.pt"
    if not checkpoint.is_file():
        raise AgpnetError(f"{checkpoint}: no checkpoint in the run folder")
    device = resolve_device(device)
    model, _ = load_checkpoint(checkpoint, device)
    model.eval()
    cfg = model.cfg
    rows = _pick_defective(run.maps, n_images)
    samples = [Sample(image=Path(str(run.maps["paths"][i])), category=str(run.maps["categories"][i]),
                      label=1, defect=str(run.maps["defects"][i]), mask=None)
               for i in rows]
    dataset = AnomalyDataset(samples, image_size=cfg.image_size, mean=model.mean, std=model.std)
    images = torch.stack([dataset[k]["image"] for k in range(len(samples))]).to(device)
    results = [{"title": f"{run.maps['categories'][i]} / {run.maps['defects'][i]} / "
                         f"{Path(str(run.maps['paths'][i])).name}",
                "name": _safe_name(f"{run.maps['categories'][i]}_{run.maps['defects'][i]}_"
                                   f"{Path(str(run.maps['paths'][i])).stem}.png"),
                "image": denormalize(images[k], model.mean, model.std),
                "anomaly_map": run.maps["anomaly_maps"][i], "mask": run.maps["masks"][i].astype(bool),
                "stages": []}
               for k, i in enumerate(rows)]
    with torch.inference_mode():
        for t in progresses:
            torch.manual_seed(0)  # the same noise draw at every stage
            masks = model.attention_masks(images, progress=t)
            preview = model.perturbation_preview(images, progress=t)
            for k, result in enumerate(results):
                result["stages"].append({
                    "progress": float(t),
                    "alpha": model.perturbation.alpha(t),
                    "ratio": model.perturbation.mask_ratio(t),
                    **{key: None if masks.get(key) is None else masks[key][k].float().cpu().numpy()
                       for key in ATTENTION_KEYS},
                    "image_perturbed": denormalize(preview["image_perturbed"][k], model.mean, model.std),
                    "feature_noise_std": preview["feature_noise_std"][k].float().cpu().numpy(),
                })
    return results


def attention_figures(run_dir: str | Path, n_images: int = 3, progresses=(0.0, 0.5, 1.0), device: str = "cpu",
                      out_dir: str | Path | None = None) -> list:
    """One `plots.perturbation_stages` figure per image of `attention_stages`; with `out_dir`,
    each is also written to out_dir/attention_masks/ as PNG (the example's `name`, atomically)."""
    from agpnet.plots import perturbation_stages, to_png

    figures = []
    for example in attention_stages(run_dir, n_images=n_images, progresses=progresses, device=device):
        figure = perturbation_stages(example["image"], example["stages"], example["anomaly_map"],
                                     example["mask"], title=example["title"])
        if out_dir is not None:
            write_bytes(Path(out_dir) / "attention_masks" / example["name"], to_png(figure))
        figures.append(figure)
    return figures


def _pick_defective(maps: dict, n: int) -> list[int]:
    """Up to n defective rows: the highest-scored of each category, then the next of each, ..."""
    per_category = {}
    for i in np.argsort(-maps["scores"].astype(float), kind="stable"):
        if int(maps["labels"][i]) == 1:
            per_category.setdefault(str(maps["categories"][i]), []).append(int(i))
    picked, rank = [], 0
    while len(picked) < n and any(rank < len(v) for v in per_category.values()):
        picked += [v[rank] for v in per_category.values() if rank < len(v)][: n - len(picked)]
        rank += 1
    return picked
