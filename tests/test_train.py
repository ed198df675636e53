"""Training loop: loss falls, checkpoints round-trip, resume equals an uninterrupted run,
divergence stops cleanly, the feature cache holds the encoder's output."""

import math
import warnings

import pytest
import torch

from agpnet.errors import AgpnetError
from agpnet.model import AGPNetConfig, build_model
from agpnet.model.checkpoint import load_checkpoint
from agpnet.progress import ProgressFile, read_progress
from agpnet.train import FeatureCache, TrainConfig, TrainingDiverged, fit


class Stripes(torch.utils.data.Dataset):
    """n smooth stripe images (3, 64, 64) as AnomalyDataset-like items."""

    def __init__(self, n: int = 12, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        y, x = torch.meshgrid(torch.linspace(0, 1, 64), torch.linspace(0, 1, 64), indexing="ij")
        freq = 2 + 2 * torch.rand(n, 3, 2, generator=g)
        phase = 2 * math.pi * torch.rand(n, 3, 1, 1, generator=g)
        self.images = torch.sin(
            2 * math.pi * (freq[..., 0, None, None] * x + freq[..., 1, None, None] * y) + phase
        )

    def __len__(self):
        return len(self.images)

    def __getitem__(self, index):
        return {"image": self.images[index], "index": index, "label": 0}


def make_model(fields: dict, **overrides):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model, _ = build_model(AGPNetConfig(**{**fields, **overrides}), "random")
    return model


def quick(**overrides) -> TrainConfig:
    return TrainConfig(**{"epochs": 3, "batch_size": 4, "lr": 6e-3, "num_workers": 0, **overrides})


def decoder_state(model):
    return {k: v.clone() for k, v in model.decoder.state_dict().items()}


def test_loss_falls(tiny_model_fields, tmp_path):
    model = make_model(tiny_model_fields, alpha_schedule="constant", mask_ratio_schedule="constant")
    result = fit(model, Stripes(), quick(epochs=12), tmp_path, "cpu", progress=False)
    assert len(result.loss_per_epoch) == 12 and all(math.isfinite(v) for v in result.loss_per_epoch)
    assert result.loss_per_epoch[-1] < 0.7 * result.loss_per_epoch[0]
    assert result.checkpoint == tmp_path / "checkpoint.pt" and result.checkpoint.is_file()
    assert result.train_seconds > 0 and result.images_per_second > 0
    assert not model.training  # handed back ready for evaluation


def test_progress_file_follows_training(tiny_model_fields, tmp_path, monkeypatch):
    written = []
    monkeypatch.setattr("agpnet.progress.write_json", lambda path, obj: written.append((path, obj)))
    monkeypatch.setattr("agpnet.train.SYNC_EVERY", 1)
    monkeypatch.setattr("agpnet.train.ProgressFile", lambda run_dir: ProgressFile(run_dir, interval_s=0.0))
    result = fit(make_model(tiny_model_fields), Stripes(), quick(epochs=2), tmp_path, "cpu", progress=False)
    assert {path for path, _ in written} == {tmp_path / "progress.json"}
    states = [obj for _, obj in written]
    assert [s["stage"] for s in states[:2]] == ["features", "train"]
    assert states[1]["step"] == 0 and states[1]["steps"] == 6 and states[1]["loss"] is None
    assert [s["step"] for s in states[2:-1]] == [1, 2, 3, 4, 5, 6]
    assert [s["epoch"] for s in states[2:-1]] == [1, 1, 1, 2, 2, 2]
    assert all(math.isfinite(s["loss"]) and s["img_s"] > 0 for s in states[2:])
    assert states[-1]["stage"] == "trained" and states[-1]["loss"] == states[-2]["loss"]
    assert states[-1]["epochs"] == 2 and result.loss_per_epoch


def test_checkpoint_round_trip(tiny_model_fields, tmp_path):
    model = make_model(tiny_model_fields)
    cfg = quick(epochs=5, lr_decay_at=0.6)
    result = fit(model, Stripes(), cfg, tmp_path, "cpu", progress=False)
    loaded, meta = load_checkpoint(result.checkpoint, "cpu")
    assert meta["epoch"] == 5 and meta["loss_per_epoch"] == result.loss_per_epoch
    assert meta["model_config"] == model.cfg.to_dict() and meta["train_config"]["epochs"] == 5
    assert meta["weights_info"] == model.weights_info and meta["weights_info"]["pretrained"] is False
    assert not loaded.training and loaded.cfg == model.cfg
    images = Stripes(4, seed=9).images
    for key in ("anomaly_map", "score"):
        torch.testing.assert_close(loaded.predict(images)[key], model.predict(images)[key], rtol=0, atol=0)
    for p, q in zip(loaded.decoder_ema.parameters(), model.decoder_ema.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0)
    raw = torch.load(result.checkpoint, weights_only=True)
    assert raw["encoder"] is not None  # random encoder weights travel with the checkpoint
    assert raw["optimizer"]["param_groups"][0]["lr"] == pytest.approx(
        6e-3 * 4 / 8 * 0.1
    )  # decayed after 60 %


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_equals_uninterrupted(tiny_model_fields, tmp_path, workers):
    data, cfg = Stripes(), quick(epochs=3, checkpoint_every=1, num_workers=workers)
    full = make_model(tiny_model_fields)
    expected = fit(full, data, cfg, tmp_path / "full", "cpu", progress=False)

    crashed = make_model(tiny_model_fields)
    calls = {"n": 0}
    original = crashed.training_loss

    def crash_in_third_epoch(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2 * 3 + 2:  # 3 steps per epoch: the 2nd step of epoch 3
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    crashed.training_loss = crash_in_third_epoch
    with pytest.raises(KeyboardInterrupt):
        fit(crashed, data, cfg, tmp_path / "resumed", "cpu", progress=False)
    assert load_checkpoint(tmp_path / "resumed" / "checkpoint.pt")[1]["epoch"] == 2

    resumed_model = make_model(tiny_model_fields)
    resumed = fit(resumed_model, data, cfg, tmp_path / "resumed", "cpu", resume=True, progress=False)
    assert resumed.loss_per_epoch == expected.loss_per_epoch
    for name, value in decoder_state(full).items():
        torch.testing.assert_close(resumed_model.decoder.state_dict()[name], value, rtol=0, atol=0)
    for p, q in zip(resumed_model.decoder_ema.parameters(), full.decoder_ema.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0)
    # Resuming a finished run changes nothing.
    again = fit(
        make_model(tiny_model_fields), data, cfg, tmp_path / "resumed", "cpu", resume=True, progress=False
    )
    assert again.loss_per_epoch == expected.loss_per_epoch


def test_compile_compiles_encoder_and_decoders_in_place(tiny_model_fields, tmp_path, monkeypatch):
    """compile=True: the same losses as without it and a checkpoint with the plain parameter names.
    Dynamo with the eager backend here, to stay fast; tests/test_cuda.py runs inductor."""
    compiled, original = [], torch.nn.Module.compile

    def eager_compile(module, *args, **kwargs):
        assert kwargs == {"mode": "reduce-overhead"}  # the default mode
        compiled.append(module)
        original(module, backend="eager")

    monkeypatch.setattr(torch.nn.Module, "compile", eager_compile)
    plain, model = make_model(tiny_model_fields), make_model(tiny_model_fields)
    expected = fit(plain, Stripes(8), quick(epochs=2), tmp_path / "plain", "cpu", progress=False)
    result = fit(model, Stripes(8), quick(epochs=2, compile=True), tmp_path / "compiled", "cpu", progress=False)
    assert compiled == [model.encoder, model.decoder, model.decoder_ema]
    assert all(m._compiled_call_impl is None for m in compiled)  # handed back uncompiled, for evaluation
    assert result.loss_per_epoch == pytest.approx(expected.loss_per_epoch, rel=1e-6)
    loaded, _ = load_checkpoint(result.checkpoint, "cpu")  # strict load: no "_orig_mod." prefixes
    images = Stripes(4, seed=9).images
    torch.testing.assert_close(loaded.predict(images)["score"], plain.predict(images)["score"], rtol=1e-5, atol=0)


def test_resume_refuses_a_different_setup(tiny_model_fields, tmp_path):
    data = Stripes(8)
    fit(make_model(tiny_model_fields), data, quick(epochs=1), tmp_path, "cpu", progress=False)
    with pytest.raises(AgpnetError, match="different model config \\(noise\\)"):
        fit(
            make_model(tiny_model_fields, noise="uniform"),
            data,
            quick(epochs=2),
            tmp_path,
            "cpu",
            resume=True,
            progress=False,
        )
    with pytest.raises(AgpnetError, match="different training settings \\(lr\\)"):
        fit(
            make_model(tiny_model_fields),
            data,
            quick(epochs=1, lr=1.0),
            tmp_path,
            "cpu",
            resume=True,
            progress=False,
        )
    other_encoder = make_model(tiny_model_fields)
    with torch.no_grad():
        other_encoder.encoder.vit.pos_embed.add_(1.0)
    with pytest.raises(AgpnetError, match="different encoder weights"):
        fit(other_encoder, data, quick(epochs=1), tmp_path, "cpu", resume=True, progress=False)


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tiny_model_fields, tmp_path):
    model = make_model(tiny_model_fields)
    calls = {"n": 0}
    original = model.training_loss

    def nan_in_third_epoch(*args, **kwargs):
        calls["n"] += 1
        loss = original(*args, **kwargs)
        return loss * float("nan") if calls["n"] >= 2 * 3 + 2 else loss

    model.training_loss = nan_in_third_epoch
    with pytest.raises(TrainingDiverged, match="epoch 3/3, step 2/3; the checkpoint of epoch 2 .* is kept") as err:
        fit(model, Stripes(), quick(epochs=3, checkpoint_every=1), tmp_path, "cpu", progress=False)
    assert isinstance(err.value, AgpnetError) and "\n" not in str(err.value)
    loaded, meta = load_checkpoint(tmp_path / "checkpoint.pt")
    assert meta["epoch"] == 2 and all(math.isfinite(v) for v in meta["loss_per_epoch"])
    assert all(torch.isfinite(p).all() for p in loaded.decoder.parameters())
    assert read_progress(tmp_path)["stage"] == "failed" and read_progress(tmp_path)["epoch"] == 2


def test_unwritable_progress_file_does_not_stop_training(tiny_model_fields, tmp_path, monkeypatch, caplog):
    def disk_full(path, obj):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("agpnet.progress.write_json", disk_full)
    result = fit(make_model(tiny_model_fields), Stripes(), quick(epochs=2), tmp_path, "cpu", progress=False)
    assert len(result.loss_per_epoch) == 2 and result.checkpoint.is_file()
    assert sum("progress.json" in r.getMessage() for r in caplog.records) == 1  # said once


def test_feature_cache_holds_clean_features_and_prior_attention(tiny_model_fields):
    model = make_model(tiny_model_fields)
    data = Stripes(5)
    batches = ((data.images[i:i + 2], torch.arange(i, min(i + 2, 5))) for i in range(0, 5, 2))
    cache = FeatureCache(model, batches, 5, device=torch.device("cpu"), amp=torch.autocast("cpu", enabled=False))
    index = torch.tensor([4, 0])
    f_clean, a_prior = model.encode_clean(data.images[index])
    cached_f, cached_a = cache.get(index)
    torch.testing.assert_close(cached_f, f_clean, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(cached_a, a_prior, rtol=1e-5, atol=1e-6)


def test_load_checkpoint_errors(tmp_path):
    with pytest.raises(AgpnetError, match="nothing.pt: checkpoint not found"):
        load_checkpoint(tmp_path / "nothing.pt")
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(AgpnetError, match="junk.pt: not a readable agpnet checkpoint"):
        load_checkpoint(tmp_path / "junk.pt")
    torch.save({"some": "dict"}, tmp_path / "other.pt")
    with pytest.raises(AgpnetError, match="other.pt: not an agpnet checkpoint"):
        load_checkpoint(tmp_path / "other.pt")


def test_bad_train_config():
    with pytest.raises(AgpnetError, match="amp='fp8'"):
        TrainConfig(amp="fp8")
    with pytest.raises(AgpnetError, match="epochs=0"):
        TrainConfig(epochs=0)


def test_resume_refuses_other_data_and_lists_the_training_segments(tiny_model_fields, tmp_path):
    data, cfg = Stripes(8), quick(epochs=2, checkpoint_every=1)
    identity = {"dataset": "mvtec", "root": "/data/a", "categories": ["bottle"], "train_files_sha256": "1"}
    crashed, calls = make_model(tiny_model_fields), {"n": 0}
    original = crashed.training_loss

    def crash_in_second_epoch(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    crashed.training_loss = crash_in_second_epoch
    with pytest.raises(KeyboardInterrupt):
        fit(crashed, data, cfg, tmp_path, "cpu", progress=False, data=identity)
    other = {**identity, "categories": ["cable"]}
    with pytest.raises(AgpnetError, match="trained on other data \\(categories: \\['bottle'\\] then, \\['cable'\\] now\\)"):
        fit(make_model(tiny_model_fields), data, cfg, tmp_path, "cpu", resume=True, progress=False, data=other)
    # a field newer than the checkpoint (train_files_stat_sha256 after an upgrade) is not compared
    newer = {**identity, "train_files_stat_sha256": "2"}
    resumed = fit(make_model(tiny_model_fields), data, cfg, tmp_path, "cpu", resume=True, progress=False,
                  data=newer)
    assert resumed.segments == [
        {"from_epoch": 0, "to_epoch": 1, "device": "cpu", "compile": False, "compile_mode": "reduce-overhead",
         "feature_cache": "torch.float32", "image_cache": None},
        {"from_epoch": 1, "to_epoch": 2, "device": "cpu", "compile": False, "compile_mode": "reduce-overhead",
         "feature_cache": "torch.float32", "image_cache": None}]
    _, meta = load_checkpoint(tmp_path / "checkpoint.pt")
    assert meta["data"] == newer and meta["segments"] == resumed.segments


def anomaly_dataset(root, **kwargs):
    from agpnet.data import AnomalyDataset, load_split

    return AnomalyDataset(load_split("mvtec", root, "one-class", category="wood").train, image_size=64, **kwargs)


def test_image_cache_changes_nothing(tiny_model_fields, tmp_path, synth_root):
    """Decoded images kept on the host (gathered there, no DataLoader) give bit-identical losses and
    weights to the DataLoader path, with and without the feature cache, and resume exactly."""
    results = {}
    for image_cache in ("off", "host"):
        for cache_features in (True, False):
            model = make_model(tiny_model_fields)
            cfg = quick(epochs=2, image_cache=image_cache, cache_features=cache_features)
            result = fit(model, anomaly_dataset(synth_root), cfg, tmp_path / f"{image_cache}{cache_features}", "cpu",
                         progress=False)
            assert result.segments[0]["image_cache"] == (None if image_cache == "off" else "host")
            results[image_cache, cache_features] = (result.loss_per_epoch, decoder_state(model))
    for cache_features in (True, False):
        (off_losses, off_state), (host_losses, host_state) = (results["off", cache_features],
                                                              results["host", cache_features])
        assert host_losses == off_losses
        for key in off_state:
            assert torch.equal(host_state[key], off_state[key]), key


class Augmented(torch.utils.data.Dataset):
    random_transform = True

    def __init__(self, dataset):
        self.dataset, self.image_size = dataset, dataset.image_size

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        return self.dataset[index]

    def read_pixels(self, index):
        return self.dataset.read_pixels(index)


def test_caches_refuse_a_dataset_with_a_random_transform(tiny_model_fields, tmp_path, synth_root):
    data = Augmented(anomaly_dataset(synth_root))
    with pytest.raises(AgpnetError, match="image_cache=auto: the training set applies a random transform"):
        fit(make_model(tiny_model_fields), data, quick(epochs=1, cache_features=False), tmp_path, "cpu",
            progress=False)
    with pytest.raises(AgpnetError, match="cache_features=true: the training set applies a random transform"):
        fit(make_model(tiny_model_fields), data, quick(epochs=1, image_cache="off"), tmp_path, "cpu", progress=False)
    with pytest.raises(AgpnetError, match="image_cache=host: this training set has no decoded pixels"):
        fit(make_model(tiny_model_fields), Stripes(4), quick(epochs=1, image_cache="host"), tmp_path, "cpu",
            progress=False)


def test_a_failing_compiler_stops_with_one_line_naming_the_switch(tiny_model_fields, tmp_path, monkeypatch):
    """compile is on by default for long CUDA runs: where torch.compile cannot work (no compiler,
    an unsupported platform) the run stops with one line saying how to train without it."""
    original = torch.nn.Module.compile

    def no_compiler(gm, inputs):
        raise RuntimeError("no C compiler found")

    monkeypatch.setattr(torch.nn.Module, "compile", lambda module, **kwargs: original(module, backend=no_compiler))
    with pytest.raises(AgpnetError, match=r"torch.compile failed \(.*no C compiler found.*\); train without it: "
                                          r"compile: false \(--compile false\)"):
        fit(make_model(tiny_model_fields), Stripes(8), quick(epochs=1, compile=True), tmp_path, "cpu",
            progress=False)
