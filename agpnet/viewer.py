"""Look at one run folder: an ipywidgets viewer over maps.npz + record.json, and the attention
masks of its checkpoint at a few training stages (for notebooks/attention_masks.ipynb).

`RunViewer(run_dir).show()` in JupyterLab: pick a category, defect type and image; see the
image, its ground truth and the anomaly-map overlay; move the threshold slider to see the
predicted region and that image's pixel F1 at the threshold; see A_prior / A_learn / A_final.
The "order" menu lists the worst false positives (good images, highest score first) or false
negatives (defective images, lowest score first). Every callback is a plain method and every
output is a widget value, so tests drive the viewer without a browser.
"""

import html
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from agpnet.data import denormalize, load_rgb
from agpnet.errors import AgpnetError

MAPS_KEYS = ("anomaly_maps", "masks", "scores", "labels", "paths", "categories", "defects")
ATTENTION_KEYS = ("a_prior", "a_learn", "a_final")
DPI = 72  # widget pictures: small and quick to redraw
ALL = "all"
ORDERS = {
    "file": "file name",
    "score": "score, highest first",
    "false_positives": "false positives: good images, highest score first",
    "false_negatives": "false negatives: defective images, lowest score first",
}


@dataclass
class RunData:
    """A run folder and its maps.npz arrays (see docs/contracts.md)."""

    run_dir: Path
    maps: dict[str, np.ndarray]


def load_run(run_dir: str | Path) -> RunData:
    """Read maps.npz of a finished run folder (the run must have used save_maps=true)."""
    run_dir = Path(run_dir)
    record_path, maps_path = run_dir / "record.json", run_dir / "maps.npz"
    if not record_path.is_file():
        raise AgpnetError(f"{record_path}: no run record (expected a finished run folder)")
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
    maps["anomaly_maps"] = maps["anomaly_maps"].astype(np.float32)
    return RunData(run_dir=run_dir, maps=maps)


def load_image(path: str, size: tuple[int, int]) -> np.ndarray:
    """(H, W, 3) uint8 image (maps.npz stores absolute paths) resized to `size`; mid-grey when the
    file is gone (e.g. the run folder was copied to another machine)."""
    from PIL import Image

    if not Path(path).is_file():
        return np.full((*size, 3), 128, dtype=np.uint8)
    return np.asarray(load_rgb(path).resize((size[1], size[0]), Image.BILINEAR))


def pixel_f1(anomaly_map: np.ndarray, mask: np.ndarray, threshold: float) -> float:
    """F1 of the region map >= threshold against the mask; NaN when both are empty."""
    predicted = anomaly_map >= threshold
    mask = mask.astype(bool)
    tp = np.count_nonzero(predicted & mask)
    wrong = np.count_nonzero(predicted ^ mask)
    return float("nan") if tp + wrong == 0 else 2 * tp / (2 * tp + wrong)


class RunViewer:
    """Widget viewer over one run folder. State after every callback: `indices` (maps.npz rows
    listed, in order), `current` (the row shown), `f1` (pixel F1 of that image at the threshold),
    `picture.value` / `attention.value` (PNG bytes) and `info.value` (HTML)."""

    def __init__(self, run_dir: str | Path, threshold: float | None = None):
        import ipywidgets as w

        self.run = load_run(run_dir)
        maps = self.run.maps
        self.size = tuple(maps["anomaly_maps"].shape[1:])
        self.vmin, self.vmax = float(maps["anomaly_maps"].min()), float(maps["anomaly_maps"].max())
        self._images: dict[int, np.ndarray] = {}
        self._holding = False
        self._attention_for: int | None = None
        self.indices: list[int] = []
        self.current: int | None = None
        self.f1 = float("nan")

        categories = sorted(set(maps["categories"].tolist()))
        step = (self.vmax - self.vmin) / 200 or 1e-3
        self.category = w.Dropdown(options=[ALL, *categories], value=ALL, description="category")
        self.defect = w.Dropdown(options=[ALL], value=ALL, description="defect")
        self.order = w.Dropdown(options=[(label, key) for key, label in ORDERS.items()], value="file",
                                description="order")
        self.image = w.Dropdown(options=[], description="image", layout=w.Layout(width="60%"))
        self.threshold = w.FloatSlider(min=self.vmin, max=self.vmax + step, step=step, readout_format=".4g",
                                       value=threshold if threshold is not None else (self.vmin + self.vmax) / 2,
                                       description="threshold", continuous_update=False,
                                       layout=w.Layout(width="60%"))
        self.info = w.HTML()
        self.picture = w.Image(format="png")
        self.attention = w.Image(format="png")

        self.category.observe(self.on_category, names="value")
        self.defect.observe(self.on_filter, names="value")
        self.order.observe(self.on_filter, names="value")
        self.image.observe(self.on_image, names="value")
        self.threshold.observe(self.on_threshold, names="value")
        self.on_category()

    def show(self):
        """The widget box (display it, or leave it as a cell's last expression)."""
        import ipywidgets as w

        return w.VBox([w.HBox([self.category, self.defect, self.order]), self.image, self.threshold, self.info,
                       self.picture, self.attention])

    # Callbacks (traitlets observers; `change` is unused so tests can call them directly).

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
        options = [(f"{Path(str(maps['paths'][i])).name}  [{maps['defects'][i]}]  score {maps['scores'][i]:.4g}", int(i))
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
        self.render()

    def on_threshold(self, change=None):
        if self._holding:
            return
        self.render()

    # Outputs.

    def render(self):
        """Recompute the pixel F1 and redraw the info text and both pictures for `current`."""
        from agpnet.plots import attention_panels, heatmap_overlay, to_png

        if self.current is None:
            self.f1 = float("nan")
            self.info.value = "<p>No image matches this selection.</p>"
            self.picture.value = b""
            self.attention.value = b""
            self._attention_for = None
            return
        i, maps = self.current, self.run.maps
        threshold = self.threshold.value
        anomaly_map, mask = maps["anomaly_maps"][i], maps["masks"][i].astype(bool)
        self.f1 = pixel_f1(anomaly_map, mask, threshold)
        above = int(np.count_nonzero(anomaly_map >= threshold))
        false_pixels = int(np.count_nonzero((anomaly_map >= threshold) & ~mask))
        label = "defective" if int(maps["labels"][i]) else "good"
        f1_text = "n/a (no defect pixels and none predicted)" if np.isnan(self.f1) else f"{self.f1:.3f}"
        rank = self.indices.index(i) + 1 if i in self.indices else "-"
        fields = [("file", str(maps["paths"][i])), ("category", str(maps["categories"][i])),
                  ("defect", f"{maps['defects'][i]} ({label})"), ("image score", f"{float(maps['scores'][i]):.4g}"),
                  ("rank in list", f"{rank} of {len(self.indices)}"),
                  ("pixel F1 at threshold", f"{f1_text} ({above} px above, {false_pixels} outside the mask)")]
        self.info.value = "<table>" + "".join(
            f"<tr><th style='text-align:left;padding-right:1em'>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>"
            for k, v in fields) + "</table>"
        image = self._image(i)
        figure = heatmap_overlay(image, anomaly_map, mask, threshold=threshold, vmin=self.vmin, vmax=self.vmax)
        self.picture.value = to_png(figure, dpi=DPI)
        if self._attention_for != i and all(k in maps for k in ATTENTION_KEYS):  # does not depend on the threshold
            figure = attention_panels(image, *(maps[k][i].astype(np.float32) for k in ATTENTION_KEYS))
            self.attention.value = to_png(figure, dpi=DPI)
            self._attention_for = i

    def worst_false_positives(self, n: int = 10) -> list[tuple[str, float]]:
        """(path, score) of the good images with the highest scores, in the selected category."""
        rows = self._ordered(self._rows(self.category.value, ALL), "false_positives")[:n]
        return [(str(self.run.maps["paths"][i]), float(self.run.maps["scores"][i])) for i in rows]

    def worst_false_negatives(self, n: int = 10) -> list[tuple[str, float]]:
        """(path, score) of the defective images with the lowest scores, in the selected category."""
        rows = self._ordered(self._rows(self.category.value, ALL), "false_negatives")[:n]
        return [(str(self.run.maps["paths"][i]), float(self.run.maps["scores"][i])) for i in rows]

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


def runs_with_maps(runs_dir: str | Path) -> list[Path]:
    """Complete run folders below runs_dir that have maps.npz and checkpoint.pt, multi-class first."""
    from agpnet.tables import load_records

    found = [r for r in load_records(runs_dir)
             if (Path(r["run_dir"]) / "maps.npz").is_file() and (Path(r["run_dir"]) / "checkpoint.pt").is_file()]
    found.sort(key=lambda r: (r.get("setting") != "multi-class", r["run_dir"]))
    return [Path(r["run_dir"]) for r in found]


def heatmap_examples(run_dir: str | Path, n_defective: int = 3, n_good: int = 1):
    """Figure: the highest-scored defective images (one per category in turn) and the
    highest-scored good images of a run (image | ground truth | anomaly map, one scale)."""
    from agpnet.plots import heatmap_grid

    run = load_run(run_dir)
    maps = run.maps
    good = [int(i) for i in np.argsort(-maps["scores"].astype(float), kind="stable") if int(maps["labels"][i]) == 0]
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

    Returns one dict per image: title, image (S, S, 3), anomaly_map, mask (maps.npz size) and
    stages [{progress, alpha, ratio, a_prior, a_learn, a_final (h, w), image_perturbed (S, S, 3),
    feature_noise_std (h, w)}] with alpha(t) and the mask ratio r(t) of the run's schedules."""
    import torch

    from agpnet.data import AnomalyDataset, Sample
    from agpnet.environment import resolve_device
    from agpnet.model.perturbation import schedule
    from agpnet.train import load_checkpoint

    run = load_run(run_dir)
    checkpoint = run.run_dir / "checkpoint.pt"
    if not checkpoint.is_file():
        raise AgpnetError(f"{checkpoint}: no checkpoint in the run folder")
    device = resolve_device(device)
    model, _ = load_checkpoint(checkpoint, device)
    model.eval()
    cfg = model.cfg
    rows = _pick_defective(run.maps, n_images)
    samples = [Sample(image=Path(str(run.maps["paths"][i])),
                      category=str(run.maps["categories"][i]), label=1, defect=str(run.maps["defects"][i]), mask=None)
               for i in rows]
    dataset = AnomalyDataset(samples, image_size=cfg.image_size, mean=model.mean, std=model.std)
    images = torch.stack([dataset[k]["image"] for k in range(len(samples))]).to(device)
    results = [{"title": f"{run.maps['categories'][i]} / {run.maps['defects'][i]} / {Path(str(run.maps['paths'][i])).name}",
                "image": denormalize(images[k], model.mean, model.std),
                "anomaly_map": run.maps["anomaly_maps"][i], "mask": run.maps["masks"][i].astype(bool), "stages": []}
               for k, i in enumerate(rows)]
    with torch.inference_mode():
        for t in progresses:
            torch.manual_seed(0)  # the same noise draw at every stage
            masks = model.attention_masks(images, progress=t)
            preview = model.perturbation_preview(images, progress=t)
            for k, result in enumerate(results):
                result["stages"].append({
                    "progress": float(t),
                    "alpha": cfg.alpha_max * schedule(cfg.alpha_schedule, t, cfg.schedule_steps),
                    "ratio": cfg.mask_ratio_max * schedule(cfg.mask_ratio_schedule, t, cfg.schedule_steps),
                    **{key: None if masks.get(key) is None else masks[key][k].float().cpu().numpy()
                       for key in ATTENTION_KEYS},
                    "image_perturbed": denormalize(preview["image_perturbed"][k], model.mean, model.std),
                    "feature_noise_std": preview["feature_noise_std"][k].float().cpu().numpy(),
                })
    return results


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
