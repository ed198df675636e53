"""Sweep scaling: one small sweep with the local executor, then with Ray on several workers;
with --packing, several cells on one GPU.

    python benchmarks/sweep_scaling.py [--cells 4] [--workers 2] [--epochs 20]
    python benchmarks/sweep_scaling.py --packing [--cells 4] [--epochs 10]     # on a CUDA machine

The sweep has `--cells` tiny CPU runs (seeds 0..cells-1; a 2-block ViT at 64 px, random
weights) on `agpnet synth` data, each a papermill execution of notebooks/train_eval.ipynb. The
local executor runs them one after another (torch's default threads); the Ray executor runs
`--workers` at once, 1 CPU (one torch thread) each, on a local Ray instance that the sweep
starts and stops (its start-up counts in ray_s). Both write every cell; the script checks that
all are done. Prints both wall times and the speedup; the last line is JSON: {"local_s",
"ray_s", "speedup", "cells", "workers", "device"}. Goal on the 2-core machine: speedup >= 1.6.

--packing: `--cells` identical short training cells (ViT-S/16 at 256 px, random weights, the
synthetic data at 256 px, seeds 0..cells-1) under Ray on one GPU, first at --gpus-per-cell 1
(one cell at a time), then at 1/cells (all at once). Aggregate training images/s = the cells'
training images (n_train x epochs, summed) / (last record's finish - first record's start).
The last line is JSON: {"packed_img_s", "one_per_gpu_img_s", "ratio", "cells", "cell_img_s_packed",
"cell_img_s_alone", "device"}. Goal: ratio >= 2.5.
"""

import argparse
import json
import os
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import yaml

from agpnet.data.synth import write_synthetic_dataset
from agpnet.environment import machine
from agpnet.sweep import run_sweep

TINY = {"backbone": "vit_tiny_patch16_224", "backbone_kwargs": {"depth": 2, "embed_dim": 32, "num_heads": 2,
        "patch_size": 8}, "image_size": 64, "blocks": [1, 2], "decoder_depth": 1, "decoder_heads": 2}


def timed_sweep(sweep_file: Path, out: Path, executor: dict) -> float:
    started = time.perf_counter()
    summary = run_sweep(sweep_file, out=out, executor=executor, progress=False)
    seconds = time.perf_counter() - started
    if summary["done"] != len(summary["cells"]):
        sys.exit(f"{executor['kind']} executor: {summary['failed']} cell(s) failed (see {out}/*/error.json)")
    return seconds


def write_sweep(tmp: Path, cells: int, base: dict) -> Path:
    sweep_file = tmp / "scaling.yaml"
    sweep_file.write_text(yaml.safe_dump({"base": base, "grid": {"seed": list(range(cells))}}))
    return sweep_file


def aggregate_img_s(out: Path) -> tuple[float, float]:
    """(training images of all cells / span from the first start to the last finish, mean per-cell img/s)."""
    records = [json.loads(p.read_text()) for p in sorted(out.glob("*/record.json"))]
    images = sum(r["n_train"] * r["config"]["train"]["epochs"] for r in records)
    span = (max(datetime.fromisoformat(r["finished"]) for r in records)
            - min(datetime.fromisoformat(r["started"]) for r in records)).total_seconds()
    return images / span, sum(r["timings"]["train_img_s"] for r in records) / len(records)


def packing(args) -> dict:
    import torch

    with tempfile.TemporaryDirectory(prefix="sweep_packing.") as tmp:
        tmp = Path(tmp)
        root = write_synthetic_dataset(tmp / "synth", seed=0, image_size=256)
        sweep_file = write_sweep(tmp, args.cells, {"dataset": "mvtec", "root": str(root), "epochs": args.epochs,
                                                   "weights": "random", "device": "cuda"})
        rates = {}
        for name, gpus in (("one_per_gpu", 1), ("packed", 1 / args.cells)):
            seconds = timed_sweep(sweep_file, tmp / name, {"kind": "ray", "gpus_per_cell": gpus,
                                                           "cpus_per_cell": args.cpus_per_cell})
            rates[name] = aggregate_img_s(tmp / name)
            print(f"gpus_per_cell {gpus:g}: {args.cells} cells in {seconds:.1f} s, aggregate "
                  f"{rates[name][0]:.0f} training img/s, {rates[name][1]:.0f} img/s per cell while training")
    result = {"packed_img_s": round(rates["packed"][0], 1), "one_per_gpu_img_s": round(rates["one_per_gpu"][0], 1),
              "ratio": round(rates["packed"][0] / rates["one_per_gpu"][0], 2), "cells": args.cells,
              "cell_img_s_packed": round(rates["packed"][1], 1), "cell_img_s_alone": round(rates["one_per_gpu"][1], 1),
              "device": torch.cuda.get_device_name(0)}
    print(f"packing {args.cells} cells on one GPU: {result['ratio']}x the aggregate img/s (goal >= 2.5x)")
    print(json.dumps(result))
    return result


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cells", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2, help="Ray: cells at once (1 CPU each)")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--n-train", type=int, default=16, help="synthetic training images per category")
    parser.add_argument("--local-threads", type=int, help="torch threads of the local executor's cells "
                        "(default: torch's default, as `agpnet sweep` runs them)")
    parser.add_argument("--packing", action="store_true", help="cells on one GPU at 1 and 1/cells GPU each")
    parser.add_argument("--cpus-per-cell", type=int, default=2, help="--packing: CPUs (loader workers' share) per cell")
    args = parser.parse_args(argv)
    if args.packing:
        return packing(args)

    with tempfile.TemporaryDirectory(prefix="sweep_scaling.") as tmp:
        tmp = Path(tmp)
        root = write_synthetic_dataset(tmp / "synth", seed=0, image_size=64, n_train=args.n_train, n_test=6)
        sweep_file = write_sweep(tmp, args.cells, {"dataset": "mvtec", "root": str(root), "epochs": args.epochs,
                                                   "batch_size": 8, "weights": "random", "device": "cpu", **TINY})
        local_s = timed_sweep(sweep_file, tmp / "local", {"kind": "local", "cpus_per_cell": args.local_threads})
        print(f"local executor: {args.cells} cells in {local_s:.1f} s (torch threads: {args.local_threads or 'default'})")
        ray_s = timed_sweep(sweep_file, tmp / "ray", {"kind": "ray", "cpus_per_cell": 1,
                                                      "max_concurrent": args.workers})
        print(f"ray executor, {args.workers} workers: {args.cells} cells in {ray_s:.1f} s (Ray start included)")
    result = {"local_s": round(local_s, 1), "ray_s": round(ray_s, 1), "speedup": round(local_s / ray_s, 2),
              "cells": args.cells, "workers": args.workers, "device": f"cpu ({machine()}, load "
              f"{os.getloadavg()[0]:.1f} at the end)"}
    print(f"speedup {result['speedup']}x (goal on 2 cores: >= 1.6x)")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
