"""Evaluation precision: the same checkpoint evaluated with eval_precision fp32 and bf16.

fp32 runs the model in fp32 and keeps the maps as float32; bf16 runs it under bf16 autocast (on
CUDA; on the CPU autocast stays off, so only the float16 map storage differs) and keeps float16
maps. Prints, for each setting, the evaluation time, and the largest metric difference between
the two (percentage points, per category and mean). With no --checkpoint, a short training run on
the synthetic data (random encoder weights) makes one first.

    python benchmarks/eval_precision.py [--device cuda] [--checkpoint RUN/checkpoint.pt --root DATA]

The last line printed is one JSON object: fp32_s, bf16_s, ratio (bf16_s / fp32_s), max_diff_pp,
worst (category/metric), device.
"""

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

from agpnet.config import RunConfig
from agpnet.data.synth import write_synthetic_dataset
from agpnet.metrics import METRICS
from agpnet.run import evaluate_checkpoint, run_experiment


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--checkpoint", help="a run's checkpoint.pt (default: train a short run first)")
    parser.add_argument("--root", help="the dataset of --checkpoint (MVTec-AD layout)")
    parser.add_argument("--dataset", default="mvtec")
    parser.add_argument("--image-size", type=int, default=256, help="for the short run")
    parser.add_argument("--epochs", type=int, default=2, help="for the short run")
    parser.add_argument("--batch-size", type=int, default=32, help="evaluation batch")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        checkpoint, root = args.checkpoint, args.root
        if checkpoint is None:
            root = str(write_synthetic_dataset(work / "synth", seed=0, image_size=args.image_size, n_train=40,
                                               n_test=40))
            cfg = RunConfig.from_flat({"dataset": "mvtec", "root": root, "setting": "multi-class",
                                       "epochs": args.epochs, "image_size": args.image_size, "weights": "random",
                                       "device": args.device, "out_dir": str(work / "run")})
            run_experiment(cfg, progress=False)
            checkpoint = str(work / "run" / "checkpoint.pt")
        records, seconds = {}, {}
        for precision in ("fp32", "bf16", "fp32"):  # fp32 twice: the first call pays the warm-up
            started = time.perf_counter()
            records[precision] = evaluate_checkpoint(checkpoint, args.dataset, root, device=args.device,
                                                     batch_size=args.batch_size, precision=precision,
                                                     out_dir=str(work / f"eval_{precision}"), overwrite=True)
            seconds[precision] = time.perf_counter() - started

    worst, max_diff = None, 0.0
    for category, values in records["fp32"]["metrics"].items():
        for key in METRICS:
            a, b = values[key], records["bf16"]["metrics"][category][key]
            if math.isnan(a) and math.isnan(b):  # undefined in both (e.g. no defective image)
                continue
            diff = math.inf if math.isnan(a) != math.isnan(b) else 100 * abs(a - b)  # NaN on one side only
            if diff >= max_diff:
                worst, max_diff = f"{category}/{key}", diff
    device = records["fp32"]["environment"].get("gpu") or records["fp32"]["environment"]["device"]
    print(f"evaluation of {records['fp32']['n_test']} test images on {device}: fp32 {seconds['fp32']:.2f} s, "
          f"bf16 {seconds['bf16']:.2f} s; largest metric difference {max_diff:.4f} pp ({worst})")
    print(json.dumps({"fp32_s": seconds["fp32"], "bf16_s": seconds["bf16"],
                      "ratio": seconds["bf16"] / seconds["fp32"], "max_diff_pp": max_diff, "worst": worst,
                      "n_test": records["fp32"]["n_test"], "device": device}))
    if math.isinf(max_diff):
        sys.exit(f"eval_precision: {worst} is undefined (NaN) in one precision only")


if __name__ == "__main__":
    main()
