"""End-to-end behaviour of the `agpnet` command: run, eval, predict, synth, and bad input."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

from agpnet.cli import main
from agpnet.config import RunConfig
from agpnet.environment import source_revision
from agpnet.metrics import METRICS


def _flags(fields: dict) -> list[str]:
    out = []
    for key, value in fields.items():
        if isinstance(value, dict):
            value = json.dumps(value)
        elif isinstance(value, list):
            value = ",".join(map(str, value))
        out += ["--" + key.replace("_", "-"), str(value)]
    return out


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, synth_root):
    """One tiny multi-class run through the CLI, shared by the tests below."""
    from conftest import TINY_MODEL

    out = tmp_path_factory.mktemp("run")
    args = [
        "run",
        "--dataset",
        "mvtec",
        "--root",
        str(synth_root),
        "--setting",
        "multi-class",
        "--epochs",
        "2",
        "--batch-size",
        "4",
        "--weights",
        "random",
        "--device",
        "cpu",
        "--save-maps",
        "true",
        "--quiet",
        "--out",
        str(out),
        *_flags(TINY_MODEL),
    ]
    assert main(args) == 0
    return out


def test_run_writes_a_complete_record(trained_run):
    record = json.loads((trained_run / "record.json").read_text())
    assert record["status"] == "complete"
    assert record["weights"]["pretrained"] is False and record["weights"]["warning"]
    assert len(record["loss_per_epoch"]) == 2
    timings = record["timings"]
    assert len(timings["epoch_s"]) == 2 and 0 < timings["features_s"] < timings["train_s"]
    assert sum(timings["epoch_s"]) < timings["train_s"]
    cats = record["categories"]
    assert len(cats) >= 3 and set(record["metrics"]) == {*cats, "mean"}
    for values in record["metrics"].values():
        assert set(values) == set(METRICS)
        assert all(0.0 <= values[k] <= 1.0 for k in METRICS)
    mean_auroc = sum(record["metrics"][c]["image_auroc"] for c in cats) / len(cats)
    assert record["metrics"]["mean"]["image_auroc"] == pytest.approx(mean_auroc)
    assert record["eval"]["resolution"].startswith("input resolution 64x64")
    assert record["environment"]["agpnet_commit"] == source_revision()  # which code ran (None outside git)
    # the record's config rebuilds the same run configuration
    assert RunConfig.from_dict(record["config"]).to_dict() == record["config"]
    assert (trained_run / "checkpoint.pt").is_file()
    assert not list(trained_run.glob("*.tmp")), "no temporary files left behind"


def test_maps_file_matches_the_test_set(trained_run):
    import numpy as np

    record = json.loads((trained_run / "record.json").read_text())
    with np.load(trained_run / "maps.npz") as maps:
        n = record["n_test"]
        assert maps["anomaly_maps"].shape[0] == n and maps["masks"].shape == maps["anomaly_maps"].shape
        assert maps["a_final"].shape[0] == n
        assert set(maps["categories"]) == set(record["categories"])
        assert (maps["labels"] == 1).sum() > 0 and maps["masks"][maps["labels"] == 0].sum() == 0


def test_eval_reproduces_the_run_metrics(trained_run, synth_root, tmp_path):
    out = tmp_path / "eval"
    assert (
        main(
            [
                "eval",
                "--checkpoint",
                str(trained_run / "checkpoint.pt"),
                "--dataset",
                "mvtec",
                "--root",
                str(synth_root),
                "--device",
                "cpu",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    run_record = json.loads((trained_run / "record.json").read_text())
    eval_record = json.loads((out / "record.json").read_text())
    for category, values in run_record["metrics"].items():
        for key, value in values.items():
            assert eval_record["metrics"][category][key] == pytest.approx(value, abs=1e-6), (category, key)
    assert eval_record["weights"] == run_record["weights"]
    for section in ("model", "train"):
        assert eval_record["config"][section] == run_record["config"][section]
    assert eval_record["config"]["weights"] == "random"
    # evaluating into the checkpoint's own folder would replace its record: refused
    assert main(["eval", "--checkpoint", str(trained_run / "checkpoint.pt"), "--dataset", "mvtec",
                 "--root", str(synth_root), "--device", "cpu", "--out", str(trained_run)]) == 2
    # the evaluation flags are named as for run (--eval-...); the short names stay as aliases
    for flag in ("--eval-precision", "--precision"):
        assert main(["eval", "--checkpoint", str(trained_run / "checkpoint.pt"), "--dataset", "mvtec",
                     "--root", str(synth_root), "--device", "cpu", flag, "bf16", "--out", str(tmp_path / flag)]) == 0
        assert json.loads((tmp_path / flag / "record.json").read_text())["eval"]["precision"] == "bf16"


def test_eval_takes_the_dataset_options(tmp_path):
    """--realiad-resolution reaches the reader and the record (the tree has no default 1024 folder)."""
    from conftest import TINY_MODEL
    from fixtures_data import make_realiad

    root = make_realiad(tmp_path / "realiad", n_train=2, n_good=1, n_bad=1, resolutions=("realiad_256",))
    data = ["--dataset", "realiad", "--root", str(root), "--device", "cpu"]
    assert main(["run", *data, "--realiad-resolution", "256", "--epochs", "1", "--batch-size", "2", "--weights",
                 "random", "--quiet", "--out", str(tmp_path / "run"), *_flags(TINY_MODEL)]) == 0
    args = ["eval", "--checkpoint", str(tmp_path / "run" / "checkpoint.pt"), *data]
    assert main([*args, "--realiad-resolution", "256", "--out", str(tmp_path / "e")]) == 0
    record = json.loads((tmp_path / "e" / "record.json").read_text())
    assert record["config"]["data"]["realiad_resolution"] == "256"
    assert record["categories"] == ["audiojack", "pcb"] and record["n_test"] == 4
    assert main([*args, "--out", str(tmp_path / "e1024")]) == 2


def _altered_checkpoint(trained_run, folder: Path, **changes) -> Path:
    """A copy of the trained run's checkpoint with top-level fields (or `data` fields, as data_*) changed."""
    state = torch.load(trained_run / "checkpoint.pt", weights_only=True)
    for key, value in changes.items():
        if key.startswith("data_"):
            state["data"][key[len("data_"):]] = value
        else:
            state[key] = value
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(state, folder / "checkpoint.pt")
    return folder / "checkpoint.pt"


def test_eval_refuses_what_would_misstate_the_result(trained_run, synth_root, tmp_path, capsys):
    """Review fix: a checkpoint of an unfinished run, or evaluated as another setting, dataset or on
    categories it never saw, used to give a complete record that tables showed as the method's result."""
    def evaluate(checkpoint, *flags, out="e"):
        return main(["eval", "--checkpoint", str(checkpoint), "--dataset", "mvtec", "--root", str(synth_root),
                     "--device", "cpu", *flags, "--out", str(tmp_path / out)])

    unfinished = _altered_checkpoint(trained_run, tmp_path / "unfinished", epoch=1)
    assert evaluate(unfinished) == 2
    assert "holds epoch 1 of 2 (an unfinished run)" in capsys.readouterr().err
    assert evaluate(trained_run / "checkpoint.pt", "--setting", "one-class", "--category", "wood") == 2
    assert "setting 'one-class' (trained: 'multi-class')" in capsys.readouterr().err
    assert not (tmp_path / "e").exists()  # nothing written

    wood = _altered_checkpoint(trained_run, tmp_path / "wood", data_setting="one-class", data_categories=["wood"])
    assert evaluate(wood, "--category", "fabric") == 2
    assert "not trained on fabric (trained on wood)" in capsys.readouterr().err
    assert evaluate(wood) == 0  # setting and category default to the checkpoint's
    record = json.loads((tmp_path / "e" / "record.json").read_text())
    assert (record["setting"], record["categories"]) == ("one-class", ["wood"])
    assert record["data"] == torch.load(wood, weights_only=True)["data"] and record["segments"]


def test_predict_writes_overlays_and_scores(trained_run, synth_root, tmp_path):
    category = sorted(p for p in Path(synth_root).iterdir() if p.is_dir())[0]
    folder = category / "test"
    out = tmp_path / "pred"
    assert (
        main(
            [
                "predict",
                "--checkpoint",
                str(trained_run / "checkpoint.pt"),
                str(folder),
                "--out",
                str(out),
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    rows = list(csv.DictReader((out / "scores.csv").open()))
    images = sorted(folder.rglob("*.png"))
    assert len(rows) == len(images)
    first = rows[0]
    overlay = Image.open(out / first["overlay"])
    assert overlay.size == Image.open(first["image"]).size
    assert float(first["score"]) >= 0


def _predict(trained_run, images, out, *flags: str) -> int:
    return main(["predict", "--checkpoint", str(trained_run / "checkpoint.pt"), *map(str, images), "--out", str(out),
                 "--device", "cpu", *flags])


def _test_images(synth_root) -> list[Path]:
    return sorted((sorted(p for p in Path(synth_root).iterdir() if p.is_dir())[0] / "test").rglob("*.png"))


def test_predict_replaces_an_earlier_prediction_only_with_overwrite(trained_run, synth_root, tmp_path, capsys):
    """Review fix: a second predict into the same --out left the first one's overlays beside the new
    files (scores.csv listing only the new ones)."""
    images = _test_images(synth_root)
    out = tmp_path / "pred"
    assert _predict(trained_run, images[:3], out) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    capsys.readouterr()
    assert _predict(trained_run, images[3:4], out) == 2
    assert capsys.readouterr().err.strip() == (f"agpnet: error: {out}: folder is not empty; use --overwrite to "
                                               "replace an earlier prediction there, or another --out")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert _predict(trained_run, images[3:4], out, "--overwrite") == 0
    rows = list(csv.DictReader((out / "scores.csv").open()))
    assert [row["image"] for row in rows] == [str(images[3])]
    assert sorted(p.name for p in out.iterdir()) == sorted([rows[0]["overlay"], "scores.csv"])
    assert [p.name for p in tmp_path.iterdir()] == ["pred"]  # no staging folder left
    (out / "notes.txt").write_text("mine")  # not a prediction file: --overwrite would delete it
    assert _predict(trained_run, images[:1], out, "--overwrite") == 2
    assert f"{out / 'notes.txt'}: not a file of an earlier prediction" in capsys.readouterr().err
    assert (out / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("damage", ["not an image", "truncated"])
def test_predict_with_an_unreadable_image_makes_no_out_folder(trained_run, synth_root, tmp_path, capsys, damage):
    """Review fix: --out was created before the images were decoded, and stayed empty."""
    good = _test_images(synth_root)[0]
    bad = tmp_path / "bad.png"
    data = good.read_bytes()
    bad.write_bytes(b"not an image" if damage == "not an image" else data[: len(data) // 2])
    out = tmp_path / "pred"
    assert _predict(trained_run, [good, bad], out) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"agpnet: error: {bad}: cannot ") and "\n" not in err, err
    assert [p.name for p in tmp_path.iterdir()] == ["bad.png"]


def test_config_file_and_flags(tmp_path, synth_root, tiny_model_fields):
    config = tmp_path / "cfg.yaml"
    config.write_text(yaml.safe_dump({"dataset": "mvtec", "root": str(synth_root), "epochs": 0, "weights": "random",
                                      "setting": "one-class", "category": "wood", "batch_size": 4, "device": "cpu",
                                      **tiny_model_fields}))
    out = tmp_path / "r"
    # epochs: 0 in the file is invalid; the flag overrides it
    assert main(["run", "--config", str(config), "--epochs", "1", "--quiet", "--out", str(out)]) == 0
    record = json.loads((out / "record.json").read_text())
    assert record["config"]["train"]["epochs"] == 1 and record["categories"] == ["wood"]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["run", "--root", "/nonexistent/root", "--weights", "random"], "/nonexistent/root"),
        (["run", "--noise", "loud"], "noise"),
        (["run", "--epochs", "many"], "epochs"),
        (["run", "--epochs", "[1"], "epochs"),
        (["run", "--eval-batch-size", "0"], "eval_batch_size"),
        (["run", "--device", "gpu"], "--device gpu"),
        (["run", "--config", "/nonexistent.yaml"], "/nonexistent.yaml"),
        (["run", "--config", "/"], "expected a YAML text file"),
        (["predict", "--checkpoint", "x.pt", "/nonexistent/img.png", "--out", "o"], "/nonexistent/img.png"),
        (["eval", "--checkpoint", "/nonexistent.pt", "--dataset", "mvtec", "--root", "/tmp", "--out", "e"],
         "/nonexistent.pt"),
        (["sweep", "s.yaml", "--set", "epochs"], "KEY=VALUE"),
        (["sweep", "s.yaml", "--set", "epochs=[1"], "--set epochs"),
        (["sweep", "/nonexistent/sweep.yaml"], "/nonexistent/sweep.yaml"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args, expected, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("agpnet: error:") and "\n" not in err and expected in err, err


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("epochs: 1\n2: 3\n", "line 2: key 2: expected a non-empty string"),  # was: AttributeError
        ("category: [fabric, wood]\n", ": config field 'category': got ['fabric', 'wood']; expected str"),
        ("epochs: ten\n", ": config field 'epochs': got 'ten'; expected int"),
    ],
)
def test_bad_config_file_is_one_line_naming_the_file(text, expected, tmp_path, capsys):
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    assert main(["run", "--config", str(path), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"agpnet: error: {path}") and expected in err and "\n" not in err, err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    "error",
    [torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79 GiB"),
     RuntimeError("[enforce fail at alloc_cpu.cpp:118] DefaultCPUAllocator: can't allocate memory: you tried "
                  "to allocate 68719476736 bytes"),
     MemoryError()],
)
def test_out_of_memory_is_one_line_and_exit_3(error, synth_root, tmp_path, monkeypatch, capsys):
    def run_experiment(cfg, resume=False, progress=True, overwrite=False):
        raise error

    monkeypatch.setattr("agpnet.run.run_experiment", run_experiment)
    assert main(["run", "--root", str(synth_root), "--out", str(tmp_path / "r"), "--quiet"]) == 3
    err = capsys.readouterr().err.strip()
    assert err.startswith("agpnet: error: out of memory") and "--batch-size" in err and "\n" not in err, err


def test_other_runtime_errors_are_not_called_out_of_memory(synth_root, tmp_path, monkeypatch):
    def run_experiment(cfg, resume=False, progress=True, overwrite=False):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    monkeypatch.setattr("agpnet.run.run_experiment", run_experiment)
    with pytest.raises(RuntimeError, match="shapes"):
        main(["run", "--root", str(synth_root), "--out", str(tmp_path / "r"), "--quiet"])


@pytest.mark.parametrize("args", [["run", "--no-such-field", "1"], ["predict", "--checkpoint", "c"]])
def test_bad_flags_are_argparse_errors(args, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2 and "error:" in capsys.readouterr().err


def test_the_command_prints_no_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "agpnet", "run", "--root", "/nonexistent/root"], capture_output=True,
                          text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("agpnet: error: ")
    assert "Traceback" not in proc.stderr


def test_synth_command_writes_the_layout(tmp_path):
    assert (
        main(["synth", "--out", str(tmp_path / "s"), "--image-size", "32", "--n-train", "2", "--n-test", "2"])
        == 0
    )
    assert list((tmp_path / "s").glob("*/train/good/*.png"))


def test_few_shot_run_records_the_chosen_files(tmp_path, synth_root, tiny_model_fields):
    from agpnet.run import run_experiment

    cfg = RunConfig.from_flat({"dataset": "mvtec", "root": str(synth_root), "setting": "few-shot", "shots": 2,
                               "epochs": 1, "batch_size": 2, "weights": "random", "device": "cpu",
                               "out_dir": str(tmp_path / "fs"), **tiny_model_fields})
    record = run_experiment(cfg, progress=False)
    files = record["few_shot_files"]
    assert set(files) == set(record["categories"]) and all(len(v) == 2 for v in files.values())
    assert record["n_train"] == 2 * len(files)
    assert all((Path(synth_root) / f).is_file() for v in files.values() for f in v)
    on_disk = json.loads((tmp_path / "fs" / "record.json").read_text())
    assert on_disk["few_shot_files"] == files


def _tiny_run_args(root, out, *extra) -> list[str]:
    from conftest import TINY_MODEL

    return ["run", "--dataset", "mvtec", "--root", str(root), "--setting", "one-class", "--category", "wood",
            "--epochs", "1", "--batch-size", "4", "--weights", "random", "--device", "cpu", "--quiet",
            "--out", str(out), *_flags(TINY_MODEL), *extra]


def test_a_complete_run_is_never_lost_or_silently_replaced(tmp_path, synth_root, capsys):
    """Before: a typo in --root deleted the finished run's record before the data was checked, and a
    second run into the same folder replaced it silently."""
    out = tmp_path / "run"
    assert main(_tiny_run_args(synth_root, out)) == 0
    record = (out / "record.json").read_bytes()
    capsys.readouterr()
    assert main(_tiny_run_args(tmp_path / "typo", out, "--overwrite")) == 2  # bad input: nothing touched
    assert (out / "record.json").read_bytes() == record
    assert main(_tiny_run_args(synth_root, out)) == 2  # a complete run is there: say so
    err = capsys.readouterr().err
    assert "a complete run is already in this folder" in err and "--overwrite" in err and "--resume" in err
    assert (out / "record.json").read_bytes() == record
    assert main(_tiny_run_args(synth_root, out, "--seed", "1", "--overwrite")) == 0
    assert json.loads((out / "record.json").read_text())["seed"] == 1
    (tmp_path / "file").write_text("x")
    assert main(_tiny_run_args(synth_root, tmp_path / "file")) == 2
    assert "file: expected a folder, found a file" in capsys.readouterr().err


def test_resume_after_a_training_image_was_replaced_stops(tmp_path, capsys):
    """Review fix: the data's identity held the training files' names only, so a resume after an
    image was replaced under the same name (e.g. a regenerated synthetic set) went on silently."""
    from agpnet.data.synth import write_synthetic_dataset

    root = write_synthetic_dataset(tmp_path / "data", seed=0, image_size=64, n_train=4, n_test=2)
    out = tmp_path / "run"
    assert main(_tiny_run_args(root, out)) == 0
    first, second = sorted((root / "wood" / "train" / "good").iterdir())[:2]
    first.write_bytes(second.read_bytes())
    capsys.readouterr()
    assert main(_tiny_run_args(root, out, "--resume")) == 2
    err = capsys.readouterr().err
    assert "trained on other data (train_files_stat_sha256: " in err and "train_files_sha256" not in err


def test_resume_on_other_data_stops_with_the_differing_field(tmp_path, synth_root, capsys):
    """Before: --resume into a folder trained on another category reused that model and recorded
    'complete' on the new data with the old losses."""
    out = tmp_path / "run"
    assert main(_tiny_run_args(synth_root, out)) == 0
    capsys.readouterr()
    args = _tiny_run_args(synth_root, out, "--resume")
    args[args.index("wood")] = "fabric"
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "trained on other data (categories: ['wood'] then, ['fabric'] now" in err
    record = json.loads((out / "record.json").read_text())
    assert record["categories"] == ["wood"] and record["data"]["categories"] == ["wood"]
    assert record["data"]["root"] == str(Path(synth_root).resolve()) and len(record["data"]["train_files_sha256"]) == 64
    assert record["segments"][0]["feature_cache"] == "torch.float32"
