"""Figures for notebooks, the viewer and reports. Every function takes arrays or records and
returns a matplotlib Figure (not registered with pyplot: nothing is shown twice or leaked).

Conventions: an image is (H, W, 3) in [0, 1] (float) or uint8; an anomaly map is (H, W) float
(any scale); a mask is (H, W) bool; attention maps are (h, w) on the token grid. Anomaly maps
use the "jet" colour map, attention maps "viridis"; the ground truth is a green contour and the
thresholded prediction a dashed white one.
"""

import io

import numpy as np
import pandas as pd
from matplotlib.cm import ScalarMappable
from matplotlib.figure import Figure

from agpnet.metrics import HEADLINE_KEYS, METRICS

PANEL_INCHES = 2.4
ANOMALY_CMAP = "jet"
ATTENTION_CMAP = "viridis"


def to_png(fig: Figure, dpi: int = 100, tight: bool = True) -> bytes:
    """PNG bytes of a figure (for ipywidgets.Image and files). tight: cropped to what is drawn;
    else exactly the figure's size (figsize * dpi pixels, as the viewer shows it)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight" if tight else None)
    return buffer.getvalue()


def loss_curve(loss_per_epoch, title: str = "training loss") -> Figure:
    """Loss per epoch (a list, or a run record with `loss_per_epoch`)."""
    if isinstance(loss_per_epoch, dict):
        loss_per_epoch = loss_per_epoch["loss_per_epoch"]
    losses = np.asarray(loss_per_epoch, dtype=float)
    fig = Figure(figsize=(4.5, 3))
    ax = fig.subplots()
    ax.plot(np.arange(1, len(losses) + 1), losses, marker="o" if len(losses) < 30 else None)
    ax.set(xlabel="epoch", ylabel="loss", title=title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def draw_overlay(ax, image, anomaly_map, mask=None, threshold: float | None = None, vmin=None, vmax=None,
                 alpha: float = 0.5):
    """Image with the anomaly map on top, the ground-truth contour (green) and, given a
    threshold, the outline of the predicted region map >= threshold (dashed white; along the
    image border where the region reaches it, so a region covering the whole image is drawn too)."""
    image = _as_rgb(image)
    anomaly_map = _resize_like(np.asarray(anomaly_map, dtype=np.float32), image.shape[:2])
    ax.imshow(image)
    shown = ax.imshow(anomaly_map, cmap=ANOMALY_CMAP, alpha=alpha, vmin=vmin, vmax=vmax)
    if mask is not None and np.any(mask):
        ax.contour(_resize_like(np.asarray(mask, dtype=np.float32), image.shape[:2]), levels=[0.5],
                   colors="lime", linewidths=1.2)
    if threshold is not None and np.any(anomaly_map >= threshold):
        _outline(ax, anomaly_map >= threshold, gid="predicted")
    _clean(ax)
    return shown


def viewer_figure(image, anomaly_map, mask, threshold: float, vmin: float, vmax: float, scale_label: str,
                  scores, labels, score: float, histogram_title: str, reference=None,
                  size_px: tuple[int, int] = (960, 540), dpi: int = 100) -> Figure:
    """The viewer's picture, exactly `size_px` (width, height) pixels at `dpi`.

    Top row: image | ground truth | anomaly map over the image (ground truth green, predicted
    region map >= threshold dashed white) | predicted mask (filled white, ground truth green).
    Bottom row: `reference` = (image, anomaly_map, title) of a normal image, or None, drawn as
    image | map on the same scale; then the histogram of image `scores` (N,) of good (labels 0)
    and defective (1) images with the threshold and this image's `score`. A colorbar labelled
    `scale_label` spans both rows, with the threshold marked."""
    fig = Figure(figsize=(size_px[0] / dpi, size_px[1] / dpi), dpi=dpi)
    # A fixed layout (fractions of the figure): constrained layout would double the drawing time.
    grid = fig.add_gridspec(2, 5, width_ratios=[1, 1, 1, 1, 0.07], left=0.005, right=0.93, top=0.95,
                            bottom=0.09, wspace=0.06, hspace=0.22)
    top = [fig.add_subplot(grid[0, k]) for k in range(4)]
    image = _as_rgb(image)
    anomaly_map = np.asarray(anomaly_map, dtype=np.float32)
    truth = np.zeros(image.shape[:2], bool) if mask is None else _resize_like(np.asarray(mask, np.float32),
                                                                             image.shape[:2]) > 0.5
    top[0].imshow(image)
    top[1].imshow(truth, cmap="gray", vmin=0, vmax=1)
    shown = draw_overlay(top[2], image, anomaly_map, truth, threshold, vmin, vmax)
    predicted = _resize_like(anomaly_map, image.shape[:2]) >= threshold
    top[3].imshow(predicted, cmap="gray", vmin=0, vmax=1)
    if truth.any():
        top[3].contour(truth.astype(np.float32), levels=[0.5], colors="lime", linewidths=1.2)
    for ax, title in zip(top, ("image", "ground truth", "anomaly map", f"predicted: map ≥ {threshold:.4g}")):
        ax.set_title(title, fontsize=9)
        _clean(ax)

    bottom = [fig.add_subplot(grid[1, k]) for k in range(2)]
    if reference is None:
        for ax in bottom:
            _clean(ax)
            ax.set_axis_off()
        bottom[0].text(0, 0.5, "no other normal test image\nin this category", fontsize=9, va="center",
                       transform=bottom[0].transAxes)
    else:
        ref_image, ref_map, ref_title = reference
        bottom[0].imshow(_as_rgb(ref_image))
        bottom[0].set_title(ref_title, fontsize=9)
        _clean(bottom[0])
        draw_overlay(bottom[1], ref_image, ref_map, None, threshold, vmin, vmax)
        bottom[1].set_title("its map (same scale)", fontsize=9)
    histogram_cell = grid[1, 2:4].subgridspec(1, 2, width_ratios=[0.13, 1], wspace=0)  # room for its y label
    score_histogram(fig.add_subplot(histogram_cell[0, 1]), scores, labels, threshold, score, histogram_title)

    colorbar = fig.colorbar(ScalarMappable(norm=shown.norm, cmap=shown.cmap), cax=fig.add_subplot(grid[:, 4]))
    marked = min(max(threshold, vmin), vmax)  # at the end of the bar when outside the scale
    outside = " above this scale" if threshold > vmax else " below this scale" if threshold < vmin else ""
    colorbar.set_label(f"{scale_label}   (▶ threshold{outside})", fontsize=9)
    colorbar.ax.tick_params(labelsize=8)
    colorbar.ax.axhline(marked, color="black", linewidth=3)
    colorbar.ax.axhline(marked, color="white", linewidth=1.2, linestyle="dashed")
    colorbar.ax.plot([-0.1], [marked], marker=">", markersize=8, color="black", clip_on=False,
                     transform=colorbar.ax.get_yaxis_transform())
    return fig


def score_histogram(ax, scores, labels, threshold: float, score: float | None = None, title: str = ""):
    """Image scores of good (green) and defective (red) images on shared bins, the threshold
    (dashed) and, given, one image's score (solid)."""
    scores, labels = np.asarray(scores, dtype=float), np.asarray(labels, dtype=int)
    bins = np.histogram_bin_edges(scores, bins=int(np.clip(len(scores) // 2, 5, 40)))
    for label, name, color in ((0, "good", "tab:green"), (1, "defective", "tab:red")):
        part = scores[labels == label]
        ax.hist(part, bins=bins, color=color, alpha=0.55, label=f"{name} ({len(part)})")
    ax.axvline(threshold, color="black", linestyle="dashed", linewidth=1.2, label="threshold")
    if score is not None:
        ax.axvline(score, color="tab:blue", linewidth=1.5, label="this image")
    ax.set_xlabel("image score", fontsize=9)
    ax.set_ylabel("images", fontsize=9)
    ax.set_title(title, fontsize=9)
    ax.tick_params(labelsize=8)
    ax.legend(fontsize=7, frameon=False)


def heatmap_grid(images, anomaly_maps, masks, titles=None, vmin=None, vmax=None) -> Figure:
    """Several images, one row each: image | ground truth | anomaly-map overlay (shared scale)."""
    n = len(images)
    fig = Figure(figsize=(3 * PANEL_INCHES, n * PANEL_INCHES + 0.2))
    axes = np.atleast_2d(fig.subplots(n, 3))
    for i in range(n):
        _heatmap_row(fig, axes[i], images[i], anomaly_maps[i], masks[i] if masks is not None else None, None,
                     vmin, vmax)
        if titles is not None:
            axes[i, 0].set_title(titles[i], fontsize=8)
    fig.tight_layout()
    return fig


def attention_panels(image, a_prior, a_learn, a_final, image_perturbed=None, feature_noise_std=None,
                     anomaly_map=None, mask=None, title: str | None = None) -> Figure:
    """One row: image, A_prior, A_learn, A_final [, image-perturbed, feature-noise std, anomaly map,
    ground truth] (panels given as None are left out)."""
    panels = _attention_row(image, a_prior, a_learn, a_final, image_perturbed, feature_noise_std, anomaly_map,
                            mask, "")
    fig = Figure(figsize=(len(panels) * PANEL_INCHES * 0.8, PANEL_INCHES))
    axes = np.atleast_1d(fig.subplots(1, len(panels)))
    for ax, panel in zip(axes, panels):
        _draw_panel(fig, ax, *panel)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def perturbation_stages(image, stages: list[dict], anomaly_map=None, mask=None,
                        title: str | None = None) -> Figure:
    """One row per training stage: image, A_prior, A_learn, A_final, image-perturbed,
    feature-noise std, then the final anomaly map and ground truth.

    Each stage: {"progress": t in [0, 1], "alpha": alpha(t), "ratio": r(t), "a_prior", "a_learn",
    "a_final": (h, w), "image_perturbed": (H, W, 3), "feature_noise_std": (h, w)}."""
    rows = []
    for stage in stages:
        label = f"t={stage['progress']:.2f}: alpha={stage['alpha']:.2f}, r={stage['ratio']:.2f}"
        rows.append(_attention_row(image, stage.get("a_prior"), stage.get("a_learn"), stage.get("a_final"),
                                   stage.get("image_perturbed"), stage.get("feature_noise_std"), anomaly_map,
                                   mask, label))
    n_cols = max(len(r) for r in rows)
    fig = Figure(figsize=(n_cols * PANEL_INCHES * 0.8, len(rows) * PANEL_INCHES * 0.9))
    axes = np.array(fig.subplots(len(rows), n_cols)).reshape(len(rows), n_cols)
    for row_axes, panels in zip(axes, rows):
        for ax, panel in zip(row_axes, panels):
            _draw_panel(fig, ax, *panel)
        for ax in row_axes[len(panels):]:
            ax.set_visible(False)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def ablation_plot(long: pd.DataFrame, factor: str, metrics=(*HEADLINE_KEYS, "mad")) -> Figure:
    """Metrics (keys of agpnet.metrics.METRICS; percent) against the values of one ablation factor;
    the mean over seeds with the std over seeds as error bars, and each seed as a dot. `long` is a
    `tables.ablation_frame` (its `metric` column holds the metrics' labels)."""
    import seaborn as sns

    metrics = [METRICS[k].label for k in metrics if METRICS[k].label in set(long["metric"])]
    fig = Figure(figsize=(3.2 * max(len(metrics), 1), 3.2))
    axes = np.atleast_1d(fig.subplots(1, max(len(metrics), 1)))
    data = long.assign(**{factor: long[factor].astype(str)})
    order = sorted(data[factor].unique())
    for ax, metric in zip(axes, metrics):
        part = data[data["metric"] == metric]
        sns.stripplot(data=part, x=factor, y="value", order=order, ax=ax, color="0.6", size=4, jitter=0.08)
        sns.pointplot(data=part, x=factor, y="value", order=order, ax=ax, errorbar="sd", capsize=0.15,
                      linestyle="none", color="C0")
        ax.set(title=metric, ylabel="%", xlabel=factor)
        ax.tick_params(axis="x", labelrotation=20)
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def _heatmap_row(fig, axes, image, anomaly_map, mask, threshold, vmin, vmax):
    axes[0].imshow(_as_rgb(image))
    axes[0].set_title("image", fontsize=8)
    _clean(axes[0])
    shape = _as_rgb(image).shape[:2]
    if mask is None:
        truth = np.zeros(shape, dtype=bool)
    else:
        truth = _resize_like(np.asarray(mask, np.float32), shape) > 0.5
    axes[1].imshow(truth, cmap="gray", vmin=0, vmax=1)
    axes[1].set_title("ground truth", fontsize=8)
    _clean(axes[1])
    shown = draw_overlay(axes[2], image, anomaly_map, mask, threshold, vmin, vmax)
    axes[2].set_title("anomaly map", fontsize=8)
    fig.colorbar(shown, ax=axes[2], fraction=0.046, pad=0.04)


def _attention_row(image, a_prior, a_learn, a_final, image_perturbed, feature_noise_std, anomaly_map, mask,
                   label):
    """Panels (title, array, kind) of one row; None arrays are left out."""
    panels = [(f"image\n{label}" if label else "image", image, "rgb"),
              ("A_prior", a_prior, "attention"), ("A_learn", a_learn, "attention"),
              ("A_final", a_final, "attention"), ("image-perturbed", image_perturbed, "rgb"),
              ("feature-noise std", feature_noise_std, "attention"),
              ("anomaly map", anomaly_map, "anomaly"), ("ground truth", mask, "mask")]
    return [p for p in panels if p[1] is not None]


def _draw_panel(fig, ax, title, array, kind):
    if kind == "rgb":
        ax.imshow(_as_rgb(array))
    elif kind == "mask":
        ax.imshow(np.asarray(array, dtype=bool), cmap="gray", vmin=0, vmax=1)
    else:
        cmap = ANOMALY_CMAP if kind == "anomaly" else ATTENTION_CMAP
        shown = ax.imshow(np.asarray(array, dtype=np.float32), cmap=cmap)
        fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.04)
    ax.set_title(title, fontsize=8)
    _clean(ax)


def _as_rgb(image) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=-1)
    if image.dtype == np.uint8:
        return image
    return np.clip(image.astype(np.float32), 0.0, 1.0)


def _resize_like(array: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a (h, w) array to `shape` (maps and masks stored smaller than the
    image)."""
    if array.shape == tuple(shape):
        return array
    rows = (np.arange(shape[0]) * array.shape[0] / shape[0]).astype(int)
    cols = (np.arange(shape[1]) * array.shape[1] / shape[1]).astype(int)
    return array[rows][:, cols]


def _outline(ax, region: np.ndarray, gid: str, color: str = "white"):
    """Dashed outline of a (H, W) bool region along pixel edges: the region is padded with a
    False border, so it closes along the image border too."""
    padded = np.pad(region.astype(np.float32), 1)
    y, x = np.arange(-1, region.shape[0] + 1), np.arange(-1, region.shape[1] + 1)
    outline = ax.contour(x, y, padded, levels=[0.5], colors=color, linewidths=1.2, linestyles="dashed")
    outline.set_gid(gid)
    outline.set_clip_on(False)  # the part along the image border stays whole
    ax.set(xlim=(-0.5, region.shape[1] - 0.5), ylim=(region.shape[0] - 0.5, -0.5))


def _clean(ax):
    ax.set_xticks([])
    ax.set_yticks([])
