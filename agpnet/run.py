"""One experiment: read the data, build AGPNet, train, evaluate the final epoch, write the record.

The run folder holds `record.json` (written last, atomically: its presence with
status "complete" means the run finished), `checkpoint.pt` and, when asked, `maps.npz`.
"""

import hashlib
import logging
from pathlib import Path

from agpnet.atomic import write_json
from agpnet.config import DataConfig, RunConfig, TrainConfig
from agpnet.data import AnomalyDataset, load_split
from agpnet.environment import describe_environment, timestamp
from agpnet.errors import AgpnetError
from agpnet.evaluate import EvalResult, evaluate
from agpnet.model import build_model
from agpnet.model.checkpoint import CHECKPOINT_NAME, load_checkpoint
from agpnet.progress import PROGRESS_NAME
from agpnet.records import build_record, is_complete
from agpnet.runtime import resolve_device
from agpnet.train import fit

log = logging.getLogger(__name__)


def run_experiment(cfg: RunConfig, resume: bool = False, progress: bool = True,
                   overwrite: bool = False) -> dict:
    """Train and evaluate one configuration; returns the run record (also in out_dir/record.json).

    Everything is checked (data, weights, output folder) before the folder is touched. A folder
    holding a complete run is only reused with `resume` (continue it) or `overwrite` (replace it)."""
    started = timestamp()
    out = Path(cfg.out_dir)
    check_run_folder(out, resume or overwrite)
    device = resolve_device(cfg.device)
    split = load_split(cfg.data.dataset, cfg.data.root, cfg.data.setting, category=cfg.data.category,
                       shots=cfg.data.shots, seed=cfg.train.seed, options=cfg.data.reader_options())
    model, weights_info = build_model(cfg.model, weights=cfg.weights, device=device)
    size, fast_jpeg = cfg.model.image_size, cfg.data.fast_jpeg
    train_set = AnomalyDataset(split.train, image_size=size, mean=model.mean, std=model.std, cache=True,
                               fast_jpeg=fast_jpeg)
    test_set = AnomalyDataset(split.test, image_size=size, mean=model.mean, std=model.std,
                              fast_jpeg=fast_jpeg)
    log.info("run %s: %d training / %d test images, %s, device %s", out, len(train_set), len(test_set),
             ", ".join(split.categories), device)

    out.mkdir(parents=True, exist_ok=True)
    if not resume:  # a new run in an old folder: the old record, progress and maps no longer describe it
        for name in ("record.json", PROGRESS_NAME, "maps.npz"):
            (out / name).unlink(missing_ok=True)
    data = data_identity(cfg, split)
    trained = fit(model, train_set, cfg.train, out, device, resume=resume, progress=progress, data=data)
    result = _evaluate(model, test_set, device, cfg)
    record = _record(cfg, split, result, weights_info, device, started,
                     epoch="final (no epoch selection on the test set)",
                     checkpoint_file=CHECKPOINT_NAME, loss_per_epoch=trained.loss_per_epoch,
                     timings={"train_s": trained.train_seconds, "train_img_s": trained.images_per_second,
                              "features_s": trained.features_seconds, "epoch_s": trained.epoch_seconds},
                     n_train=len(train_set), few_shot_files=split.few_shot_files, data=data,
                     segments=trained.segments)
    write_json(out / "record.json", record)
    return record


def check_run_folder(out: Path, may_replace: bool, resumable: bool = True) -> None:
    """`out` must be a folder (or not exist yet), and must not hold a complete run unless `may_replace`
    (`resumable`: the command has --resume, so the message offers it)."""
    if out.exists() and not out.is_dir():
        raise AgpnetError(f"{out}: expected a folder, found a file")
    record = out / "record.json"
    if not may_replace and is_complete(record):
        resume = ", --resume to continue it" if resumable else ""
        raise AgpnetError(f"{record}: a complete run is already in this folder; "
                          f"use --overwrite to replace it{resume}, or another --out")


def data_identity(cfg: RunConfig, split) -> dict:
    """What identifies a run's training data (stored in its checkpoint; a resume must match it):
    dataset, resolved root, setting, categories, shots, seed, decoding, a sha256 of the training
    file list (paths relative to the root), and one of each file's path, size and modification
    time (an image replaced under the same name changes it)."""
    root = Path(cfg.data.root).resolve()
    listed = sorted((_relative(sample.image, root), Path(sample.image).stat()) for sample in split.train)
    files = [name for name, _ in listed]
    stats = [f"{name}\t{stat.st_size}\t{stat.st_mtime_ns}" for name, stat in listed]
    return {
        "dataset": cfg.data.dataset,
        "root": str(root),
        "setting": cfg.data.setting,
        "categories": list(split.categories),
        "shots": cfg.data.shots,
        "seed": cfg.train.seed,
        "fast_jpeg": cfg.data.fast_jpeg,
        "n_train": len(files),
        "train_files_sha256": hashlib.sha256("\n".join(files).encode()).hexdigest(),
        "train_files_stat_sha256": hashlib.sha256("\n".join(stats).encode()).hexdigest(),
    }


def _relative(path: Path, root: Path) -> str:
    path = Path(path).resolve()
    return path.relative_to(root).as_posix() if path.is_relative_to(root) else path.as_posix()


def evaluate_checkpoint(checkpoint: str, dataset: str, root: str, setting: str | None = None,
                        category: str | None = None, shots: int | None = None, fast_jpeg: bool = False,
                        device: str = "auto", batch_size: int = 16,
                        save_maps: bool = False, out_dir: str = "runs/eval", resolution: str = "input",
                        overwrite: bool = False, precision: str = "fp32",
                        options: dict | None = None) -> dict:
    """Evaluate a saved model on a dataset's test split; writes and returns a run record (a folder
    holding a complete record is only reused with `overwrite`). `options`: per-dataset reader
    options (DataConfig fields such as realiad_split; DataConfig.reader_options()).

    The record stands for the method's result, so the checkpoint must hold a finished training
    (all its epochs) and be evaluated on its own dataset, setting and shots, on categories it was
    trained on (all of them or some); `setting`, `category` and `shots` default to its own. The
    training data's identity (the checkpoint's `data`) goes into the record."""
    started = timestamp()
    out = Path(out_dir)
    if out.resolve() == Path(checkpoint).resolve().parent:
        raise AgpnetError(f"--out {out_dir}: that is the checkpoint's own run folder; "
                          "its record.json would be replaced. Expected another folder")
    check_run_folder(out, overwrite, resumable=False)
    torch_device = resolve_device(device)
    model, meta = load_checkpoint(checkpoint, torch_device)
    _check_finished(checkpoint, meta)
    trained = meta.get("data") or {}  # None in checkpoints of fit() called without a data identity
    setting = setting or trained.get("setting", "multi-class")
    if category is None and trained.get("categories"):
        category = ",".join(trained["categories"])
    if shots is None and setting == "few-shot":
        shots = trained.get("shots")
    cfg = RunConfig(model=model.cfg, train=TrainConfig(**meta["train_config"]), weights=meta["weights"],
                    device=device, out_dir=str(out_dir))
    cfg.data = DataConfig(dataset=dataset, root=str(root), setting=setting, category=category, shots=shots,
                          fast_jpeg=fast_jpeg, **(options or {}))
    cfg.eval.eval_batch_size, cfg.eval.save_maps, cfg.eval.eval_resolution = batch_size, save_maps, resolution
    cfg.eval.eval_precision = precision
    if trained:
        _check_trained_on(checkpoint, trained, dataset=dataset, setting=setting, shots=shots)
    split = load_split(dataset, root, setting, category=category, shots=shots, seed=cfg.train.seed,
                       options=cfg.data.reader_options())
    unseen = [c for c in split.categories if trained and c not in trained["categories"]]
    if unseen:
        raise AgpnetError(f"{checkpoint}: not trained on {', '.join(unseen)} (trained on "
                          f"{', '.join(trained['categories'])}); its numbers there would be recorded as the "
                          "method's result. Expected (some of) its categories")
    test_set = AnomalyDataset(split.test, image_size=model.cfg.image_size, mean=model.mean, std=model.std,
                              fast_jpeg=fast_jpeg)
    out.mkdir(parents=True, exist_ok=True)
    for name in ("record.json", "maps.npz"):
        (out / name).unlink(missing_ok=True)
    result = _evaluate(model, test_set, torch_device, cfg)
    record = _record(cfg, split, result, meta["weights_info"], torch_device, started,
                     epoch=f"checkpoint after epoch {meta['epoch']}", checkpoint_file=str(checkpoint),
                     loss_per_epoch=meta["loss_per_epoch"], timings={}, checkpoint=str(checkpoint),
                     **{name: meta[name] for name in ("data", "segments") if meta.get(name)})
    write_json(out / "record.json", record)
    return record


def _check_finished(checkpoint: str, meta: dict) -> None:
    """A checkpoint of an interrupted run (fewer epochs than its config trains) is refused."""
    epochs = meta["train_config"].get("epochs")
    if isinstance(epochs, int) and meta["epoch"] < epochs:
        raise AgpnetError(f"{checkpoint}: holds epoch {meta['epoch']} of {epochs} (an unfinished run); "
                          "finish it with `agpnet run --resume` first: its numbers would be recorded as the "
                          "method's result")


def _check_trained_on(checkpoint: str, trained: dict, **asked) -> None:
    """The evaluation's `asked` data fields (dataset, setting, shots) must be those the checkpoint
    was trained with; else one AgpnetError line naming each difference."""
    differ = [f"{k} {v!r} (trained: {trained.get(k)!r})" for k, v in asked.items() if v != trained.get(k)]
    if differ:
        raise AgpnetError(f"{checkpoint}: evaluated with {'; '.join(differ)}; its numbers would be recorded "
                          "as that result. Expected the dataset, setting and shots it was trained with")


def _evaluate(model, test_set, device, cfg: RunConfig) -> EvalResult:
    maps_path = Path(cfg.out_dir) / "maps.npz" if cfg.eval.save_maps else None
    return evaluate(model, test_set, device, batch_size=cfg.eval.eval_batch_size,
                    fpr_limit=cfg.eval.fpr_limit, maps_path=maps_path, maps_size=cfg.eval.maps_size,
                    num_workers=cfg.train.num_workers, amp=cfg.train.amp,
                    resolution=cfg.eval.eval_resolution, precision=cfg.eval.eval_precision)


def _record(cfg: RunConfig, split, result: EvalResult, weights_info: dict, device, started: str, epoch: str,
            checkpoint_file: str, loss_per_epoch: list[float], timings: dict, **optional) -> dict:
    """The run record (agpnet.records) of an evaluated model; `timings`: the training's, if any;
    `optional`: the records.OPTIONAL fields of this kind of run."""
    return build_record(
        cfg, categories=split.categories, metrics=result.metrics, n_test=result.n_images,
        weights=weights_info, environment=describe_environment(device),
        timings={"eval_s": result.seconds, "eval_img_s": result.images_per_second, **timings},
        resolution=result.resolution, precision=result.precision, epoch=epoch, loss_per_epoch=loss_per_epoch,
        artifacts={"checkpoint": checkpoint_file, "maps": "maps.npz" if cfg.eval.save_maps else None},
        started=started, finished=timestamp(), **optional)
