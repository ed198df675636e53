"""The `agpnet` command: run, eval, predict, synth, sweep, report.

Bad input (arguments, files, layouts) prints one line `agpnet: error: ...` and exits with 2;
running out of memory (GPU or CPU) prints one line with what to lower and exits with 3.
"""

import argparse
import logging
import sys
from pathlib import Path

from agpnet.config import EVAL_RESOLUTIONS
from agpnet.errors import AgpnetError

EXIT_BAD_INPUT = 2
EXIT_OUT_OF_MEMORY = 3


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        return args.handler(args) or 0
    except AgpnetError as err:
        print(f"agpnet: error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as err:  # a folder or file we were told to write to (or read) is not usable
        where = err.filename or "a file"
        print(f"agpnet: error: {where}: {err.strerror or err}", file=sys.stderr)
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
    run.add_argument("--resume", action="store_true", help="continue an interrupted run from RUN_DIR/checkpoint.pt")
    run.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_config_flags(run)
    run.set_defaults(handler=_cmd_run)

    ev = commands.add_parser("eval", help="evaluate a checkpoint on a dataset, write RUN_DIR/record.json")
    ev.add_argument("--checkpoint", required=True)
    ev.add_argument("--dataset", required=True, choices=("mvtec", "visa", "mvtec3d", "folder"))
    ev.add_argument("--root", required=True)
    ev.add_argument("--setting", default="multi-class", choices=("multi-class", "one-class"))
    ev.add_argument("--category")
    ev.add_argument("--device", default="auto")
    ev.add_argument("--batch-size", type=_positive_int, default=16)
    ev.add_argument("--save-maps", action="store_true")
    ev.add_argument("--resolution", choices=EVAL_RESOLUTIONS, default="input",
                    help="compare maps and masks at the model's input size or at each image's original size")
    ev.add_argument("--out", required=True)
    ev.set_defaults(handler=_cmd_eval)

    pr = commands.add_parser("predict", help="anomaly maps (PNG overlays) and scores (CSV) for new images")
    pr.add_argument("--checkpoint", required=True)
    pr.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR")
    pr.add_argument("--out", required=True)
    pr.add_argument("--device", default="auto")
    pr.add_argument("--batch-size", type=_positive_int, default=16)
    pr.set_defaults(handler=_cmd_predict)

    sy = commands.add_parser("synth", help="write the synthetic demo dataset (MVTec-AD layout)")
    sy.add_argument("--out", required=True)
    sy.add_argument("--seed", type=int, default=0)
    sy.add_argument("--image-size", type=int, default=256)
    sy.add_argument("--n-train", type=int, default=80)
    sy.add_argument("--n-test", type=int, default=40)
    sy.set_defaults(handler=_cmd_synth)

    sw = commands.add_parser("sweep", help="run a grid of notebooks with papermill (resumable)")
    sw.add_argument("sweep_file")
    sw.add_argument("--out", help="output folder (default: the sweep file's `out`)")
    sw.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a field for every cell (repeatable), e.g. --set epochs=1")
    sw.add_argument("--dry-run", action="store_true", help="list the cells and which are done")
    sw.add_argument("--retry-failed", action="store_true", help="run failed cells again")
    sw.add_argument("--rerun-changed", action="store_true",
                    help="run done cells again whose fields changed (their old record is kept as record.previous.json)")
    ray = sw.add_argument_group("executor (also the sweep file's `executor:` section; these flags win)")
    ray.add_argument("--executor", dest="kind", metavar="local|ray",
                     help="local: cells one after another here (default); ray: Ray tasks, several at once")
    ray.add_argument("--address", help="ray: join a running Ray cluster (auto or HOST:PORT); default: a local one")
    ray.add_argument("--gpus-per-cell", metavar="F", help="ray: GPUs per cell, e.g. 0.25 (4 cells per GPU)")
    ray.add_argument("--cpus-per-cell", metavar="N", help="CPUs per cell, also its torch threads")
    ray.add_argument("--max-concurrent", metavar="N", help="ray: at most N cells at once")
    sw.set_defaults(handler=_cmd_sweep)

    rp = commands.add_parser("report", help="HTML report (tables, attention, ablations) over a folder of runs")
    rp.add_argument("runs_dir")
    rp.add_argument("--out", required=True)
    rp.set_defaults(handler=_cmd_report)
    return parser


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError(text)
    return value


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    from agpnet.config import RunConfig, flat_fields

    defaults = RunConfig().to_flat()
    group = parser.add_argument_group("config fields (defaults in brackets)")
    for name in flat_fields():
        if name == "out_dir":
            continue
        flag = "--" + name.replace("_", "-")
        group.add_argument(flag, dest=name, default=None, metavar="V", help=f"[{_show(defaults[name])}]")


def _show(value) -> str:
    if isinstance(value, list | tuple):
        return ",".join(str(v) for v in value)
    return str(value)


def _cmd_run(args) -> int:
    from agpnet.config import RunConfig, flat_fields, load_yaml_config

    values = load_yaml_config(args.config) if args.config else {}
    values.update({k: getattr(args, k) for k in flat_fields() if getattr(args, k, None) is not None})
    cfg = RunConfig.from_flat(values)  # bad fields are reported before torch is even imported

    from agpnet.run import run_experiment

    record = run_experiment(cfg, resume=args.resume, progress=not args.quiet)
    _print_metrics(record["metrics"])
    print(f"record: {Path(cfg.out_dir) / 'record.json'}")
    return 0


def _cmd_eval(args) -> int:
    from agpnet.run import evaluate_checkpoint

    record = evaluate_checkpoint(args.checkpoint, dataset=args.dataset, root=args.root, setting=args.setting,
                                 category=args.category, device=args.device, batch_size=args.batch_size,
                                 save_maps=args.save_maps, out_dir=args.out, resolution=args.resolution)
    _print_metrics(record["metrics"])
    print(f"record: {Path(args.out) / 'record.json'}")
    return 0


def _cmd_predict(args) -> int:
    from agpnet.predict import predict_images

    csv_path = predict_images(args.checkpoint, args.inputs, args.out, device=args.device, batch_size=args.batch_size)
    print(f"scores: {csv_path}")
    return 0


def _cmd_synth(args) -> int:
    from agpnet.data.synth import write_synthetic_dataset

    root = write_synthetic_dataset(args.out, seed=args.seed, image_size=args.image_size, n_train=args.n_train,
                                   n_test=args.n_test)
    print(f"synthetic dataset: {root}")
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


def _cmd_report(args) -> int:
    from agpnet.report import build_report

    index = build_report(args.runs_dir, args.out)
    print(f"report: {index}")
    return 0


def _print_metrics(metrics: dict) -> None:
    from agpnet.metrics import METRIC_KEYS

    header = ["category", *METRIC_KEYS, "mad"]
    print(" ".join(f"{h:>12}" for h in header))
    for category, values in metrics.items():
        print(" ".join([f"{category:>12}", *(f"{100 * values[k]:12.1f}" for k in header[1:])]))
