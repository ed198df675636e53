"""Bad input: every case raises AgpnetError with one line naming the path and what was expected."""

import json
import shutil

import pytest
from fixtures_data import (
    make_btad,
    make_folder,
    make_mvtec,
    make_mvtec2,
    make_mvtec3d,
    make_realiad,
    make_visa_raw,
    write_image,
    write_mask,
    write_realiad_json,
    write_visa_csv,
)

from agpnet.cli import main
from agpnet.data import AnomalyDataset, list_categories, load_split, read_folder
from agpnet.errors import AgpnetError


def _error(call, *args, **kwargs) -> str:
    with pytest.raises(AgpnetError) as info:
        call(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("dataset", ["mvtec", "visa", "mvtec3d", "folder", "mvtec2", "realiad", "btad"])
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
        ("mvtec2", "expected <root>/<category>/train/good/ and test_public/ (MVTec AD 2 layout)"),
        ("realiad", "expected <root>/realiad_<realiad_resolution>/<category>/ with <root>/realiad_jsons/"
                    "<realiad_split>/<category>.json (Real-IAD layout)"),
        ("btad", "expected <root>/<01|02|03>/train/ok/ (BTAD layout)"),
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


def test_flat_mask_matching_images_in_two_defect_folders(tmp_path):
    """Numbering restarts per defect folder (as in MVTec): a flat ground_truth/000_mask.png would
    be given to test/crack/000.png and test/scratch/000.png alike."""
    root = tmp_path / "widget"
    for i in range(2):
        write_image(root / "train" / "good" / f"{i}.png", seed=i)
    write_image(root / "test" / "crack" / "000.png", seed=10)
    write_image(root / "test" / "scratch" / "000.png", seed=11)
    mask = write_mask(root / "ground_truth" / "000_mask.png")
    message = _error(load_split, "folder", root, "one-class")
    assert str(mask) in message and str(root / "test" / "crack" / "000.png") in message
    assert str(root / "test" / "scratch" / "000.png") in message and "<defect>/<stem>_mask.png" in message


@pytest.mark.parametrize("nested", ["train/good/batch2/0.png", "test/rust/line2/0.png",
                                    "test/cam1_only/cam1/0.png"])
def test_images_in_sub_folders_stop_the_read(tmp_path, nested):
    """Images one level deeper than the layout says would be skipped (a defect folder holding
    only a sub-folder would vanish from the test set)."""
    root = make_folder(tmp_path / "part", mask_dir=None)
    write_image(root / nested)
    folder = root / nested.rsplit("/", 2)[0]
    message = _error(load_split, "folder", root, "one-class")
    assert f"{folder}: sub-folder {nested.split('/')[-2]}/ holds images" in message


def test_defect_folders_with_the_same_name(tmp_path):
    for i in range(2):
        write_image(tmp_path / "normal" / f"n{i}.png", seed=i)
    write_image(tmp_path / "line1" / "scratch" / "a.png")
    write_image(tmp_path / "line2" / "scratch" / "c.png")
    message = _error(read_folder, tmp_path / "normal", None, [tmp_path / "line1/scratch", tmp_path / "line2/scratch"])
    assert str(tmp_path / "line2" / "scratch") in message and str(tmp_path / "line1" / "scratch") in message


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


# --- Real-IAD, MVTec AD 2, BTAD: bad input through `agpnet run`, before anything is written -------


def _run_error(capsys, tmp_path, dataset: str, root, *flags: str) -> str:
    """`agpnet run` on bad data: exit status 2, one line on stderr, no run folder."""
    out = tmp_path / "run"
    code = main(["run", "--dataset", dataset, "--root", str(root), "--device", "cpu", "--weights", "random",
                 "--quiet", "--out", str(out), *flags])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("agpnet: error: ") and "\n" not in err, err
    assert not out.exists()
    return err


def _rewrite_realiad_split(root, category: str, change) -> None:
    path = root / "realiad_jsons" / "realiad_jsons" / f"{category}.json"
    lists = json.loads(path.read_text())
    change(lists)
    write_realiad_json(root, "realiad_jsons", category, lists)


def test_realiad_missing_split_file(tmp_path, capsys):
    root = make_realiad(tmp_path / "realiad")
    split_file = root / "realiad_jsons" / "realiad_jsons" / "pcb.json"
    split_file.unlink()
    err = _run_error(capsys, tmp_path, "realiad", root)
    assert f"{split_file}: Real-IAD split file not found" in err


def test_realiad_split_folder_missing_names_the_ones_there(tmp_path, capsys):
    root = make_realiad(tmp_path / "realiad")
    err = _run_error(capsys, tmp_path, "realiad", root, "--realiad-split", "realiad_jsons_fuiad_0.4")
    assert "realiad_jsons/realiad_jsons_fuiad_0.4/audiojack.json" in err and "found: realiad_jsons)" in err


def test_realiad_resolution_folder_missing_or_unknown(tmp_path, capsys):
    root = make_realiad(tmp_path / "realiad")
    assert "layout not recognised" in _run_error(capsys, tmp_path, "realiad", root, "--realiad-resolution", "512")
    err = _run_error(capsys, tmp_path, "realiad", root, "--realiad-resolution", "300")
    assert "realiad_resolution='300'" in err and "256, 512, 1024, raw" in err
    assert "realiad_split" in _run_error(capsys, tmp_path, "realiad", root, "--realiad-split", "../elsewhere")


def test_realiad_entry_pointing_to_a_missing_image(tmp_path, capsys):
    root = make_realiad(tmp_path / "realiad", n_train=2, n_good=1)
    image = root / "realiad_1024" / "pcb" / "OK" / "S0002" / "pcb_0002_OK_C1_20230922.jpg"
    image.unlink()
    err = _run_error(capsys, tmp_path, "realiad", root)
    assert f"{image}: image listed in {root / 'realiad_jsons' / 'realiad_jsons' / 'pcb.json'} test[0] not found" in err


def test_realiad_mask_size_mismatch(tmp_path, capsys):
    root = make_realiad(tmp_path / "realiad")
    mask = next((root / "realiad_1024" / "audiojack" / "NG").rglob("*_mask.png"))
    write_mask(mask, size=(32, 30))
    err = _run_error(capsys, tmp_path, "realiad", root)
    assert str(mask) in err and "mask size 32x30 differs" in err


def test_realiad_defective_entry_without_mask(tmp_path, capsys):
    root = make_realiad(tmp_path / "realiad")
    _rewrite_realiad_split(root, "audiojack", lambda lists: lists["test"][-1].update(mask_path=None))
    err = _run_error(capsys, tmp_path, "realiad", root)
    assert "defective test image has no mask" in err and "audiojack.json test[" in err


def test_realiad_anomaly_in_train_and_malformed_entries(tmp_path, capsys):
    root = make_realiad(tmp_path / "realiad")
    _rewrite_realiad_split(root, "pcb", lambda lists: lists["train"][1].update(anomaly_class="AK"))
    assert "pcb.json train[1]: anomaly class 'AK' in the train split" in _run_error(capsys, tmp_path, "realiad", root)
    _rewrite_realiad_split(root, "pcb", lambda lists: lists["train"][1].pop("image_path"))
    assert "pcb.json train[1]: expected an entry with image_path" in _run_error(capsys, tmp_path, "realiad", root)
    write_realiad_json(root, "realiad_jsons", "pcb", ["not", "an", "object"])
    assert "expected a JSON object with 'train' and 'test' lists" in _run_error(capsys, tmp_path, "realiad", root)
    (root / "realiad_jsons" / "realiad_jsons" / "pcb.json").write_text("{truncated")
    assert "pcb.json: not a readable JSON file" in _run_error(capsys, tmp_path, "realiad", root)


def test_mvtec2_missing_test_public_mask_and_mask_size(tmp_path, capsys):
    root = make_mvtec2(tmp_path / "mvtec2", categories=("can",))
    mask = root / "can" / "test_public" / "ground_truth" / "bad" / "001_bad_mask.png"
    mask.unlink()
    err = _run_error(capsys, tmp_path, "mvtec2", root)
    assert f"{root / 'can' / 'test_public' / 'bad' / '001_bad.png'}: defective test image has no mask" in err
    assert str(mask) in err
    write_mask(mask, size=(30, 32))
    assert f"{mask}: mask size 30x32 differs" in _run_error(capsys, tmp_path, "mvtec2", root)
    shutil.rmtree(root / "can" / "test_public")
    assert f"{root / 'can' / 'test_public'}: folder not found" in _run_error(capsys, tmp_path, "mvtec2", root)


def test_btad_missing_mask_and_mask_size(tmp_path, capsys):
    root = make_btad(tmp_path / "btad", products=("01",))
    (root / "01" / "ground_truth" / "ko" / "0001.png").unlink()
    err = _run_error(capsys, tmp_path, "btad", root)
    assert f"{root / '01' / 'test' / 'ko' / '0001.bmp'}: defective test image has no mask" in err
    assert "ground_truth/ko/0001.png or 0001.bmp" in err
    mask = write_mask(root / "01" / "ground_truth" / "ko" / "0001.bmp", size=(32, 16))
    assert f"{mask}: mask size 32x16 differs" in _run_error(capsys, tmp_path, "btad", root)
    shutil.rmtree(root / "01" / "test")
    assert f"{root / '01' / 'test'}: folder not found" in _run_error(capsys, tmp_path, "btad", root)
