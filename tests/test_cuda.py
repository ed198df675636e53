"""The CUDA path: bf16 autocast, loader workers, pinned memory, the fp16 feature cache and
torch.compile (inductor, CUDA graphs) train; a CUDA checkpoint loads on the CPU and predicts the
same maps; a whole run and `agpnet predict` work on the GPU and agree with the CPU. Skipped
without a CUDA device (CI has none); benchmarks/gpu_check.sh runs them."""

import csv
import math

import numpy as np
import pytest
import torch
from test_train import Stripes, make_model

from agpnet.cli import main
from agpnet.config import RunConfig
from agpnet.model.checkpoint import load_checkpoint
from agpnet.train import TrainConfig, fit

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def test_cuda_bf16_training_falls_and_its_checkpoint_predicts_alike_on_cpu(tiny_model_fields, tmp_path):
    model = make_model(tiny_model_fields, alpha_schedule="constant", mask_ratio_schedule="constant")
    cfg = TrainConfig(epochs=12, batch_size=4, lr=6e-3)  # amp auto = bf16, workers auto, pinned memory
    result = fit(model, Stripes(), cfg, tmp_path, "cuda", progress=False)
    assert all(math.isfinite(v) for v in result.loss_per_epoch)
    assert result.loss_per_epoch[-1] < 0.7 * result.loss_per_epoch[0]
    assert next(model.decoder.parameters()).device.type == "cuda"

    on_cpu, _ = load_checkpoint(result.checkpoint, "cpu")
    images = Stripes(4, seed=9).images
    cuda_fp32 = model.predict(images.cuda())  # no autocast: fp32 on both devices
    cpu = on_cpu.predict(images)
    for key in ("anomaly_map", "score"):
        torch.testing.assert_close(cuda_fp32[key].cpu(), cpu[key], rtol=1e-3, atol=1e-4)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        cuda_bf16 = model.predict(images.cuda())
    assert cuda_bf16["anomaly_map"].dtype == torch.float32
    torch.testing.assert_close(cuda_bf16["score"].cpu(), cpu["score"], rtol=0.05, atol=0.0)


def test_cuda_run_and_eval_agree_with_cpu_eval(synth_root, tiny_model_fields, tmp_path):
    from agpnet.run import evaluate_checkpoint, run_experiment

    cfg = RunConfig.from_flat({"dataset": "mvtec", "root": str(synth_root), "setting": "multi-class",
                               "epochs": 2, "batch_size": 4, "weights": "random", "device": "cuda",
                               "save_maps": True, "out_dir": str(tmp_path / "run"), **tiny_model_fields})
    record = run_experiment(cfg, progress=False)
    assert record["environment"]["device"].startswith("cuda") and record["environment"]["gpu"]
    means = record["metrics"]["mean"]
    assert all(0.0 <= means[k] <= 1.0 for k in means)
    checkpoint = str(tmp_path / "run" / "checkpoint.pt")
    evaluate_checkpoint(checkpoint, "mvtec", str(synth_root), device="cpu", save_maps=True,
                        out_dir=str(tmp_path / "cpu"))
    gpu, cpu = (np.load(tmp_path / name / "maps.npz") for name in ("run", "cpu"))
    assert list(gpu["paths"]) == list(cpu["paths"])
    for key in ("anomaly_maps", "scores"):  # bf16 on the GPU, fp32 on the CPU
        a, b = gpu[key].astype(np.float64), cpu[key].astype(np.float64)
        assert np.abs(a - b).max() <= 0.03 * np.abs(b).max(), key

    # `agpnet predict` on the GPU gives the CPU's scores (bf16 tolerance).
    images = str(synth_root / "wood" / "test")
    scores = {}
    for device in ("cuda", "cpu"):
        out = tmp_path / f"predict_{device}"
        assert main(["predict", "--checkpoint", checkpoint, images, "--out", str(out), "--device", device]) == 0
        rows = list(csv.DictReader((out / "scores.csv").open()))
        scores[device] = np.array([float(row["score"]) for row in sorted(rows, key=lambda row: row["image"])])
    assert len(scores["cuda"]) == len(list((synth_root / "wood" / "test").rglob("*.png")))
    assert np.abs(scores["cuda"] - scores["cpu"]).max() <= 0.03 * scores["cpu"].max()


@pytest.mark.parametrize("mode", ["default", "reduce-overhead"])
def test_cuda_compiled_training_matches_eager_and_saves_a_plain_checkpoint(tiny_model_fields, tmp_path, mode):
    fields = {"epochs": 2, "batch_size": 3, "lr": 6e-3}  # 8 images = 3 + 3 + 2: two batch shapes
    eager, model = make_model(tiny_model_fields), make_model(tiny_model_fields)
    expected = fit(eager, Stripes(8), TrainConfig(**fields), tmp_path / "eager", "cuda", progress=False)
    result = fit(model, Stripes(8), TrainConfig(**fields, compile=True, compile_mode=mode), tmp_path / "compiled",
                 "cuda", progress=False)
    assert result.loss_per_epoch == pytest.approx(expected.loss_per_epoch, rel=0.05)
    on_cpu, _ = load_checkpoint(result.checkpoint, "cpu")
    images = Stripes(7, seed=9).images
    for batch in (images[:4], images[4:], images[:4]):  # two batch sizes, then the first again
        torch.testing.assert_close(model.predict(batch.cuda())["score"].cpu(), on_cpu.predict(batch)["score"],
                                   rtol=1e-3, atol=1e-4)


def test_cuda_image_cache_on_the_device_matches_the_dataloader(synth_root, tiny_model_fields, tmp_path):
    from test_train import anomaly_dataset

    losses = {}
    for image_cache in ("off", "device"):
        result = fit(make_model(tiny_model_fields), anomaly_dataset(synth_root), TrainConfig(
            epochs=2, batch_size=3, lr=6e-3, image_cache=image_cache), tmp_path / image_cache, "cuda", progress=False)
        assert result.segments[0]["image_cache"] == (None if image_cache == "off" else "device")
        losses[image_cache] = result.loss_per_epoch
    assert losses["device"] == pytest.approx(losses["off"], rel=1e-5)


def test_cuda_graphs_for_a_whole_run_with_resume_and_evaluation(synth_root, tiny_model_fields, tmp_path):
    """compile_mode=reduce-overhead end to end: training (image cache on the device), checkpoint,
    resume of the finished run, evaluation (uncompiled); metrics close to an eager run's."""
    from agpnet.run import run_experiment

    records = {}
    for name, extra in (("eager", {}), ("graphs", {"compile": True, "compile_mode": "reduce-overhead"})):
        cfg = RunConfig.from_flat({"dataset": "mvtec", "root": str(synth_root), "setting": "multi-class",
                                   "epochs": 2, "batch_size": 4, "weights": "random", "device": "cuda",
                                   "checkpoint_every": 1, "image_cache": "device", "out_dir": str(tmp_path / name),
                                   **tiny_model_fields, **extra})
        records[name] = run_experiment(cfg, progress=False)
    resumed = run_experiment(cfg, resume=True, progress=False)  # finished: evaluates the checkpoint again
    assert resumed["loss_per_epoch"] == records["graphs"]["loss_per_epoch"]
    assert records["graphs"]["loss_per_epoch"] == pytest.approx(records["eager"]["loss_per_epoch"], rel=0.05)
    for key, value in records["eager"]["metrics"]["mean"].items():
        assert records["graphs"]["metrics"]["mean"][key] == pytest.approx(value, abs=0.05), key

