"""One experiment: read the data, build AGPNet, train, evaluate the final epoch, write the record.

The run folder holds `record.json` (written last, atomically: its presence with
status "complete" means the run finished), `checkpoint.pt` and, when asked, `maps.npz`.
"""

import datetime
import logging
from pathlib import Path

from agpnet.atomic import write_json
from agpnet.config import RunConfig
from agpnet.data import AnomalyDataset, load_split
from agpnet.environment import describe_environment, resolve_device
from agpnet.evaluate import evaluate
from agpnet.model import build_model
from agpnet.train import fit, load_checkpoint

log = logging.getLogger(__name__)


def run_experiment(cfg: RunConfig, resume: bool = False, progress: bool = True) -> dict:
    """Train and evaluate one configuration; returns the run record (also in out_dir/record.json)."""
    started = _now()
    out = Path(cfg.out_dir)
    device = resolve_device(cfg.device)
    split = load_split(cfg.data.dataset, cfg.data.root, cfg.data.setting, category=cfg.data.category,
                       shots=cfg.data.shots, seed=cfg.train.seed)
    model, weights_info = build_model(cfg.model, weights=cfg.weights, device=device)
    size = cfg.model.image_size
    train_set = AnomalyDataset(split.train, image_size=size, mean=model.mean, std=model.std, cache=True)
    test_set = AnomalyDataset(split.test, image_size=size, mean=model.mean, std=model.std)
    log.info("run %s: %d training / %d test images, %s, device %s", out, len(train_set), len(test_set),
             ", ".join(split.categories), device)

    trained = fit(model, train_set, cfg.train, out, device, resume=resume, progress=progress)
    maps_path = out / "maps.npz" if cfg.eval.save_maps else None
    result = evaluate(model, test_set, device, batch_size=cfg.eval.eval_batch_size, fpr_limit=cfg.eval.fpr_limit,
                      maps_path=maps_path, maps_size=cfg.eval.maps_size)
    record = {
        "status": "complete",
        "config": cfg.to_dict(),
        "dataset": cfg.data.dataset,
        "setting": cfg.data.setting,
        "categories": split.categories,
        "seed": cfg.train.seed,
        "few_shot_files": split.few_shot_files,
        "n_train": len(train_set),
        "n_test": len(test_set),
        "weights": weights_info,
        "environment": describe_environment(device),
        "loss_per_epoch": trained.loss_per_epoch,
        "timings": {
            "train_s": trained.train_seconds,
            "train_img_s": trained.images_per_second,
            "eval_s": result.seconds,
            "eval_img_s": result.images_per_second,
        },
        "eval": {"resolution": result.resolution, "score": cfg.model.score, "fpr_limit": cfg.eval.fpr_limit,
                 "epoch": "final (no epoch selection on the test set)"},
        "metrics": result.metrics,
        "artifacts": {"checkpoint": trained.checkpoint.name, "maps": maps_path.name if maps_path else None},
        "started": started,
        "finished": _now(),
    }
    write_json(out / "record.json", record)
    return record


def _now() -> str:
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")




def evaluate_checkpoint(checkpoint: str, dataset: str, root: str, setting: str = "multi-class",
                        category: str | None = None, device: str = "auto", batch_size: int = 16,
                        save_maps: bool = False, out_dir: str = "runs/eval") -> dict:
    """Evaluate a saved model on a dataset's test split; writes and returns a run record."""
    started = _now()
    out = Path(out_dir)
    torch_device = resolve_device(device)
    model, meta = load_checkpoint(checkpoint, torch_device)
    split = load_split(dataset, root, setting, category=category)
    test_set = AnomalyDataset(split.test, image_size=model.cfg.image_size, mean=model.mean, std=model.std)
    maps_path = out / "maps.npz" if save_maps else None
    result = evaluate(model, test_set, torch_device, batch_size=batch_size, maps_path=maps_path)
    cfg = RunConfig(model=model.cfg, device=device, out_dir=str(out))
    cfg.data.dataset, cfg.data.root, cfg.data.setting, cfg.data.category = dataset, str(root), setting, category
    cfg.eval.eval_batch_size, cfg.eval.save_maps = batch_size, save_maps
    record = {
        "status": "complete",
        "config": cfg.to_dict(),
        "checkpoint": str(checkpoint),
        "dataset": dataset,
        "setting": setting,
        "categories": split.categories,
        "n_test": len(test_set),
        "weights": meta["weights"],
        "environment": describe_environment(torch_device),
        "loss_per_epoch": meta.get("loss_per_epoch", []),
        "timings": {"eval_s": result.seconds, "eval_img_s": result.images_per_second},
        "eval": {"resolution": result.resolution, "score": model.cfg.score, "fpr_limit": cfg.eval.fpr_limit,
                 "epoch": f"checkpoint epoch {meta.get('epoch')}"},
        "metrics": result.metrics,
        "artifacts": {"checkpoint": str(checkpoint), "maps": maps_path.name if maps_path else None},
        "started": started,
        "finished": _now(),
    }
    write_json(out / "record.json", record)
    return record
