"""Helpers for the report / table / viewer / sweep / notebook tests: run folders with records made
by agpnet.records and maps.npz written following docs/contracts.md, tiny notebooks, the papermill
kernel check."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from agpnet.config import RunConfig
from agpnet.metrics import MAD_KEYS, METRICS
from agpnet.records import build_record

REPO = Path(__file__).resolve().parents[1]


def metric_dict(rng: np.random.Generator) -> dict:
    values = {k: float(rng.uniform(0.5, 1.0)) for k in MAD_KEYS}
    values["mad"] = float(np.mean([values[k] for k in MAD_KEYS]))
    return values


def write_run(
    run_dir: Path,
    dataset: str = "mvtec",
    setting: str = "multi-class",
    categories=("bottle", "cable"),
    seed: int = 0,
    shots: int | None = None,
    model: dict | None = None,
    train: dict | None = None,
    pretrained: bool = True,
    metrics: dict | None = None,
    rng_seed: int | None = None,
    status: str = "complete",
) -> dict:
    """A record.json made by agpnet.records.build_record; metrics random unless given (fractions).
    `model` / `train`: config fields to change from their defaults (the epochs are 2)."""
    rng = np.random.default_rng(rng_seed if rng_seed is not None else hash((str(run_dir), seed)) % 2**32)
    if metrics is None:
        metrics = {c: metric_dict(rng) for c in categories}
        metrics["mean"] = {k: float(np.mean([metrics[c][k] for c in categories])) for k in METRICS}
    cfg = RunConfig.from_flat({
        "dataset": dataset, "root": "/data/x", "setting": setting, "shots": shots,
        "category": categories[0] if setting == "one-class" else None,
        "epochs": 2, "seed": seed, "weights": "hub" if pretrained else "random", "device": "cpu",
        "out_dir": str(run_dir), **(model or {}), **(train or {}),
    })
    record = build_record(
        cfg,
        categories=list(categories),
        metrics=metrics,
        n_test=4 * len(categories),
        weights={
            "source": "timm hub vit_small_patch16_224.dino" if pretrained else "random init",
            "pretrained": pretrained,
            "warning": None if pretrained else "backbone weights are random: numbers are not meaningful",
        },
        environment={
            "python": "3.11", "torch": "2.x", "timm": "1.0", "numpy": "2", "agpnet": "0.1.0",
            "agpnet_commit": "0123456789abcdef0123456789abcdef01234567", "device": "cpu",
            "machine": "Linux x86_64, 2 CPUs", "cpu_count": 2, "gpu": None,
        },
        timings={"eval_s": 1.0, "eval_img_s": 10.0, "train_s": 1.0, "train_img_s": 10.0},
        resolution="input resolution 256x256 px (resize, no crop)",
        precision="fp32",
        epoch="final (no epoch selection on the test set)",
        loss_per_epoch=[1.0, 0.5],
        artifacts={"checkpoint": "checkpoint.pt", "maps": None},
        started="2025-01-01T00:00:00",
        finished="2025-01-01T00:01:00",
        n_train=8 * len(categories),
        few_shot_files=None,
    )
    record["status"] = status
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "record.json").write_text(json.dumps(record, indent=2))
    return record


def write_maps(
    run_dir: Path,
    categories=("bottle", "cable"),
    per_category: int = 4,
    size: int = 32,
    grid: int = 4,
    seed: int = 0,
) -> dict:
    """maps.npz with images on disk: per category half good, half defective (a square defect whose
    map is high), known scores. Returns the arrays."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    images_dir = run_dir / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    arrays = {
        k: []
        for k in (
            "anomaly_maps",
            "masks",
            "scores",
            "labels",
            "paths",
            "categories",
            "defects",
            "a_prior",
            "a_learn",
            "a_final",
        )
    }
    for category in categories:
        for i in range(per_category):
            defective = i % 2 == 1
            mask = np.zeros((size, size), dtype=bool)
            amap = rng.uniform(0, 0.2, (size, size)).astype(np.float32)
            if defective:
                mask[8:16, 8:16] = True
                amap[8:16, 8:16] += 0.6 + 0.1 * i
            path = images_dir / f"{len(arrays['paths']):03d}.png"
            Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(path)
            arrays["anomaly_maps"].append(amap.astype(np.float16))
            arrays["masks"].append(mask)
            arrays["scores"].append(float(amap.max()))
            arrays["labels"].append(int(defective))
            arrays["paths"].append(str(path))
            arrays["categories"].append(category)
            arrays["defects"].append("scratch" if defective else "good")
            for key in ("a_prior", "a_learn", "a_final"):
                arrays[key].append(rng.uniform(0, 1, (grid, grid)).astype(np.float16))
    arrays = {k: np.asarray(v) for k, v in arrays.items()}
    arrays["labels"] = arrays["labels"].astype(np.int8)
    arrays["scores"] = arrays["scores"].astype(np.float32)
    np.savez_compressed(run_dir / "maps.npz", **arrays)
    return arrays


def write_notebook(path: Path, parameters: str, body: str) -> Path:
    """A tiny nbformat-4 notebook: a `parameters` cell and one code cell."""
    import nbformat
    from nbformat import v4

    nb = v4.new_notebook()
    nb.metadata = {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}}
    params = v4.new_code_cell(parameters)
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, v4.new_code_cell(body)]
    nbformat.write(nb, path)
    return path


def require_kernel() -> None:
    """Skip unless papermill can start the `python3` kernel with this interpreter."""
    try:
        from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel
    except ImportError:
        pytest.skip("jupyter_client is not installed")
    try:
        spec = KernelSpecManager().get_kernel_spec("python3")
    except NoSuchKernel:
        pytest.skip("no Jupyter kernel named python3 (run: python -m ipykernel install --sys-prefix)")
    if spec.argv[0] not in ("python", "python3", sys.executable):
        pytest.skip(
            f"the python3 kernel runs {spec.argv[0]}, not {sys.executable} "
            "(run: python -m ipykernel install --sys-prefix)"
        )


def chromium() -> str:
    """Path of a Chromium binary; installs Debian's chromium once when running as root, else skips."""
    found = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if found:
        return found
    marker = Path("/tmp/agpnet-chromium-install-tried")
    if hasattr(os, "geteuid") and os.geteuid() == 0 and not marker.exists():
        marker.touch()
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        try:
            for command in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", "chromium"]):
                subprocess.run(command, capture_output=True, timeout=900, env=env, check=False)
        except (OSError, subprocess.TimeoutExpired):
            pass
        found = shutil.which("chromium")
        if found:
            return found
    pytest.skip(
        "headless Chromium is not available (apt-get install chromium, as root) — HTML rendering not checked"
    )


EVIL_CATEGORY = "<script>alert(1)</script>&co"  # a category name that must come out escaped
_BUILT: dict = {}


def demo_report(tmp_path_factory) -> tuple[Path, Path, Path]:
    """(runs_dir, report_dir, index.html) of a report over hand-written runs, built once per session:
    two configurations (noise attention / none) x two seeds, the latter again NOT pretrained (a
    method of its own, outside the noise ablation), and a one-class run of a category named
    EVIL_CATEGORY. No checkpoint: the attention page says so."""
    if "report" not in _BUILT:
        require_kernel()
        from agpnet.report import build_report

        base = tmp_path_factory.mktemp("report")
        runs = base / "runs"
        for seed in (0, 1):
            write_run(runs / f"attention/seed{seed}", seed=seed, categories=("bottle", "cable"))
            write_run(runs / f"none/seed{seed}", seed=seed, categories=("bottle", "cable"), model={"noise": "none"})
            write_run(runs / f"none-random/seed{seed}", seed=seed, categories=("bottle", "cable"),
                      model={"noise": "none"}, pretrained=False)
        write_run(runs / "one-class", setting="one-class", categories=(EVIL_CATEGORY,))
        index = build_report(runs, base / "report")
        _BUILT["report"] = (runs, base / "report", index)
    return _BUILT["report"]
