"""Synthetic demo dataset: determinism, MVTec-AD layout, masks that cover exactly the defect."""

import dataclasses
from collections import Counter

import numpy as np
import pytest
from PIL import Image

import agpnet
from agpnet.cli import main
from agpnet.data import AnomalyDataset, list_categories, load_split
from agpnet.data.synth import (
    CATEGORIES,
    MVTEC_AD_SCALE,
    TEST_INDEX_OFFSET,
    plan_dataset,
    render,
    write_image,
    write_synthetic_dataset,
)
from agpnet.errors import AgpnetError

SMALL = dict(image_size=64, n_train=3, n_test=4)


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory):
    return write_synthetic_dataset(tmp_path_factory.mktemp("synth") / "demo", seed=0, **SMALL)


def _files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_identical_bytes(small_dataset, tmp_path):
    again = write_synthetic_dataset(tmp_path / "again", seed=0, **SMALL)
    reference = _files(small_dataset)
    assert reference == _files(again)
    other = write_synthetic_dataset(tmp_path / "other", seed=1, **SMALL)
    differing = [
        name for name, data in _files(other).items() if name.endswith(".png") and data != reference[name]
    ]
    assert len(differing) >= 3 * 7  # every image of every category changes with the seed


def test_categories_and_defect_kinds():
    assert len(CATEGORIES) >= 3 and {"fabric", "wood", "washer"} <= set(CATEGORIES)
    assert all(len(defects) >= 2 for defects in CATEGORIES.values())
    assert len({d for defects in CATEGORIES.values() for d in defects}) >= 4


def test_readable_by_the_mvtec_reader_and_dataset(small_dataset):
    assert list_categories("mvtec", small_dataset) == sorted(CATEGORIES)
    split = load_split("mvtec", small_dataset, "multi-class")
    for category, defects in CATEGORIES.items():
        train = [s for s in split.train if s.category == category]
        test = [s for s in split.test if s.category == category]
        assert len(train) == 3 and len(test) == 4
        assert sorted(s.defect for s in test if s.label == 1) == sorted(defects[:2])
    items = AnomalyDataset(split.test, image_size=64)
    for i, sample in enumerate(split.test):
        item = items[i]
        assert item["image"].shape == (3, 64, 64)
        assert bool(item["mask"].any()) == (sample.label == 1)
        if sample.label:
            assert np.isin(np.asarray(Image.open(sample.mask)), [0, 255]).all()


def test_written_files_match_render(small_dataset):
    n_good = SMALL["n_test"] - SMALL["n_test"] // 2
    for category, defects in CATEGORIES.items():
        image, mask = render(category, defects[1], 0, TEST_INDEX_OFFSET + n_good + 1, 64)
        written = np.asarray(Image.open(small_dataset / category / "test" / defects[1] / "000.png"))
        written_mask = np.asarray(
            Image.open(small_dataset / category / "ground_truth" / defects[1] / "000_mask.png")
        )
        assert np.array_equal(written, image) and np.array_equal(written_mask > 0, mask)
        good, _ = render(category, "good", 0, 2, 64)
        assert np.array_equal(
            np.asarray(Image.open(small_dataset / category / "train" / "good" / "002.png")), good
        )


@pytest.mark.parametrize("category, defect", [(c, d) for c, ds in CATEGORIES.items() for d in ds])
def test_defect_changes_pixels_inside_its_mask_only(category, defect):
    for index in range(3):
        image, mask = render(category, defect, 7, index, 96)
        clean, empty = render(category, "good", 7, index, 96)
        changed = (image != clean).any(axis=2)
        assert not empty.any()
        assert not changed[~mask].any()
        assert changed[mask].mean() > 0.9
        assert 0 < mask.mean() < 0.15  # visible, but not a full-image change


def test_good_images_form_a_distribution():
    images = np.stack([render("washer", "good", 0, i, 64)[0] for i in range(4)]).astype(np.float32)
    for category in ("fabric", "wood"):
        images = np.concatenate([images, np.stack([render(category, "good", 0, i, 64)[0] for i in range(4)])])
    for group in images.reshape(3, 4, 64, 64, 3):
        pairwise = [np.abs(group[i] - group[j]).mean() for i in range(4) for j in range(i + 1, 4)]
        assert min(pairwise) > 2.0  # no near-copies
        assert np.ptp(group.mean(axis=(1, 2, 3))) > 1.0  # lighting varies


def test_readme_and_replacing_an_earlier_dataset(small_dataset, tmp_path):
    readme = (small_dataset / "README.md").read_text()
    assert "synthetic" in readme.lower() and "seed=0" in readme and agpnet.__version__ in readme
    assert all(
        f"`{name}`" in readme for name in list(CATEGORIES) + ["scratch", "hole", "stain", "crack", "missing"]
    )
    out = write_synthetic_dataset(tmp_path / "d", seed=0, image_size=32, n_train=1, n_test=2)
    (out / "fabric" / "stale.png").write_bytes(b"old")
    write_synthetic_dataset(out, seed=1, image_size=32, n_train=1, n_test=2)
    assert not (out / "fabric" / "stale.png").exists() and "seed=1" in (out / "README.md").read_text()
    assert not list(tmp_path.glob(".d.*"))  # no temporary folder left behind


def test_refuses_a_foreign_folder_and_bad_arguments(tmp_path):
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "holiday.jpg").write_bytes(b"keep me")
    with pytest.raises(AgpnetError, match="photos: folder is not empty"):
        write_synthetic_dataset(tmp_path / "photos", **SMALL)
    assert (tmp_path / "photos" / "holiday.jpg").read_bytes() == b"keep me"
    with pytest.raises(AgpnetError, match="n_test=1"):
        write_synthetic_dataset(tmp_path / "x", image_size=64, n_train=3, n_test=1)


def _counts(jobs):
    """{category: (training, good test, defective test)} of a plan."""
    counts = Counter((job.image.split("/")[0], job.image.split("/")[1], job.mask is not None) for job in jobs)
    return {c: (counts[c, "train", False], counts[c, "test", False], counts[c, "test", True]) for c, *_ in counts}


def test_mvtec_scale_plan_has_mvtec_ad_counts_and_image_sizes():
    jobs, readme = plan_dataset(seed=0, scale="mvtec")  # the plan only: nothing is rendered
    assert len(MVTEC_AD_SCALE) == 15 and len(jobs) == 3629 + 1725
    assert sum(job.mask is not None for job in jobs) == 1725 - 467
    assert _counts(jobs) == {c: (train, good, bad) for c, (_, train, good, bad, _, _) in MVTEC_AD_SCALE.items()}
    assert _counts(jobs)["bottle"] == (209, 20, 63)
    sides = {job.image.split("/")[0]: job.size for job in jobs}
    assert sides["bottle"] == 900 and sides["metal_nut"] == 700 and max(sides.values()) == 1024
    assert {job.image.split("/")[0] for job in jobs if job.gray} == {"grid", "screw", "zipper"}
    assert len({job.image for job in jobs} | {job.mask for job in jobs if job.mask}) == len(jobs) + 1258
    streams = {job.image.split("/")[0]: job.stream for job in jobs}
    assert len(set(streams.values())) == 15 and min(streams.values()) >= len(CATEGORIES)  # not the demo's
    assert all(job.defect in CATEGORIES[job.kind] for job in jobs if job.mask)
    assert "| bottle | washer | 209 | 20 | 63 | 900 | 3 |" in readme


def test_mvtec_scale_fraction_writes_a_readable_layout(tmp_path):
    jobs, _ = plan_dataset(seed=0, scale="mvtec", fraction=0.01)
    counts = _counts(jobs)
    assert counts["hazelnut"] == (4, 1, 1) and counts["toothbrush"] == (1, 1, 1)  # rounded, at least one
    for job in jobs:  # the same files at 32 px instead of 700-1024 px, to stay fast
        write_image(tmp_path, dataclasses.replace(job, size=32))
    split = load_split("mvtec", tmp_path, "multi-class")
    assert split.categories == sorted(MVTEC_AD_SCALE)
    assert len(split.train) == sum(c[0] for c in counts.values()) and len(split.test) == len(jobs) - len(split.train)
    assert Image.open(tmp_path / "grid" / "train" / "good" / "000.png").mode == "L"
    assert Image.open(tmp_path / "bottle" / "train" / "good" / "000.png").mode == "RGB"


def test_mvtec_scale_gray_image_changes_inside_its_mask_only(tmp_path):
    jobs, _ = plan_dataset(seed=0, scale="mvtec", fraction=0.01)
    defective = dataclasses.replace(next(job for job in jobs if job.gray and job.mask), size=96)
    clean = dataclasses.replace(defective, defect="good", image="clean.png", mask=None)
    write_image(tmp_path, defective)
    write_image(tmp_path, clean)
    image = np.asarray(Image.open(tmp_path / defective.image))
    mask = np.asarray(Image.open(tmp_path / defective.mask)) > 0
    changed = image != np.asarray(Image.open(tmp_path / "clean.png"))
    assert image.shape == (96, 96) and mask.any()
    assert not changed[~mask].any() and changed[mask].mean() > 0.5


def test_a_pool_of_processes_writes_the_same_bytes(tmp_path):
    one = write_synthetic_dataset(tmp_path / "one", seed=0, image_size=32, n_train=1, n_test=2, workers=1)
    two = write_synthetic_dataset(tmp_path / "two", seed=0, image_size=32, n_train=1, n_test=2, workers=2)
    assert _files(one) == _files(two)


@pytest.mark.parametrize("arguments, message", [
    (dict(scale="mvtec", image_size=64), "image_size given with scale 'mvtec'"),
    (dict(scale="mvtec", fraction=0.0), "fraction=0.0"),
    (dict(fraction=0.5), "fraction=0.5 with scale 'demo'"),
    (dict(scale="imagenet"), "scale 'imagenet'"),
    (dict(workers=0), "workers=0"),
])
def test_scale_arguments_are_checked_before_writing(tmp_path, arguments, message):
    with pytest.raises(AgpnetError, match=message):
        write_synthetic_dataset(tmp_path / "x", **arguments)
    assert not (tmp_path / "x").exists()


def test_synth_command_refuses_demo_sizes_with_the_mvtec_scale(tmp_path, capsys):
    assert main(["synth", "--out", str(tmp_path / "s"), "--scale", "mvtec", "--n-train", "3"]) == 2
    assert "n_train given with scale 'mvtec'" in capsys.readouterr().err
