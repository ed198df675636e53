"""Layout readers and training settings on small fixture trees."""

from pathlib import Path

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
)

from agpnet.config import RunConfig
from agpnet.data import AnomalyDataset, list_categories, load_split, read_folder
from agpnet.errors import AgpnetError


def _names(samples):
    return [
        (s.image.parent.name, s.image.name, s.label, s.defect, s.mask.name if s.mask else None)
        for s in samples
    ]


# --- MVTec-AD --------------------------------------------------------------------------------


def test_mvtec_categories_ignore_root_files_and_folders_without_train_good(tmp_path):
    make_mvtec(tmp_path, categories=("zipper", "bottle"))
    (tmp_path / "not_a_category" / "test").mkdir(parents=True)
    assert list_categories("mvtec", tmp_path) == ["bottle", "zipper"]


def test_mvtec_one_class_reads_train_and_test_with_masks(tmp_path):
    make_mvtec(tmp_path, n_train=3, n_good=2, defects=("crack", "scratch"), n_defect=2)
    split = load_split("mvtec", tmp_path, "one-class", category="cable")
    assert split.categories == ["cable"] and split.few_shot_files is None
    assert [s.image.name for s in split.train] == ["000.png", "001.png", "002.png"]
    assert {(s.label, s.defect, s.mask) for s in split.train} == {(0, "good", None)}
    assert all(s.category == "cable" for s in split.train + split.test)
    assert _names(split.test) == [
        ("crack", "000.png", 1, "crack", "000_mask.png"),
        ("crack", "001.png", 1, "crack", "001_mask.png"),
        ("good", "000.png", 0, "good", None),
        ("good", "001.png", 0, "good", None),
        ("scratch", "000.png", 1, "scratch", "000_mask.png"),
        ("scratch", "001.png", 1, "scratch", "001_mask.png"),
    ]
    assert split.test[0].mask == tmp_path / "cable" / "ground_truth" / "crack" / "000_mask.png"


def test_mvtec_accepts_masks_named_like_the_image(tmp_path):
    """VisA converted to the MVTec layout often names masks <stem>.png (no _mask suffix)."""
    make_mvtec(tmp_path, categories=("candle",), defects=("bad",), suffix=".JPG", mask_name="{stem}.png")
    split = load_split("visa", tmp_path, "one-class", category="candle")
    defective = [s for s in split.test if s.label == 1]
    assert [(s.image.name, s.mask.name) for s in defective] == [
        ("000.JPG", "000.png"),
        ("001.JPG", "001.png"),
    ]


def test_mvtec_ignores_hidden_and_non_image_files(tmp_path):
    make_mvtec(tmp_path, categories=("bottle",), n_train=2)
    good = tmp_path / "bottle" / "train" / "good"
    (good / ".DS_Store").write_bytes(b"\0junk")
    (good / "._000.png").write_bytes(b"\0junk")
    (good / "notes.txt").write_text("x")
    split = load_split("mvtec", tmp_path, "one-class", category="bottle")
    assert [s.image.name for s in split.train] == ["000.png", "001.png"]


def test_multi_class_all_categories_and_subset(tmp_path):
    make_mvtec(
        tmp_path, categories=("bottle", "cable", "wood"), n_train=2, n_good=1, defects=("crack",), n_defect=1
    )
    split = load_split("mvtec", tmp_path, "multi-class")
    assert split.categories == ["bottle", "cable", "wood"]
    assert [s.category for s in split.train] == ["bottle"] * 2 + ["cable"] * 2 + ["wood"] * 2
    assert len(split.test) == 6
    subset = load_split("mvtec", tmp_path, "multi-class", category="wood, bottle")
    assert subset.categories == ["bottle", "wood"]
    assert {s.category for s in subset.train + subset.test} == {"bottle", "wood"}


def test_reading_is_deterministic(tmp_path):
    make_mvtec(tmp_path)
    assert load_split("mvtec", tmp_path, "multi-class") == load_split("mvtec", tmp_path, "multi-class")


# --- few-shot --------------------------------------------------------------------------------


def test_few_shot_draws_k_per_category_deterministically(tmp_path):
    make_mvtec(tmp_path, categories=("bottle", "cable"), n_train=12, n_good=1, defects=("crack",), n_defect=1)
    full = load_split("mvtec", tmp_path, "multi-class")
    split = load_split("mvtec", tmp_path, "few-shot", shots=4, seed=0)
    again = load_split("mvtec", tmp_path, "few-shot", shots=4, seed=0)
    other = load_split("mvtec", tmp_path, "few-shot", shots=4, seed=1)
    assert split == again
    assert split.few_shot_files != other.few_shot_files
    assert split.test == full.test
    assert sorted(split.few_shot_files) == ["bottle", "cable"]
    for category, files in split.few_shot_files.items():
        assert len(files) == 4 and files == sorted(files)
        assert all(f.startswith(f"{category}/train/good/") for f in files)
    assert [s.image.relative_to(tmp_path).as_posix() for s in split.train] == (
        split.few_shot_files["bottle"] + split.few_shot_files["cable"]
    )


def test_few_shot_categories_of_equal_size_get_their_own_draws(tmp_path):
    """Each category's draw is seeded from (seed, category): equal-sized categories do not get the
    same index positions (before, every category was drawn with the same seed)."""
    make_mvtec(tmp_path, categories=("bottle", "cable", "grid"), n_train=12, n_good=1, defects=("crack",), n_defect=1)
    for seed in range(3):
        files = load_split("mvtec", tmp_path, "few-shot", shots=3, seed=seed).few_shot_files
        positions = {tuple(f.rsplit("/", 1)[1] for f in chosen) for chosen in files.values()}
        assert len(positions) > 1, f"seed {seed}: every category drew the same positions"
    assert load_split("mvtec", tmp_path, "few-shot", shots=3, seed=0).few_shot_files["cable"] == [
        "cable/train/good/" + name for name in FEW_SHOT_CABLE_SEED_0]


# random.Random("0/cable").sample(range(12), 3), sorted: pinned so that a change of the draw is noticed.
FEW_SHOT_CABLE_SEED_0 = ["000.png", "002.png", "009.png"]


def test_few_shot_one_category_and_all_images(tmp_path):
    make_mvtec(tmp_path, categories=("bottle", "cable"), n_train=8, n_good=1, defects=("crack",), n_defect=1)
    split = load_split("mvtec", tmp_path, "few-shot", category="cable", shots=8, seed=3)
    assert split.categories == ["cable"]
    assert split.few_shot_files == {"cable": [f"cable/train/good/{i:03d}.png" for i in range(8)]}
    for k in (1, 2, 4):
        assert len(load_split("mvtec", tmp_path, "few-shot", category="cable", shots=k).train) == k


# --- VisA --------------------------------------------------------------------------------------


def test_visa_raw_uses_the_csv_split(tmp_path):
    make_visa_raw(tmp_path, categories=("pcb1", "candle"), n_train=3, n_good=2, n_anomaly=2)
    assert list_categories("visa", tmp_path) == ["candle", "pcb1"]
    split = load_split("visa", tmp_path, "one-class", category="pcb1")
    assert [s.image.name for s in split.train] == ["0000.JPG", "0001.JPG", "0002.JPG"]
    assert _names(split.test) == [
        ("Anomaly", "000.JPG", 1, "anomaly", "000.png"),
        ("Anomaly", "001.JPG", 1, "anomaly", "001.png"),
        ("Normal", "0003.JPG", 0, "good", None),
        ("Normal", "0004.JPG", 0, "good", None),
    ]
    assert split.test[0].mask == tmp_path / "pcb1" / "Data" / "Masks" / "Anomaly" / "000.png"
    few = load_split("visa", tmp_path, "few-shot", shots=1)
    assert all(f.startswith(f"{c}/Data/Images/Normal/") for c, fs in few.few_shot_files.items() for f in fs)


def test_visa_in_mvtec_layout_is_detected(tmp_path):
    make_mvtec(tmp_path, categories=("capsules", "fryum"), suffix=".JPG")
    assert list_categories("visa", tmp_path) == ["capsules", "fryum"]
    assert len(load_split("visa", tmp_path, "multi-class").train) == 8


# --- MVTec-3D AD -------------------------------------------------------------------------------


def test_mvtec3d_reads_rgb_only_and_ignores_validation(tmp_path):
    make_mvtec3d(tmp_path, categories=("rope", "bagel"), n_train=3, defects=("hole", "cut"), n_test=2)
    assert list_categories("mvtec3d", tmp_path) == ["bagel", "rope"]
    split = load_split("mvtec3d", tmp_path, "one-class", category="bagel")
    assert [s.image.relative_to(tmp_path).as_posix() for s in split.train] == [
        f"bagel/train/good/rgb/{i:03d}.png" for i in range(3)
    ]
    assert [
        (s.image.relative_to(tmp_path).as_posix(), s.mask and s.mask.relative_to(tmp_path).as_posix())
        for s in split.test
    ] == [
        ("bagel/test/cut/rgb/000.png", "bagel/test/cut/gt/000.png"),
        ("bagel/test/cut/rgb/001.png", "bagel/test/cut/gt/001.png"),
        ("bagel/test/good/rgb/000.png", None),
        ("bagel/test/good/rgb/001.png", None),
        ("bagel/test/hole/rgb/000.png", "bagel/test/hole/gt/000.png"),
        ("bagel/test/hole/rgb/001.png", "bagel/test/hole/gt/001.png"),
    ]


# --- MVTec AD 2 ----------------------------------------------------------------------------------


def _relative(samples, root):
    return [(s.image.relative_to(root).as_posix(), s.label, s.defect, s.mask and s.mask.relative_to(root).as_posix())
            for s in samples]


def test_mvtec2_evaluates_on_test_public_only(tmp_path):
    """validation/good (thresholds) and test_private* (no labels) are in neither list."""
    make_mvtec2(tmp_path, categories=("vial", "can"), n_train=2, n_validation=2, n_good=1, n_bad=2, n_private=2)
    assert list_categories("mvtec2", tmp_path) == ["can", "vial"]
    split = load_split("mvtec2", tmp_path, "one-class", category="can")
    assert [s.image.relative_to(tmp_path).as_posix() for s in split.train] == [
        "can/train/good/000_regular.png", "can/train/good/001_regular.png"]
    assert _relative(split.test, tmp_path) == [
        ("can/test_public/bad/000_bad.png", 1, "bad", "can/test_public/ground_truth/bad/000_bad_mask.png"),
        ("can/test_public/bad/001_bad.png", 1, "bad", "can/test_public/ground_truth/bad/001_bad_mask.png"),
        ("can/test_public/good/000_good.png", 0, "good", None),
    ]


def test_mvtec2_and_mvtec_layouts_are_told_apart(tmp_path):
    make_mvtec(tmp_path / "ad", categories=("bottle",))
    make_mvtec2(tmp_path / "ad2", categories=("can",))
    with pytest.raises(AgpnetError, match="bottle/test_public: folder not found"):
        load_split("mvtec2", tmp_path / "ad", "multi-class")
    with pytest.raises(AgpnetError, match="can/test: folder not found"):
        load_split("mvtec", tmp_path / "ad2", "multi-class")


# --- Real-IAD ------------------------------------------------------------------------------------


def test_realiad_reads_the_split_file_at_the_default_resolution(tmp_path):
    make_realiad(tmp_path, categories=("pcb", "audiojack"), n_train=2, n_good=1, n_bad=2)
    assert list_categories("realiad", tmp_path) == ["audiojack", "pcb"]
    split = load_split("realiad", tmp_path, "one-class", category="pcb")
    images = "realiad_1024/pcb"
    assert [s.image.relative_to(tmp_path).as_posix() for s in split.train] == [
        f"{images}/OK/S0000/pcb_0000_OK_C1_20230922.jpg", f"{images}/OK/S0001/pcb_0001_OK_C1_20230922.jpg"]
    ng = f"{images}/NG/AK/S00{{}}/pcb_00{{}}_NG_AK_C2_20230922"
    assert _relative(split.test, tmp_path) == [
        (ng.format(50, 50) + ".jpg", 1, "AK", ng.format(50, 50) + "_mask.png"),
        (ng.format(51, 51) + ".jpg", 1, "AK", ng.format(51, 51) + "_mask.png"),
        (f"{images}/OK/S0002/pcb_0002_OK_C1_20230922.jpg", 0, "good", None),
    ]


def test_realiad_options_choose_the_resolution_folder_and_the_split(tmp_path):
    make_realiad(tmp_path, categories=("pcb",), n_train=3, n_good=1, n_bad=1)
    # a second protocol (as realiad_jsons_sv): fewer training images, one more test image
    lists = {"train": [{"image_path": "OK/S0000/pcb_0000_OK_C1_20230922.jpg", "anomaly_class": "OK",
                        "mask_path": None}],
             "test": [{"image_path": f"OK/S000{i}/pcb_000{i}_OK_C1_20230922.jpg", "anomaly_class": "OK"}
                      for i in (1, 2, 3)]}
    write_realiad_json(tmp_path, "realiad_jsons_sv", "pcb", lists)
    small = load_split("realiad", tmp_path, "multi-class", options={"realiad_resolution": "256"})
    assert all(s.image.is_relative_to(tmp_path / "realiad_256") for s in small.train + small.test)
    assert all(s.mask.is_relative_to(tmp_path / "realiad_256") for s in small.test if s.mask)
    sv = load_split("realiad", tmp_path, "multi-class",
                    options={"realiad_split": "realiad_jsons_sv", "dataset": "ignored: not a reader option"})
    assert (len(sv.train), len(sv.test)) == (1, 3)
    default = load_split("realiad", tmp_path, "multi-class")
    assert (len(default.train), len(default.test)) == (3, 2)
    assert default == load_split("realiad", tmp_path, "multi-class", options=RunConfig().data.reader_options())


def test_realiad_few_shot_files_are_relative_to_the_root(tmp_path):
    make_realiad(tmp_path, categories=("pcb",), n_train=4)
    split = load_split("realiad", tmp_path, "few-shot", shots=2, seed=0)
    assert all(f.startswith("realiad_1024/pcb/OK/") for f in split.few_shot_files["pcb"])


# --- BTAD ----------------------------------------------------------------------------------------


def test_btad_matches_png_and_bmp_masks_by_stem(tmp_path):
    make_btad(tmp_path, products=("03", "01", "02"), n_train=2, n_good=1, n_bad=2)
    assert list_categories("btad", tmp_path) == ["01", "02", "03"]
    split = load_split("btad", tmp_path, "multi-class")
    assert [s.image.relative_to(tmp_path).as_posix() for s in split.train if s.category == "01"] == [
        "01/train/ok/0000.bmp", "01/train/ok/0001.bmp"]
    assert {(s.label, s.defect) for s in split.test} == {(0, "good"), (1, "ko")}
    assert [(s.category, s.image.name, s.mask.name) for s in split.test if s.label] == [
        ("01", "0000.bmp", "0000.png"), ("01", "0001.bmp", "0001.png"),
        ("02", "0000.png", "0000.png"), ("02", "0001.png", "0001.png"),
        ("03", "0000.bmp", "0000.bmp"), ("03", "0001.bmp", "0001.bmp"),
    ]
    item = AnomalyDataset([s for s in split.test if s.label][:1], image_size=16)[0]
    assert item["label"] == 1 and item["mask"].any()


# --- generic folder ------------------------------------------------------------------------------


def test_folder_layout_with_nested_masks_and_mixed_formats(tmp_path):
    root = make_folder(tmp_path / "my_part", n_train=4, n_good=2, defects=("dent", "rust"), n_defect=2)
    assert list_categories("folder", root) == ["my_part"]
    split = load_split("folder", root, "one-class")
    assert split.categories == ["my_part"]
    assert [s.image.name for s in split.train] == ["img0.png", "img1.jpg", "img2.bmp", "img3.tif"]
    assert _names(split.test) == [
        ("dent", "dent0.png", 1, "dent", "dent0_mask.png"),
        ("dent", "dent1.jpg", 1, "dent", "dent1_mask.png"),
        ("good", "ok0.png", 0, "good", None),
        ("good", "ok1.jpg", 0, "good", None),
        ("rust", "rust0.jpg", 1, "rust", "rust0_mask.png"),
        ("rust", "rust1.bmp", 1, "rust", "rust1_mask.png"),
    ]
    items = [AnomalyDataset(split.train + split.test, image_size=16)[i] for i in range(len(split.train) + 6)]
    assert all(item["image"].shape == (3, 16, 16) for item in items)


def test_folder_layout_with_flat_masks_folder(tmp_path):
    root = make_folder(tmp_path / "part", mask_dir="masks", nested=False)
    split = load_split("folder", root, "one-class", category="part")
    assert [(s.image.name, s.mask.name) for s in split.test if s.label] == [
        ("dent0.png", "dent0.png"),
        ("dent1.jpg", "dent1.png"),
        ("rust0.jpg", "rust0.png"),
        ("rust1.bmp", "rust1.png"),
    ]


def test_folder_layout_without_masks_gives_image_level_samples(tmp_path):
    root = make_folder(tmp_path / "part", mask_dir=None)
    split = load_split("folder", root, "one-class")
    defective = [s for s in split.test if s.label == 1]
    assert len(defective) == 4 and all(s.mask is None for s in defective)
    item = AnomalyDataset(defective, image_size=8)[0]
    assert item["label"] == 1 and not item["mask"].any()


def test_read_folder_from_arbitrary_folders(tmp_path):
    for i in range(3):
        write_image(tmp_path / "ok_parts" / f"{i}.png", seed=i)
    write_image(tmp_path / "line2_ok" / "a.tiff", mode="L", seed=5)
    write_image(tmp_path / "rejects" / "cracked" / "r1.jpeg", seed=6)
    write_image(tmp_path / "rejects" / "burnt" / "r2.png", seed=7)
    write_mask(tmp_path / "labels" / "r1_mask.png")
    write_mask(tmp_path / "labels" / "r2.png")
    split = read_folder(
        tmp_path / "ok_parts",
        tmp_path / "line2_ok",
        [tmp_path / "rejects" / "cracked", tmp_path / "rejects" / "burnt"],
        mask_dir=tmp_path / "labels",
        category="pump",
    )
    assert split.categories == ["pump"] and len(split.train) == 3
    assert [(s.image.name, s.defect, s.mask and s.mask.name) for s in split.test] == [
        ("a.tiff", "good", None),
        ("r2.png", "burnt", "r2.png"),
        ("r1.jpeg", "cracked", "r1_mask.png"),
    ]
    by_name = read_folder(tmp_path / "ok_parts", None, {"crack": tmp_path / "rejects" / "cracked"})
    assert [(s.defect, s.category, s.mask) for s in by_name.test] == [("crack", "custom", None)]


# --- real data smoke test ------------------------------------------------------------------------

BALL_SCREW = Path(__file__).resolve().parents[2] / "shared" / "data" / "ball_screw"


def test_ball_screw_reads_with_the_mvtec_reader():
    if not BALL_SCREW.is_dir():
        pytest.skip(f"{BALL_SCREW} not present")
    categories = list_categories("mvtec", BALL_SCREW)
    assert categories
    split = load_split("mvtec", BALL_SCREW, "multi-class")
    assert split.train and all(s.label == 0 for s in split.train)
    defective = [s for s in split.test if s.label == 1]
    assert defective and all(s.mask is not None for s in defective)
    item = AnomalyDataset([defective[0]], image_size=64)[0]
    assert item["image"].shape == (3, 64, 64) and item["mask"].any()


def test_a_dataset_is_one_reader_and_one_registry_entry(tmp_path, monkeypatch):
    """The registry is the only list of datasets: a new entry is read by load_split at once."""
    from agpnet.data import readers

    make_mvtec(tmp_path, categories=("bottle",), n_train=2, n_good=1, defects=("crack",), n_defect=1)
    entry = readers.Reader(lambda root: ["bottle"], lambda root, category: readers._read_mvtec(root, category),
                           "<root>/bottle/ (test layout)")
    monkeypatch.setitem(readers.READERS, "tiny", entry)
    split = load_split("tiny", tmp_path, "one-class", category="bottle")
    assert split.categories == ["bottle"] and len(split.train) == 2 and len(split.test) == 2
    with pytest.raises(AgpnetError, match=r"expected one of .*, tiny\)"):
        load_split("nope", tmp_path, "one-class")
