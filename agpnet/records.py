"""Run records (`record.json` in a run folder): build, validate and load them.

A record is a plain JSON object (docs/contracts.md "Run folder"). `build_record` makes one from
a run's parts, `load_record(path)` reads and checks one, `load_records(folder)` every complete
one below a folder. A record that lacks a field of the current format, or holds it with another
type (e.g. one written by an older agpnet), is refused in one line naming the file and the field.

Formats: "agpnet-record-2" adds the `format` field to the fields of the records written before
it, which have no `format` and are read as they are.
"""

import json
from pathlib import Path

from agpnet.config import SECTIONS, RunConfig
from agpnet.errors import AgpnetError
from agpnet.metrics import METRICS

FORMAT = "agpnet-record-2"
COMPLETE = "complete"  # the status of a finished run (the only status a record is written with)

# Every record's fields (a training run's and a checkpoint evaluation's) and their JSON types.
REQUIRED = {
    "status": str, "config": dict, "dataset": str, "setting": str, "categories": list, "seed": int,
    "n_test": int, "weights": dict, "environment": dict, "timings": dict, "eval": dict, "metrics": dict,
    "loss_per_epoch": list, "artifacts": dict, "started": str, "finished": str,
}
# Fields only some records have: a training run's (n_train, few_shot_files, data, segments) and
# a checkpoint evaluation's (checkpoint; data and segments: its training's, when it holds them).
OPTIONAL = ("n_train", "few_shot_files", "data", "segments", "checkpoint")


def build_record(cfg: RunConfig, *, categories: list[str], metrics: dict, n_test: int, weights: dict,
                 environment: dict, timings: dict, resolution: str, precision: str, epoch: str,
                 loss_per_epoch: list[float], artifacts: dict, started: str, finished: str,
                 **optional) -> dict:
    """The record of a finished run of `cfg` (its config, dataset, setting and seed come from `cfg`).

    metrics: {category: {every METRICS key: fraction or None}, "mean": {...}}; weights: the
    weights_info of build_model; timings: seconds and images/s; resolution, precision, epoch:
    how the model was evaluated; artifacts: {"checkpoint": path, "maps": "maps.npz" or None};
    started, finished: timestamps. `optional`: the OPTIONAL fields this run has."""
    unknown = sorted(set(optional) - set(OPTIONAL))
    if unknown:
        raise TypeError(f"build_record: unknown field(s) {', '.join(unknown)}")
    record = {
        "format": FORMAT,
        "status": COMPLETE,
        "config": cfg.to_dict(),
        "dataset": cfg.data.dataset,
        "setting": cfg.data.setting,
        "categories": list(categories),
        "seed": cfg.train.seed,
        "n_test": n_test,
        **{name: optional[name] for name in OPTIONAL if name in optional},
        "weights": weights,
        "environment": environment,
        "timings": timings,
        "eval": {"resolution": resolution, "score": cfg.model.score, "fpr_limit": cfg.eval.fpr_limit,
                 "precision": precision, "epoch": epoch},
        "metrics": metrics,
        "loss_per_epoch": list(loss_per_epoch),
        "artifacts": artifacts,
        "started": started,
        "finished": finished,
    }
    check_record(record, "build_record")
    return record


def check_record(record, source: str | Path) -> None:
    """Raise AgpnetError (one line naming `source` and the field) unless `record` is a complete
    record of the current format (or of the format before it, which lacks only `format`)."""
    if not isinstance(record, dict):
        raise AgpnetError(f"{source}: not a run record (expected a JSON object, got {type(record).__name__})")
    written = record.get("format", FORMAT)
    if written != FORMAT:
        raise AgpnetError(f"{source}: run record format {written!r}; this agpnet reads {FORMAT!r} "
                          "(written by another agpnet version?)")
    if record.get("status") != COMPLETE:
        raise AgpnetError(f"{source}: run record with status {record.get('status')!r}; expected {COMPLETE!r} "
                          "(the run did not finish)")
    for name, kind in REQUIRED.items():
        _check_field(record, name, kind, source)
    for section in SECTIONS:
        _check_field(record["config"], section, dict, source, "config.")
    for category, values in record["metrics"].items():
        _check_field(record["metrics"], category, dict, source, "metrics.")
        for key in METRICS:
            if key not in values:
                raise AgpnetError(f"{source}: run record without `metrics.{category}.{key}` "
                                  f"(an older record format? expected every metric of {FORMAT})")


def _check_field(parent: dict, name: str, kind: type, source, prefix: str = "") -> None:
    if name not in parent:
        raise AgpnetError(f"{source}: run record without `{prefix}{name}` (an older record format? "
                          f"expected the fields of {FORMAT}, docs/contracts.md)")
    value = parent[name]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        found = _JSON_TYPES.get(type(value), type(value).__name__)
        raise AgpnetError(f"{source}: run record field `{prefix}{name}` is "
                          f"{found}; expected {_JSON_TYPES[kind]}")


_JSON_TYPES = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "an integer",
               float: "a number", type(None): "null"}


def _read_json(path: str | Path):
    """The JSON in `path` (any value), or AgpnetError naming the file."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise AgpnetError(f"{path}: not a valid run record ({err})") from None


def complete_record(path: str | Path) -> dict | None:
    """The record in `path` when its status is "complete", else None (also when missing or
    unreadable; the fields are not checked)."""
    try:
        record = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and record.get("status") == COMPLETE else None


def is_complete(path: str | Path) -> bool:
    """Whether `path` holds a record with status "complete" (see complete_record)."""
    return complete_record(path) is not None


def load_record(path: str | Path) -> dict:
    """The checked record in `path`, with `run_dir` (its folder) added."""
    path = Path(path)
    if not path.is_file():
        raise AgpnetError(f"{path}: no run record (expected a finished run folder with record.json)")
    record = _read_json(path)
    check_record(record, path)
    record["run_dir"] = str(path.parent)
    return record


def load_records(runs_dir: str | Path) -> list[dict]:
    """Every complete run record below `runs_dir` (recursive, sorted by path), each checked and
    with `run_dir`. Records whose status is not "complete" (unfinished runs) are skipped."""
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        raise AgpnetError(f"{runs_dir}: no such folder of runs (expected run folders with record.json)")
    records = []
    for path in sorted(runs_dir.rglob("record.json")):
        record = _read_json(path)
        if isinstance(record, dict) and record.get("status") != COMPLETE:
            continue
        check_record(record, path)
        record["run_dir"] = str(path.parent)
        records.append(record)
    return records


def flat_config(record: dict) -> dict:
    """The run's config as flat fields (every field by its own name, as RunConfig.from_flat takes
    them), with dataset, setting and seed from the record."""
    flat = {}
    for name, value in record["config"].items():
        flat.update(value if name in SECTIONS else {name: value})
    flat.update(dataset=record["dataset"], setting=record["setting"], seed=record["seed"])
    return flat
