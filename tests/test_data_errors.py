"""Bad input: every case raises AgpnetError with one line naming the path and what was expected."""

import shutil

import pytest
from fixtures_data import (
    make_folder,
    make_mvtec,
    make_mvtec3d,
    make_visa_raw,
    write_image,
    write_mask,
    write_visa_csv,
)

from agpnet.data import AnomalyDataset, list_categories, load_split, read_folder
from agpnet.errors import AgpnetError


def _error(call, *args, **kwargs) -> str:
    with pytest.raises(AgpnetError) as info:
        call(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("dataset", ["mvtec", "visa", "mvtec3d", "folder"])
def test_root_missing(tmp_path, dataset):
    message = _error(load_split, dataset, tmp_path / "nowhere", "multi-class")
    assert str(tmp_path / "nowhere") in message and "not found" in message


@pytest.mark.parametrize(
    "dataset, expected",
    [
        ("mvtec", "expected <root>/<category>/train/good/ (MVTec-AD layout)"),
        ("mvtec3d", "expected <root>/<category>/train/good/rgb/ (MVTec-3D AD layout)"),
        ("visa", "<root>/split_csv/1cls.csv (VisA release)"),
        ("folder", "expected <root>/train/good/"),
    ],
)
def test_layout_not_recognised(tmp_path, dataset, expected):
    write_image(tmp_path / "photos" / "a.png")  # a folder of images, but no known layout
    message = _error(list_categories, dataset, tmp_path)
    assert str(tmp_path) in message and expected in message


def test_mvtec3d_reader_rejects_plain_mvtec(tmp_path):
    make_mvtec(tmp_path)
    assert "MVTec-3D AD layout" in _error(load_split, "mvtec3d", tmp_path, "multi-class")


def test_unknown_category_lists_available(tmp_path):
    make_mvtec(tmp_path, categories=("bottle", "cable"))
    message = _error(load_split, "mvtec", tmp_path, "one-class", category="screw")
    assert "'screw'" in message and str(tmp_path) in message and "available: bottle, cable" in message
    assert "available: bottle, cable" in _error(
        load_split, "mvtec", tmp_path, "multi-class", category="bottle,nut"
    )


def test_category_without_training_images(tmp_path):
    make_mvtec(tmp_path, categories=("bottle",))
    train_dir = tmp_path / "bottle" / "train" / "good"
    shutil.rmtree(train_dir)
    train_dir.mkdir()
    (train_dir / "readme.txt").write_text("no images here")
    message = _error(load_split, "mvtec", tmp_path, "one-class", category="bottle")
    assert str(train_dir) in message and "no training images" in message


def test_undecodable_image_is_caught_at_read_time(tmp_path):
    make_mvtec(tmp_path, categories=("bottle",))
    broken = tmp_path / "bottle" / "test" / "good" / "001.png"
    broken.write_bytes(b"this is not an image")
    message = _error(load_split, "mvtec", tmp_path, "one-class", category="bottle")
    assert str(broken) in message and "cannot read image" in message


def test_truncated_image_fails_in_getitem_naming_the_file(tmp_path):
    make_mvtec(tmp_path, categories=("bottle",))
    truncated = tmp_path / "bottle" / "train" / "good" / "002.png"
    truncated.write_bytes(truncated.read_bytes()[:200])  # header intact, pixel data cut
    split = load_split("mvtec", tmp_path, "one-class", category="bottle")
    dataset = AnomalyDataset(split.train, image_size=16)
    dataset[0]
    message = _error(dataset.__getitem__, 2)
    assert str(truncated) in message and "cannot decode" in message


def test_defective_image_without_mask_mvtec(tmp_path):
    make_mvtec(tmp_path, categories=("bottle",), defects=("crack",))
    (tmp_path / "bottle" / "ground_truth" / "crack" / "001_mask.png").unlink()
    image = tmp_path / "bottle" / "test" / "crack" / "001.png"
    message = _error(load_split, "mvtec", tmp_path, "one-class", category="bottle")
    assert str(image) in message and "no mask" in message and "001_mask.png" in message


def test_defective_image_without_mask_mvtec3d(tmp_path):
    make_mvtec3d(tmp_path, categories=("bagel",))
    (tmp_path / "bagel" / "test" / "hole" / "gt" / "000.png").unlink()
    message = _error(load_split, "mvtec3d", tmp_path, "one-class", category="bagel")
    assert str(tmp_path / "bagel" / "test" / "hole" / "rgb" / "000.png") in message and "no mask" in message


def test_defective_image_without_mask_visa(tmp_path):
    make_visa_raw(tmp_path, categories=("candle",))
    (tmp_path / "candle" / "Data" / "Masks" / "Anomaly" / "001.png").unlink()
    message = _error(load_split, "visa", tmp_path, "one-class", category="candle")
    assert (
        str(tmp_path / "candle" / "Data" / "Images" / "Anomaly" / "001.JPG") in message
        and "no mask" in message
    )


def test_defective_image_without_mask_folder_with_mask_dir(tmp_path):
    root = make_folder(tmp_path / "part")
    (root / "ground_truth" / "rust" / "rust1_mask.png").unlink()
    message = _error(load_split, "folder", root, "one-class")
    assert str(root / "test" / "rust" / "rust1.bmp") in message and "no mask" in message
    message = _error(
        read_folder, root / "train" / "good", None, [root / "test" / "rust"], root / "ground_truth"
    )
    assert "rust1.bmp" in message


def test_mask_size_differs_from_image(tmp_path):
    make_mvtec(tmp_path, categories=("bottle",), defects=("crack",))
    mask = write_mask(tmp_path / "bottle" / "ground_truth" / "crack" / "000_mask.png", size=(32, 30))
    message = _error(load_split, "mvtec", tmp_path, "one-class", category="bottle")
    assert str(mask) in message and "32x30" in message and "32x32" in message


def test_visa_csv_missing(tmp_path):
    make_visa_raw(tmp_path)
    csv_path = tmp_path / "split_csv" / "1cls.csv"
    csv_path.unlink()
    message = _error(load_split, "visa", tmp_path, "multi-class")
    assert str(csv_path) in message and "not found" in message


def test_visa_csv_missing_columns(tmp_path):
    make_visa_raw(tmp_path)
    csv_path = write_visa_csv(tmp_path, ["object", "split", "image"], [["candle", "train", "candle/x.JPG"]])
    message = _error(load_split, "visa", tmp_path, "multi-class")
    assert str(csv_path) in message and "missing columns label, mask" in message


def test_visa_csv_bad_label_and_missing_file(tmp_path):
    make_visa_raw(tmp_path, categories=("candle",))
    image = "candle/Data/Images/Normal/0000.JPG"
    csv_path = write_visa_csv(
        tmp_path, ["object", "split", "label", "image", "mask"], [["candle", "train", "ok", image, ""]]
    )
    assert f"{csv_path} line 2" in _error(load_split, "visa", tmp_path, "multi-class")
    write_visa_csv(
        tmp_path,
        ["object", "split", "label", "image", "mask"],
        [["candle", "train", "normal", "gone.JPG", ""]],
    )
    assert str(tmp_path / "gone.JPG") in _error(load_split, "visa", tmp_path, "multi-class")


def test_few_shot_k_larger_than_normal_images(tmp_path):
    make_mvtec(tmp_path, categories=("bottle",), n_train=3)
    message = _error(load_split, "mvtec", tmp_path, "few-shot", shots=4)
    assert str(tmp_path / "bottle" / "train" / "good") in message and "k=4" in message and "only 3" in message


def test_unknown_setting_dataset_and_bad_shots(tmp_path):
    make_mvtec(tmp_path, categories=("bottle", "cable"))
    assert "unknown setting 'zero-shot'" in _error(load_split, "mvtec", tmp_path, "zero-shot")
    assert "unknown dataset 'kolektor'" in _error(load_split, "kolektor", tmp_path, "one-class")
    assert "shots" in _error(load_split, "mvtec", tmp_path, "few-shot")
    assert "shots" in _error(load_split, "mvtec", tmp_path, "one-class", category="bottle", shots=2)
    assert "available: bottle, cable" in _error(load_split, "mvtec", tmp_path, "one-class")


def test_read_folder_missing_folder(tmp_path):
    message = _error(read_folder, tmp_path / "normal", None, [])
    assert str(tmp_path / "normal") in message and "expected a folder of normal training images" in message
