"""`agpnet mvtec2-submission`: MVTec AD 2's test_private and test_private_mixed maps in the evaluation
server's format, with thresholds from validation/good only; on a tiny model and a tiny tree."""

import json

import numpy as np
import pytest
import tifffile
import torch
from conftest import TINY_MODEL
from fixtures_data import make_mvtec2, write_image
from PIL import Image

from agpnet.cli import main
from agpnet.data import image_size
from agpnet.errors import AgpnetError
from agpnet.model.checkpoint import load_checkpoint
from agpnet.predict import find_images, predict_maps, upsample
from agpnet.submission import write_submission

IMAGE = (40, 24)  # (width, height): not the model's 64 x 64, so the maps must be resized to it
SETS = ("test_private", "test_private_mixed")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """An MVTec AD 2 tree and a tiny model trained on it for one epoch through `agpnet run`."""
    root = make_mvtec2(tmp_path_factory.mktemp("mvtec2"), categories=("can", "vial"), n_train=4, n_validation=3,
                       n_good=1, n_bad=1, n_private=2, size=IMAGE)
    out = tmp_path_factory.mktemp("run")
    model = [item for key, value in TINY_MODEL.items()
             for item in ("--" + key.replace("_", "-"), json.dumps(value) if isinstance(value, dict)
                          else ",".join(map(str, value)) if isinstance(value, list) else str(value))]
    assert main(["run", "--dataset", "mvtec2", "--root", str(root), "--epochs", "1", "--batch-size", "4",
                 "--weights", "random", "--device", "cpu", "--quiet", "--out", str(out), *model]) == 0
    return root, out / "checkpoint.pt"


def _submit(trained, out, *flags: str) -> int:
    root, checkpoint = trained
    return main(["mvtec2-submission", "--checkpoint", str(checkpoint), "--root", str(root), "--out", str(out),
                 "--device", "cpu", *flags])


def test_files_in_the_server_format(trained, tmp_path, capsys):
    root, _ = trained
    out = tmp_path / "submission"
    assert _submit(trained, out) == 0
    printed = capsys.readouterr().out
    assert "can: threshold" in printed and "vial: threshold" in printed
    assert "lacks fabric, fruit_jelly, rice, sheet_metal, wallplugs, walnuts" in printed
    assert sorted(p.name for p in out.iterdir()) == ["anomaly_images", "anomaly_images_thresholded"]
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    expected = [f"{folder}/{c}/{s}/{i:03d}_{'regular' if s == 'test_private' else 'mixed'}.{suffix}"
                for folder, suffix in (("anomaly_images", "tiff"), ("anomaly_images_thresholded", "png"))
                for c in ("can", "vial") for s in SETS for i in range(2)]
    assert files == sorted(expected)
    for tiff in (out / "anomaly_images").rglob("*.tiff"):
        values = tifffile.imread(tiff)
        assert values.dtype == np.float16 and values.shape == (IMAGE[1], IMAGE[0]) and np.isfinite(values).all()
        image = root / tiff.parent.relative_to(out / "anomaly_images") / (tiff.stem + ".png")
        assert image_size(image) == IMAGE
        png = np.asarray(Image.open(out / "anomaly_images_thresholded" / tiff.relative_to(out / "anomaly_images")
                                    .with_suffix(".png")))
        assert png.shape == values.shape and png.dtype == np.uint8 and set(np.unique(png)) <= {0, 255}


def test_thresholds_come_from_validation_good_only(trained, tmp_path):
    root, checkpoint = trained
    thresholds = write_submission(str(checkpoint), str(root), str(tmp_path / "a"), device="cpu")
    # the threshold is mean + 3 std of the validation/good map pixels at the images' own size
    model, _ = load_checkpoint(checkpoint, "cpu")
    paths = find_images([str(root / "can" / "validation" / "good")])
    maps, _ = predict_maps(model, paths, torch.device("cpu"), amp="off")
    pixels = np.concatenate([upsample(m, image_size(p)).numpy().ravel() for m, p in zip(maps, paths)])
    assert thresholds["can"] == pytest.approx(pixels.mean() + 3 * pixels.std(), rel=1e-5)
    # the binary maps are the float16 maps above that threshold
    tiff = tmp_path / "a" / "anomaly_images" / "can" / "test_private" / "000_regular.tiff"
    png = tmp_path / "a" / "anomaly_images_thresholded" / "can" / "test_private" / "000_regular.png"
    above = tifffile.imread(tiff).astype(np.float64) > thresholds["can"]
    assert np.array_equal(np.asarray(Image.open(png)) == 255, above)
    # other test images: the same thresholds; other validation images: others
    for i in range(2):
        write_image(root / "can" / "test_private" / f"{i:03d}_regular.png", size=IMAGE, seed=500 + i)
    assert write_submission(str(checkpoint), str(root), str(tmp_path / "b"), device="cpu") == thresholds
    write_image(root / "vial" / "validation" / "good" / "000_regular.png", size=IMAGE, seed=600)
    changed = write_submission(str(checkpoint), str(root), str(tmp_path / "c"), device="cpu")
    assert changed["can"] == thresholds["can"] and changed["vial"] != thresholds["vial"]


def test_an_earlier_submission_is_replaced_only_with_overwrite(trained, tmp_path, capsys):
    out = tmp_path / "submission"
    assert _submit(trained, out, "--category", "vial") == 0
    tiff = out / "anomaly_images" / "vial" / "test_private" / "000_regular.tiff"
    before = tiff.read_bytes()
    tiff.write_bytes(b"an older submission")
    capsys.readouterr()
    assert _submit(trained, out, "--category", "vial") == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "a submission file is already there; use --overwrite" in err
    assert tiff.read_bytes() == b"an older submission"
    assert _submit(trained, out, "--category", "can") == 0  # other categories' files: no collision
    assert _submit(trained, out, "--category", "vial", "--overwrite") == 0
    assert tiff.read_bytes() == before


def test_bad_input_writes_nothing(trained, tmp_path, capsys):
    root, _ = trained
    out = tmp_path / "submission"
    assert _submit(trained, out, "--category", "rice") == 2
    assert "--category rice: not in" in capsys.readouterr().err
    private = root / "vial" / "test_private_mixed"
    private.rename(root / "vial" / "elsewhere")
    try:
        assert _submit(trained, out) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and str(private) in err
    finally:
        (root / "vial" / "elsewhere").rename(private)
    assert not out.exists()


def test_a_failure_half_way_leaves_no_half_submission(trained, tmp_path, capsys, monkeypatch):
    """Review fix: a map float16 cannot hold in the second category stops the export before any
    file reaches --out (before, the first category's files stayed and blocked a rerun)."""
    import agpnet.submission as submission

    calls = {"n": 0}
    original = submission._float16

    def overflow_later(values, path):
        calls["n"] += 1
        if calls["n"] > 3:
            raise AgpnetError(f"{path}: map value too large for float16")
        return original(values, path)

    monkeypatch.setattr(submission, "_float16", overflow_later)
    out = tmp_path / "submission"
    assert _submit(trained, out) == 2
    assert "too large for float16" in capsys.readouterr().err
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".submission.")]
