"""The `agpnet` command: run, eval, predict, mvtec2-submission, synth, sweep, weights, report.

Bad input (arguments, files, layouts) prints one line `agpnet: error: ...` and exits with 2;
running out of memory (GPU or CPU) prints one line with what to lower and exits with 3.
"""

import argparse
import dataclasses
import logging
import sys
import time
from pathlib import Path

from agpnet.config import EVAL_RESOLUTIONS, DataConfig
from agpnet.errors import AgpnetError, error_line

DATA_FLAGS = tuple(f.name for f in dataclasses.fields(DataConfig))  # DataConfig's fields: run and eval
EXIT_BAD_INPUT = 2
EXIT_OUT_OF_MEMORY = 3


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        return args.handler(args) or 0
    except AgpnetError as err:
        print(f"agpnet: error: {error_line(err)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as err:  # a folder or file we were told to write to (or read) is not usable
        print(f"agpnet: error: {_os_error_line(err)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except (MemoryError, RuntimeError) as err:
        if not _out_of_memory(err):
            raise
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        print(f"agpnet: error: out of memory ({first}); try a smaller --batch-size or --eval-batch-size, "
              "or a smaller --image-size", file=sys.stderr)
        return EXIT_OUT_OF_MEMORY
    except KeyboardInterrupt:
        print("agpnet: interrupted", file=sys.stderr)
        return 130


def _os_error_line(err: OSError) -> str:
    if isinstance(err, FileExistsError):  # mkdir(exist_ok=True) of a path that is a file
        return f"{err.filename}: expected a folder, found a file"
    if isinstance(err, NotADirectoryError):
        return f"{err.filename}: expected a folder, but it (or a folder above it) is a file"
    reason = err.strerror or error_line(err)
    return f"{err.filename}: {reason}" if err.filename else reason


def _out_of_memory(err: BaseException) -> bool:
    """torch.OutOfMemoryError (CUDA), a failed CPU allocation in torch, or Python's MemoryError."""
    return (isinstance(err, MemoryError) or type(err).__name__ == "OutOfMemoryError"
            or "can't allocate memory" in str(err))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="agpnet", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="train and evaluate one configuration, write RUN_DIR/record.json",
                              description="Every config field is a flag (--field-name VALUE); "
                                          "lists as 3,6,9,12; booleans as true/false.")
    run.add_argument("--config", help="YAML file of config fields (flags given here override it)")
    run.add_argument("--out", dest="out_dir", help="run folder (record.json, checkpoint.pt, maps.npz)")
    run.add_argument("--resume", action="store_true",
                     help="continue an interrupted run from RUN_DIR/checkpoint.pt")
    run.add_argument("--overwrite", action="store_true", help="replace a complete run already in RUN_DIR")
    run.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_config_flags(run)
    run.set_defaults(handler=_cmd_run)

    ev = commands.add_parser("eval", help="evaluate a checkpoint on a dataset, write RUN_DIR/record.json")
    ev.add_argument("--checkpoint", required=True)
    _add_config_flags(ev, DATA_FLAGS, "data (as for run; --dataset and --root are required)")
    ev.add_argument("--device", default="auto")
    ev.add_argument("--eval-batch-size", "--batch-size", dest="batch_size", default=16)
    ev.add_argument("--save-maps", action="store_true")
    ev.add_argument("--eval-resolution", "--resolution", dest="resolution", choices=EVAL_RESOLUTIONS,
                    default="input",
                    help="compare maps and masks at the model's input size or at each image's original size")
    ev.add_argument("--eval-precision", "--precision", dest="precision", choices=("fp32", "bf16"),
                    default="fp32",
                    help="fp32: model and stored maps in fp32; "
                         "bf16: bf16 autocast on CUDA, maps stored as float16")
    ev.add_argument("--out", required=True)
    ev.add_argument("--overwrite", action="store_true", help="replace a complete evaluation already in --out")
    ev.set_defaults(handler=_cmd_eval)

    pr = commands.add_parser("predict", help="anomaly maps (PNG overlays) and scores (CSV) for new images")
    pr.add_argument("--checkpoint", required=True)
    pr.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR")
    pr.add_argument("--out", required=True)
    pr.add_argument("--device", default="auto")
    pr.add_argument("--batch-size", default=16)
    pr.add_argument("--overwrite", action="store_true", help="replace an earlier prediction already in --out")
    pr.set_defaults(handler=_cmd_predict)

    sm = commands.add_parser("mvtec2-submission",
                             help="MVTec AD 2: anomaly maps of test_private and test_private_mixed "
                                  "for MVTec's evaluation server (thresholds from validation/good)")
    sm.add_argument("--checkpoint", required=True)
    sm.add_argument("--root", required=True,
                    help="the MVTec AD 2 folder (<root>/<category>/test_private/ ...)")
    sm.add_argument("--out", required=True,
                    help="the submission folder: anomaly_images/, anomaly_images_thresholded/")
    sm.add_argument("--category", help="comma-separated categories [those the checkpoint was trained on]")
    sm.add_argument("--device", default="auto")
    sm.add_argument("--batch-size", default=16)
    sm.add_argument("--overwrite", action="store_true", help="replace submission files already in --out")
    sm.set_defaults(handler=_cmd_mvtec2_submission)

    sy = commands.add_parser("synth", help="write the synthetic demo dataset (MVTec-AD layout)")
    sy.add_argument("--out", required=True)
    sy.add_argument("--seed", default=0)
    sy.add_argument("--scale", choices=("demo", "mvtec"), default="demo",
                    help="demo: 3 categories, small; mvtec: MVTec-AD's 15 categories, image counts and sizes")
    sy.add_argument("--image-size", help="demo scale only [256]")
    sy.add_argument("--n-train", help="demo scale only [80]")
    sy.add_argument("--n-test", help="demo scale only [40]")
    sy.add_argument("--fraction", default="1.0",
                    help="mvtec scale only: this share of each count [1.0]")
    sy.add_argument("--workers", help="rendering processes [1 for demo, every CPU for mvtec]")
    sy.set_defaults(handler=_cmd_synth)

    sw = commands.add_parser("sweep", help="run a grid of notebooks with papermill (resumable)")
    sw.add_argument("sweep_file")
    sw.add_argument("--out", help="output folder (default: the sweep file's `out`)")
    sw.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a field for every cell (repeatable), e.g. --set epochs=1")
    sw.add_argument("--dry-run", action="store_true", help="list the cells and which are done")
    sw.add_argument("--retry-failed", action="store_true", help="run failed cells again")
    sw.add_argument("--rerun-changed", action="store_true",
                    help="run done cells again whose fields changed "
                         "(their old record is kept as record.previous.json)")
    ray = sw.add_argument_group("executor (also the sweep file's `executor:` section; these flags win)")
    ray.add_argument("--executor", dest="kind", metavar="local|ray",
                     help="local: cells one after another here (default); ray: Ray tasks, several at once")
    ray.add_argument("--address",
                     help="ray: join a running Ray cluster (auto or HOST:PORT); default: a local one")
    ray.add_argument("--gpus-per-cell", metavar="F",
                     help="ray: a cell's share of one GPU, 0 to 1, e.g. 0.25 (4 cells per GPU)")
    ray.add_argument("--cpus-per-cell", metavar="N", help="CPUs per cell, also its torch threads")
    ray.add_argument("--max-concurrent", metavar="N", help="ray: at most N cells at once")
    sw.set_defaults(handler=_cmd_sweep)

    we = commands.add_parser("weights", help="pretrained encoder weights for machines without internet")
    weights = we.add_subparsers(dest="weights_command", required=True)
    dl = weights.add_parser("download", help="save timm's pretrained weights of each backbone into a folder")
    dl.add_argument("backbones", nargs="+", metavar="BACKBONE",
                    help="timm model name, e.g. vit_small_patch16_224.dino")
    dl.add_argument("--to", required=True, metavar="DIR", help="the folder to pass later as --weights DIR")
    dl.set_defaults(handler=_cmd_weights_download)
    ls = weights.add_parser("list", help="what a weights folder holds, with a sha256 check")
    ls.add_argument("folder", metavar="DIR")
    ls.set_defaults(handler=_cmd_weights_list)

    rp = commands.add_parser("report",
                             help="HTML report (tables, attention, ablations) over a folder of runs")
    rp.add_argument("runs_dir")
    rp.add_argument("--out", required=True)
    rp.set_defaults(handler=_cmd_report)
    return parser


def _number(value, flag: str) -> float:
    """A flag's text as a finite number, or one AgpnetError naming the flag."""
    try:
        number = float(value)
    except ValueError:
        number = float("nan")
    if number != number or number in (float("inf"), float("-inf")):
        raise AgpnetError(f"{flag} {value}: expected a number")
    return number


def _integer(value, flag: str, minimum: int = 0) -> int:
    """A flag's text as an integer >= minimum, or one AgpnetError naming the flag (argparse's own
    type errors print its usage block)."""
    try:
        number = int(value)
    except ValueError:
        number = None
    if number is None or number < minimum:
        raise AgpnetError(f"{flag} {value}: expected an integer >= {minimum}")
    return number


def _add_config_flags(parser: argparse.ArgumentParser, names=None, title="config fields") -> None:
    """A flag per config field (`names`, default all but out_dir), parsed later by RunConfig.from_flat."""
    from agpnet.config import RunConfig, flat_fields

    defaults = RunConfig.defaults()
    group = parser.add_argument_group(f"{title} (defaults in brackets)")
    for name in names or [n for n in flat_fields() if n != "out_dir"]:
        flag = "--" + name.replace("_", "-")
        group.add_argument(flag, dest=name, default=None, metavar="V",
                           help=f"[{_show(defaults[name], name)}]")


# How a flag's default of None is shown in --help, where None means something else than "not set".
NONE_SHOWN = {"compile": "auto", "num_workers": "auto", "init_seed": "the seed"}


def _show(value, name: str) -> str:
    if value is None and name in NONE_SHOWN:
        return NONE_SHOWN[name]
    if isinstance(value, list | tuple):
        return ",".join(str(v) for v in value)
    return str(value)


def _cmd_run(args) -> int:
    from agpnet.config import RunConfig, flat_fields, load_yaml_config

    values = load_yaml_config(args.config) if args.config else {}
    flags = {k: getattr(args, k) for k in flat_fields() if getattr(args, k, None) is not None}
    try:  # the file's fields that no flag overrides first, so that their errors name the file
        RunConfig.from_flat({k: v for k, v in values.items() if k.replace("-", "_") not in flags})
    except AgpnetError as err:
        raise AgpnetError(f"{args.config}: {err}") from None
    cfg = RunConfig.from_flat({**values, **flags})  # bad fields are reported before torch is even imported

    from agpnet.run import run_experiment

    if args.resume and args.overwrite:
        raise AgpnetError("--resume and --overwrite: expected one of them (continue the run, or replace it)")
    record = run_experiment(cfg, resume=args.resume, progress=not args.quiet, overwrite=args.overwrite)
    _print_metrics(record["metrics"])
    print(f"record: {Path(cfg.out_dir) / 'record.json'}")
    return 0


def _cmd_eval(args) -> int:
    from agpnet.config import RunConfig

    missing = [f"--{name}" for name in ("dataset", "root") if getattr(args, name) is None]
    if missing:
        raise AgpnetError(f"eval: {' and '.join(missing)} required (the dataset to evaluate on)")
    data = RunConfig.from_flat({k: getattr(args, k) for k in DATA_FLAGS if getattr(args, k) is not None}).data

    from agpnet.run import evaluate_checkpoint

    setting = data.setting if args.setting is not None else None  # None: the checkpoint's own
    record = evaluate_checkpoint(args.checkpoint, dataset=data.dataset, root=data.root, setting=setting,
                                 category=data.category, shots=data.shots, fast_jpeg=data.fast_jpeg,
                                 device=args.device,
                                 batch_size=_integer(args.batch_size, "--eval-batch-size", minimum=1),
                                 save_maps=args.save_maps, out_dir=args.out, resolution=args.resolution,
                                 overwrite=args.overwrite, precision=args.precision,
                                 options=data.reader_options())
    _print_metrics(record["metrics"])
    print(f"record: {Path(args.out) / 'record.json'}")
    return 0


def _cmd_predict(args) -> int:
    from agpnet.predict import predict_images

    batch_size = _integer(args.batch_size, "--batch-size", minimum=1)
    csv_path = predict_images(args.checkpoint, args.inputs, args.out, device=args.device,
                              batch_size=batch_size, overwrite=args.overwrite)
    print(f"scores: {csv_path}")
    return 0


def _cmd_mvtec2_submission(args) -> int:
    from agpnet.submission import MVTEC2_CATEGORIES, write_submission

    thresholds = write_submission(args.checkpoint, args.root, args.out, categories=args.category,
                                  device=args.device,
                                  batch_size=_integer(args.batch_size, "--batch-size", minimum=1),
                                  overwrite=args.overwrite)
    for category, threshold in thresholds.items():
        print(f"{category}: threshold {threshold:.6g} (mean + 3 std of the validation/good map pixels)")
    missing = [c for c in MVTEC2_CATEGORIES if not (Path(args.out) / "anomaly_images" / c).is_dir()]
    if missing:
        print(f"note: the evaluation server expects all 8 categories; {args.out} lacks {', '.join(missing)}")
    print(f"submission: {args.out} (check and pack it with MVTec's check_and_prepare_data_for_upload.py)")
    return 0


def _cmd_synth(args) -> int:
    from agpnet.data.synth import write_synthetic_dataset

    started = time.perf_counter()
    optional = {name: None if getattr(args, name) is None else _integer(getattr(args, name), flag)
                for name, flag in (("image_size", "--image-size"), ("n_train", "--n-train"),
                                   ("n_test", "--n-test"), ("workers", "--workers"))}
    root = write_synthetic_dataset(args.out, seed=_integer(args.seed, "--seed"), scale=args.scale,
                                   fraction=_number(args.fraction, "--fraction"), **optional)
    print(f"synthetic dataset: {root} ({time.perf_counter() - started:.1f} s)")
    return 0


def _cmd_sweep(args) -> int:
    from agpnet.sweep import run_sweep
    from agpnet.yamlfile import parse_yaml_value

    overrides = {}
    for item in args.overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise AgpnetError(f"--set {item!r}: expected KEY=VALUE, e.g. --set epochs=1")
        overrides[key.strip()] = parse_yaml_value(value, f"--set {key.strip()}")
    executor = {"kind": args.kind, "address": args.address}
    for key in ("gpus_per_cell", "cpus_per_cell", "max_concurrent"):
        text = getattr(args, key)
        executor[key] = None if text is None else parse_yaml_value(text, "--" + key.replace("_", "-"))
    summary = run_sweep(args.sweep_file, out=args.out, overrides=overrides, dry_run=args.dry_run,
                        retry_failed=args.retry_failed, rerun_changed=args.rerun_changed, executor=executor)
    return 1 if summary.get("failed") else 0


def _cmd_weights_download(args) -> int:
    from agpnet.model.backbone import download_weights

    for manifest in download_weights(args.backbones, args.to):
        print(f"{manifest['backbone']}: {Path(args.to) / manifest['file']} ({manifest['size'] / 1e6:.1f} MB, "
              f"sha256 {manifest['sha256'][:12]}...)")
    print(f"use: --weights {args.to}")
    return 0


def _cmd_weights_list(args) -> int:
    from agpnet.model.backbone import list_weights

    found = list_weights(args.folder)
    for manifest in found:
        state = "ok" if manifest["ok"] else "DAMAGED OR MISSING (sha256 differs): download it again"
        print(f"{manifest['backbone']:<40} {manifest['file']:<50} {state}")
    if not found:
        print(f"{args.folder}: no weights (expected files written by `agpnet weights download`)")
    return 0 if all(manifest["ok"] for manifest in found) else 1


def _cmd_report(args) -> int:
    from agpnet.report import build_report

    index = build_report(args.runs_dir, args.out)
    print(f"report: {index}")
    return 0


def _print_metrics(metrics: dict) -> None:
    from agpnet.metrics import METRICS

    header = ["category", *METRICS]
    print(" ".join(f"{h:>12}" for h in header))
    for category, values in metrics.items():
        print(" ".join([f"{category:>12}", *(f"{100 * values[k]:12.1f}" for k in header[1:])]))
