"""Faults and bad input that must end in one line (exit 2), never a traceback or a silent result:
damaged checkpoints, full disks, interrupted writes, errors in DataLoader workers, odd flags."""

import errno
import json
import os
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import pytest
import torch
from conftest import TINY_MODEL
from fixtures_data import make_mvtec, write_image

from agpnet.atomic import write_json
from agpnet.cli import main
from agpnet.config import TrainConfig
from agpnet.errors import AgpnetError
from agpnet.model import AGPNetConfig, build_model
from agpnet.model.checkpoint import CHECKPOINT_NAME, load_checkpoint, save_checkpoint

REPO = Path(__file__).resolve().parents[1]


def tiny_flags() -> list[str]:
    flags = []
    for key, value in TINY_MODEL.items():
        text = json.dumps(value) if isinstance(value, dict) else ",".join(map(str, value)) if isinstance(value, list) else str(value)
        flags += ["--" + key.replace("_", "-"), text]
    return flags


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("agpnet: error: ") and "\n" not in err, err
    return err


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """An untrained checkpoint of the tiny model (random encoder weights travel with it)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model, _ = build_model(AGPNetConfig(**TINY_MODEL), "random")
    path = tmp_path_factory.mktemp("ckpt") / CHECKPOINT_NAME
    optimizer = torch.optim.AdamW(model.decoder.parameters())
    return save_checkpoint(path, model, optimizer, TrainConfig(epochs=1), 1, [0.5], model.encoder.fingerprint(),
                           None, [])


def altered(checkpoint: Path, folder: Path, change) -> Path:
    state = torch.load(checkpoint, weights_only=True)
    change(state)
    path = folder / "altered.pt"
    torch.save(state, path)
    return path


def _set(section: str, **values):
    return lambda state: state[section].update(values)


# 6. A checkpoint that does not fit: one line naming the file and what does not fit.
@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (_set("model_config", decoder_depth=2), "decoder weights do not fit the model of its stored config: "),
        (lambda state: state.pop("decoder_ema"), "damaged checkpoint, it lacks decoder_ema"),
        (_set("model_config", blocks=[1, 5]), "cannot rebuild its model (model config blocks=(1, 5)"),
        (lambda state: state.update(format="agpnet-checkpoint-9"), "checkpoint format 'agpnet-checkpoint-9'"),
        (_set("train_config", warmup=3), "its train config is not valid for this agpnet"),
        (_set("model_config", noise="loud"), "its model config is not valid for this agpnet (model config noise='loud'"),
        (lambda state: state["encoder"].update(pos_embed=torch.zeros(1, 3, 32)), "encoder weights do not fit"),
        (lambda state: state.update(decoder=[1, 2]), "its decoder is list"),
    ],
)
def test_checkpoint_that_does_not_fit_is_one_line_naming_the_file(checkpoint, tmp_path, change, expected):
    path = altered(checkpoint, tmp_path, change)
    with pytest.raises(AgpnetError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and expected in message and "\n" not in message, message


def test_predict_and_eval_report_a_checkpoint_that_does_not_fit(checkpoint, synth_root, tmp_path, capsys):
    path = altered(checkpoint, tmp_path, _set("model_config", decoder_depth=2))
    image = write_image(tmp_path / "part.png")
    assert main(["predict", "--checkpoint", str(path), str(image), "--out", str(tmp_path / "p"), "--device", "cpu"]) == 2
    assert f"{path}: its decoder weights do not fit" in one_error_line(capsys)
    assert main(["eval", "--checkpoint", str(path), "--dataset", "mvtec", "--root", str(synth_root), "--device", "cpu",
                 "--out", str(tmp_path / "e")]) == 2
    assert f"{path}: its decoder weights do not fit" in one_error_line(capsys)


# 7. A full disk while saving the checkpoint (torch reports it as a RuntimeError): one line naming it.
def test_checkpoint_write_failure_names_the_file_and_leaves_no_temporary_file(checkpoint, tmp_path):
    """A real failed write: a child process that may write files of at most 20 kB saves the
    280 kB checkpoint (torch turns the failure into "RuntimeError: unexpected pos ...")."""
    script = textwrap.dedent(f"""
        import resource, signal, sys, torch
        from agpnet.config import TrainConfig
        from agpnet.model.checkpoint import load_checkpoint, save_checkpoint
        model, meta = load_checkpoint({str(checkpoint)!r})
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, resource.RLIM_INFINITY))
        try:
            save_checkpoint(sys.argv[1], model, torch.optim.AdamW(model.decoder.parameters()),
                            TrainConfig(**meta["train_config"]), 1, [0.5], meta["encoder_sha256"], None, [])
        except OSError as err:
            print(err.errno, err.filename)
    """)
    target = tmp_path / CHECKPOINT_NAME
    proc = subprocess.run([sys.executable, "-c", script, str(target)], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0 and proc.stdout.split() == [str(errno.EFBIG), str(target)], proc.stdout + proc.stderr
    assert os.listdir(tmp_path) == []


def _writes_then_fails(monkeypatch, target):
    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(target, no_space)


# 11. A full disk while writing record.json or maps.npz: name the file.
@pytest.mark.parametrize(("target", "name"), [("pathlib.Path.write_text", "record.json"),
                                              ("numpy.savez_compressed", "maps.npz")])
def test_full_disk_names_the_record_or_the_maps_file(checkpoint, synth_root, tmp_path, monkeypatch, capsys, target,
                                                     name):
    out = tmp_path / "eval"
    _writes_then_fails(monkeypatch, target)
    assert main(["eval", "--checkpoint", str(checkpoint), "--dataset", "mvtec", "--root", str(synth_root),
                 "--category", "wood", "--setting", "one-class", "--device", "cpu", "--save-maps",
                 "--out", str(out)]) == 2
    assert one_error_line(capsys) == f"agpnet: error: {out / name}: {os.strerror(errno.ENOSPC)}"
    assert not list(out.glob(".*.tmp"))


def test_leftover_temporary_files_are_removed_when_the_folder_is_next_written(tmp_path):
    """Left by a killed writer (modified before this process started): removed. Being written by
    another process now (modified since): kept. Other hidden files: kept."""
    killed = tmp_path / ".checkpoint.pt.k1ll3d_x.tmp"
    busy = tmp_path / ".checkpoint.pt.wr1t1ng_.tmp"
    users = tmp_path / ".notes.tmp"
    for path in (killed, busy, users):
        path.write_bytes(b"partial")
    before = time.time() - 24 * 3600  # before this test process started
    os.utime(killed, (before, before))
    os.utime(users, (before, before))
    write_json(tmp_path / "progress.json", {"stage": "train"})
    assert not killed.exists() and busy.exists() and users.exists()
    assert json.loads((tmp_path / "progress.json").read_text()) == {"stage": "train"}


# 8. An error in a DataLoader worker: the same one line as without workers.
def test_corrupt_image_read_by_a_worker_is_one_line(tmp_path, capsys):
    data = make_mvtec(tmp_path / "data", categories=("bottle",), n_train=4, n_good=1, defects=("crack",), n_defect=1)
    truncated = data / "bottle" / "train" / "good" / "002.png"
    truncated.write_bytes(truncated.read_bytes()[:200])  # header intact: found by the split, fails to decode
    assert main(["run", "--dataset", "mvtec", "--root", str(data), "--setting", "one-class", "--category", "bottle",
                 "--epochs", "1", "--batch-size", "2", "--weights", "random", "--device", "cpu", "--num-workers", "1",
                 "--quiet", "--out", str(tmp_path / "run"), *tiny_flags()]) == 2
    line = one_error_line(capsys)
    assert line.startswith(f"agpnet: error: {truncated}: cannot decode image") and "worker" not in line, line


# 12. --out naming an existing file: a folder was expected.
@pytest.mark.parametrize("command", ["predict", "run"])
def test_out_naming_a_file_says_a_folder_was_expected(synth_root, tmp_path, capsys, command):
    taken = tmp_path / "results.txt"
    taken.write_text("not a folder")
    image = write_image(tmp_path / "part.png")
    args = {"predict": ["predict", "--checkpoint", "c.pt", str(image)],
            "run": ["run", "--root", str(synth_root), "--weights", "random", "--quiet"]}[command]
    assert main([*args, "--out", str(taken)]) == 2
    assert one_error_line(capsys) == f"agpnet: error: {taken}: expected a folder, found a file"
    assert taken.read_text() == "not a folder"


# 13. Integer flags outside the config: one line, no usage block.
@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["predict", "--checkpoint", "c.pt", "x.png", "--out", "o", "--batch-size", "0"], "--batch-size 0: expected an integer >= 1"),
        (["eval", "--checkpoint", "c.pt", "--dataset", "mvtec", "--root", "r", "--out", "o", "--eval-batch-size", "two"],
         "--eval-batch-size two: expected an integer >= 1"),
        (["mvtec2-submission", "--checkpoint", "c.pt", "--root", "r", "--out", "o", "--batch-size", "two"],
         "--batch-size two: expected an integer >= 1"),
        (["synth", "--out", "s", "--n-train", "1.5"], "--n-train 1.5: expected an integer >= 0"),
    ],
)
def test_integer_flags_are_one_line(args, expected, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(args) == 2
    assert one_error_line(capsys) == f"agpnet: error: {expected}"


# 9 and 14 through the CLI: numbers checked for sweeps too; a key given twice.
def test_sweep_checks_numbers_before_running(tmp_path, capsys):
    sweep_file = tmp_path / "s.yaml"
    sweep_file.write_text(f"out: {tmp_path / 'out'}\nbase: {{dataset: mvtec, epochs: 1}}\n")
    assert main(["sweep", str(sweep_file), "--set", "lr=nan", "--dry-run"]) == 2
    assert "train config lr=nan: expected a finite number > 0" in one_error_line(capsys)
    assert main(["sweep", str(sweep_file), "--set", "epochs=true", "--dry-run"]) == 2
    assert "config field 'epochs': got True; expected int" in one_error_line(capsys)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", ["sweep", "run"])
def test_a_key_given_twice_is_an_error_naming_file_key_and_line(tmp_path, capsys, command):
    path = tmp_path / "twice.yaml"
    path.write_text(f"out: {tmp_path / 'out'}\nbase:\n  epochs: 5\n  lr: 0.001\n  epochs: 1\n"
                    if command == "sweep" else "epochs: 5\nlr: 0.001\nepochs: 1\n")
    args = ["sweep", str(path), "--dry-run"] if command == "sweep" else ["run", "--config", str(path)]
    assert main(args) == 2
    line = 5 if command == "sweep" else 3
    first = 3 if command == "sweep" else 1
    assert one_error_line(capsys) == (f"agpnet: error: {path} line {line}: key 'epochs' was already given on line "
                                      f"{first}; expected each key once")

