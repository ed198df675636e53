"""Speed of a whole `agpnet run` at dataset scale: a few epochs on the MVTec-AD-sized synthetic set.

    python benchmarks/train_speed.py --device cuda --epochs 3 --compile-mode reduce-overhead
    python benchmarks/train_speed.py --device cpu --scale small          # a quick check on a CPU

Generates the dataset (`agpnet synth --scale mvtec`: 15 categories, 3,629 training and 1,725 test
PNGs at 700-1024 px; `--scale small`: the same layout with 2 % of the images) unless `--root`
names one generated before, then runs `agpnet run` on it (multi-class, random encoder weights:
speed does not depend on them) in a subprocess and watches its progress.json. Reports:

- img_s: training images per second over the training loop of this run (every epoch, data
  loading, checkpoint and compile warm-up included; the feature-cache pass excluded);
- features_s: the feature-cache pass (the "features" stage of progress.json, until "train");
- eval_s: the evaluation (record timings.eval_s);
- epoch_s: one epoch at steady speed, from progress.json after the first epoch (the first one
  carries the compile warm-up); the mean epoch when the run is too short to tell;
- est_500_epoch_h: the whole run's wall time plus (500 - epochs) x epoch_s, i.e. start-up,
  features, warm-up and evaluation once and 500 epochs at steady speed.

The last line printed is one JSON object with these numbers.
"""

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from agpnet.data.synth import write_synthetic_dataset
from agpnet.progress import read_progress

SCALES = {"mvtec": 1.0, "small": 0.02}  # share of MVTec-AD's image counts
COMPILE_FLAGS = {
    "none": ["--compile", "false"],
    "default": ["--compile", "true", "--compile-mode", "default"],
    "reduce-overhead": ["--compile", "true", "--compile-mode", "reduce-overhead"],
}
PAPER_EPOCHS = 500
POLL_S = 0.05


def run_command(args, root: Path, run_dir: Path) -> list[str]:
    """The `agpnet run` command line. --image-cache and --eval-precision only when given."""
    command = [sys.executable, "-m", "agpnet", "run", "--dataset", "mvtec", "--root", str(root), "--setting",
               "multi-class", "--weights", "random", "--device", args.device, "--epochs", str(args.epochs),
               "--batch-size", str(args.batch_size), "--image-size", str(args.image_size),
               *COMPILE_FLAGS[args.compile_mode], "--out", str(run_dir), "--overwrite", "--quiet"]
    if args.image_cache:
        command += ["--image-cache", args.image_cache]
    if args.eval_precision:
        command += ["--eval-precision", args.eval_precision]
    return command


def watch(process: subprocess.Popen, run_dir: Path) -> tuple[dict, list]:
    """Poll progress.json until the process ends: when each stage was first seen (monotonic s)
    and (time, step, steps, epochs) samples of the training loop."""
    stages, samples = {}, []
    while True:
        done = process.poll() is not None
        progress = read_progress(run_dir)
        if progress:
            now = time.monotonic()
            stages.setdefault(progress.get("stage"), now)
            if progress.get("stage") in ("train", "trained") and progress.get("step") is not None:
                sample = (now, progress["step"], progress["steps"], progress["epochs"])
                if not samples or samples[-1][1:] != sample[1:]:
                    samples.append(sample)
        if done:
            return stages, samples
        time.sleep(POLL_S)


def stage_seconds(stages: dict) -> dict:
    """Seconds from each stage's first sighting to the next stage's, in the order seen."""
    order = sorted(stages, key=stages.get)
    return {name: stages[after] - stages[name] for name, after in zip(order, order[1:])}


def steady_epoch_seconds(samples: list) -> float | None:
    """Seconds per epoch from the first progress sample after the first epoch to the end of
    training; None when no sample falls there."""
    if not samples:
        return None
    end_time, end_step, steps, epochs = samples[-1]
    per_epoch = steps / epochs
    later = [(t, step) for t, step, *_ in samples if per_epoch <= step < end_step]
    if end_step != steps or not later:
        return None
    start_time, start_step = later[0]
    return (end_time - start_time) / (end_step - start_step) * per_epoch


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--compile-mode", choices=tuple(COMPILE_FLAGS), default="none")
    parser.add_argument("--image-cache", choices=("auto", "device", "host", "off"),
                        help="passed to agpnet run only when given")
    parser.add_argument("--eval-precision", choices=("fp32", "bf16"), help="passed to agpnet run only when given")
    parser.add_argument("--scale", choices=tuple(SCALES), default="mvtec", help="dataset to generate")
    parser.add_argument("--root", help="an MVTec-layout dataset generated earlier (no generation)")
    parser.add_argument("--out", help="keep the generated dataset and the run here (default: a temporary folder, "
                                      "removed at the end); reuse the dataset later with --root OUT/SCALE")
    args = parser.parse_args(argv)
    if args.epochs < 1 or args.batch_size < 1:
        parser.error("--epochs and --batch-size must be >= 1")
    if args.root and not (Path(args.root) / "README.md").is_file():
        parser.error(f"--root {args.root}: no generated dataset there (expected its README.md)")

    work = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="train_speed_"))
    try:
        synth_s = None
        root = Path(args.root) if args.root else work / args.scale
        if not args.root:
            started = time.perf_counter()
            write_synthetic_dataset(root, seed=0, scale="mvtec", fraction=SCALES[args.scale])
            synth_s = time.perf_counter() - started
            print(f"dataset {root}: generated in {synth_s:.1f} s", flush=True)
        run_dir = work / f"run_{args.compile_mode}"
        command = run_command(args, root, run_dir)
        print(" ".join(command), flush=True)
        started = time.monotonic()
        process = subprocess.Popen(command)
        stages, samples = watch(process, run_dir)
        wall_s = time.monotonic() - started
        if process.returncode != 0:
            sys.exit(f"train_speed: agpnet run failed (exit {process.returncode}); nothing measured")
        record = json.loads((run_dir / "record.json").read_text(encoding="utf-8"))
    finally:
        if not args.out:
            shutil.rmtree(work, ignore_errors=True)
    if record.get("status") != "complete":
        sys.exit(f"train_speed: {run_dir}/record.json is not complete; nothing measured")

    durations = stage_seconds(stages)
    if "features" not in durations or "train" not in durations:
        sys.exit(f"train_speed: progress.json stages seen {list(stages)} (expected features, train, trained); "
                 "too fast to watch or the stages changed")
    images, timings = record["n_train"], record["timings"]
    loop_s = durations["train"]
    recorded = timings.get("epoch_s") or []  # the record's own per-epoch times, when the run wrote them
    if len(recorded) > 1:
        epoch_s, epoch_from = sum(recorded[1:]) / len(recorded[1:]), "record: mean after the first epoch"
    else:
        epoch_s, epoch_from = steady_epoch_seconds(samples), "steady (after the first epoch)"
    if epoch_s is None:
        epoch_s, epoch_from = loop_s / args.epochs, "mean over all epochs (warm-up included)"
    est_s = wall_s + (PAPER_EPOCHS - args.epochs) * epoch_s
    environment = record["environment"]
    config = record["config"]
    result = {
        "images": images,
        "epochs": args.epochs,
        "img_s": images * args.epochs / loop_s,
        "features_s": timings.get("features_s", durations["features"]),
        "eval_s": timings["eval_s"],
        "est_500_epoch_h": est_s / 3600,
        "device": environment.get("gpu") or environment["device"],
        "compile_mode": args.compile_mode,
        "image_cache": config["train"].get("image_cache"),
        "eval_precision": config.get("eval", {}).get("eval_precision"),
        "batch_size": args.batch_size,
        "image_size": args.image_size,
        "n_test": record["n_test"],
        "epoch_s": epoch_s,
        "epoch_s_from": epoch_from,
        "train_loop_s": loop_s,
        "stages_s": durations,
        "wall_s": wall_s,
        "synth_s": synth_s,
        "est_500_img_s": PAPER_EPOCHS * images / est_s,
        "commit": environment.get("agpnet_commit"),
        "machine": f"{environment['machine']}, torch {environment.get('torch')}, timm {environment.get('timm')}, "
                   f"python {environment.get('python')}",
    }
    print(f"{images} training / {record['n_test']} test images, {args.epochs} epochs on {result['device']} "
          f"(compile {args.compile_mode}, image cache {result['image_cache']}): whole run {wall_s:.1f} s")
    print(f"  feature cache {result['features_s']:.1f} s, training loop {loop_s:.1f} s ({result['img_s']:.1f} img/s), "
          f"epoch {epoch_s:.2f} s ({epoch_from}), evaluation {result['eval_s']:.1f} s")
    print(f"  {PAPER_EPOCHS} epochs: about {result['est_500_epoch_h']:.2f} h ({result['est_500_img_s']:.0f} img/s "
          "over the whole run; extrapolated)")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
