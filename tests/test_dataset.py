"""AnomalyDataset and image files: shapes, dtypes, normalisation, colour conversion, masks,
EXIF orientation, cache."""

import numpy as np
import pytest
import torch
from fixtures_data import write_image, write_mask
from PIL import ExifTags, Image
from torch.utils.data import DataLoader

from agpnet.data import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    AnomalyDataset,
    Sample,
    denormalize,
    image_size,
    load_mask,
    load_rgb,
    read_folder,
)
from agpnet.errors import AgpnetError


def _solid(path, colour, size=(40, 24), mode="RGB"):
    width, height = size
    pixels = np.empty((height, width, len(colour)), np.uint8)
    pixels[:] = colour
    Image.fromarray(pixels if mode != "L" else pixels[..., 0]).save(path)
    return path


def _expected(colour_rgb):
    return [(c / 255 - m) / s for c, m, s in zip(colour_rgb, IMAGENET_MEAN, IMAGENET_STD)]


def test_item_shapes_dtypes_and_normalisation(tmp_path):
    image = _solid(tmp_path / "a.png", (200, 100, 30))
    item = AnomalyDataset([Sample(image, "bottle", 0, "good", None)], image_size=16)[0]
    assert set(item) == {"image", "mask", "label", "category", "defect", "path", "index"}
    assert item["image"].shape == (3, 16, 16) and item["image"].dtype == torch.float32
    assert item["mask"].shape == (16, 16) and item["mask"].dtype == torch.bool and not item["mask"].any()
    assert (item["label"], item["category"], item["defect"], item["path"], item["index"]) == (
        0,
        "bottle",
        "good",
        str(image),
        0,
    )
    channel_means = item["image"].mean(dim=(1, 2))
    assert torch.allclose(channel_means, torch.tensor(_expected((200, 100, 30))), atol=1e-5)


def test_custom_mean_std(tmp_path):
    image = _solid(tmp_path / "a.png", (255, 0, 51))
    item = AnomalyDataset(
        [Sample(image, "c", 0, "good", None)], image_size=8, mean=(0.5,) * 3, std=(0.5,) * 3
    )[0]
    assert torch.allclose(item["image"][:, 0, 0], torch.tensor([1.0, -1.0, -0.6]), atol=1e-5)


@pytest.mark.parametrize(
    "mode, colour, rgb",
    [("L", (90,), (90, 90, 90)), ("RGBA", (10, 20, 30, 128), (10, 20, 30))],
)
def test_grayscale_and_rgba_become_rgb(tmp_path, mode, colour, rgb):
    image = _solid(tmp_path / "a.png", colour, mode=mode)
    item = AnomalyDataset([Sample(image, "c", 0, "good", None)], image_size=8)[0]
    assert torch.allclose(item["image"][:, 3, 3], torch.tensor(_expected(rgb)), atol=1e-5)


def test_16_bit_grayscale_is_scaled_to_8_bit(tmp_path):
    pixels = np.full((8, 8), 32896, np.uint16)  # 128 * 257
    pixels[:, 4:] = 65535
    Image.fromarray(pixels).save(tmp_path / "deep.png")
    rgb = np.asarray(load_rgb(tmp_path / "deep.png"))
    assert rgb.shape == (8, 8, 3) and rgb[0, 0].tolist() == [128] * 3 and rgb[0, 7].tolist() == [255] * 3


@pytest.mark.parametrize("suffix", [".jpg", ".bmp", ".tif", ".tiff"])
def test_other_formats(tmp_path, suffix):
    image = write_image(tmp_path / f"a{suffix}", size=(20, 30), mode="L")
    item = AnomalyDataset([Sample(image, "c", 0, "good", None)], image_size=12)[0]
    assert item["image"].shape == (3, 12, 12)
    rgb = denormalize(item["image"])
    assert np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2])


def test_mask_is_resized_with_nearest_and_binarised(tmp_path):
    image = write_image(tmp_path / "a.png", size=(32, 32))
    mask_pixels = np.zeros((32, 32), np.uint8)
    mask_pixels[8:16, 16:32] = 1  # any value > 0 is defect
    mask_pixels[24:32, 0:8] = 200
    Image.fromarray(mask_pixels).save(tmp_path / "a_mask.png")
    item = AnomalyDataset([Sample(image, "c", 1, "crack", tmp_path / "a_mask.png")], image_size=8)[0]
    expected = torch.zeros(8, 8, dtype=torch.bool)
    expected[2:4, 4:8] = True
    expected[6:8, 0:2] = True
    assert torch.equal(item["mask"], expected)
    assert item["label"] == 1 and item["defect"] == "crack"


def test_rgb_mask_and_non_square_image(tmp_path):
    image = write_image(tmp_path / "a.png", size=(64, 32))
    mask = np.zeros((32, 64, 3), np.uint8)
    mask[:, 32:, 2] = 255  # only the blue channel is set
    Image.fromarray(mask).save(tmp_path / "m.png")
    item = AnomalyDataset([Sample(image, "c", 1, "x", tmp_path / "m.png")], image_size=16)[0]
    assert item["image"].shape == (3, 16, 16)
    assert item["mask"][:, 8:].all() and not item["mask"][:, :8].any()


def _box_mask():
    """64x64 bool mask: a 24x24 defect square."""
    box = np.zeros((64, 64), bool)
    box[16:40, 16:40] = True
    return box


def _palette_white_first(box):
    palette = Image.fromarray(np.where(box, 0, 1).astype(np.uint8), "P")
    palette.putpalette([255, 255, 255, 0, 0, 0])  # index 0 white (the defect), index 1 black
    return palette


@pytest.mark.parametrize("kind", ["RGBA", "LA", "palette"])
def test_masks_are_read_by_their_visible_colour(tmp_path, kind):
    """Opaque RGBA/LA masks (paint programs, labelling tools) and palette masks whose white is
    index 0 (Pillow's quantize) mark what a viewer shows white, not the alpha or the index."""
    box = _box_mask()
    grey, opaque = box.astype(np.uint8) * 255, np.full((64, 64), 255, np.uint8)
    image = {"RGBA": lambda: Image.fromarray(np.dstack([grey, grey, grey, opaque]), "RGBA"),
             "LA": lambda: Image.fromarray(np.dstack([grey, opaque]), "LA"),
             "palette": lambda: _palette_white_first(box)}[kind]()
    image.save(tmp_path / "m.png")
    assert np.array_equal(load_mask(tmp_path / "m.png") > 0, box)


@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_jpeg_mask_compression_noise_is_not_defect(tmp_path, mode):
    """A JPEG-saved 0/255 mask has faint ringing around each region; only bright pixels count."""
    yy, xx = np.mgrid[:64, :64]
    disc = (yy - 25) ** 2 + (xx - 33) ** 2 < 12 ** 2  # not aligned to JPEG's 8x8 blocks
    grey = disc.astype(np.uint8) * 255
    Image.fromarray(grey if mode == "L" else np.dstack([grey] * 3)).save(tmp_path / "m.jpg", quality=75)
    assert np.array_equal(load_mask(tmp_path / "m.jpg") > 0, disc)


def test_grayscale_tiff_image_and_mask_with_exif_orientation_are_upright(tmp_path):
    """Pillow memory-maps an uncompressed grayscale TIFF opened by path at its turned size; the
    pixels must still come out turned, not scrambled."""
    stored = np.zeros((20, 40), np.uint8)  # 40 wide, 20 high, the top-left quarter white
    stored[:10, :20] = 255
    upright = np.zeros((40, 20), bool)  # as shown: the white quarter top right
    upright[:20, 10:] = True
    mask = _rotated_photo(tmp_path / "mask.tif", stored)
    image = _rotated_photo(tmp_path / "photo.tif", stored)
    assert image_size(mask) == (20, 40)
    assert np.array_equal(load_mask(mask) > 0, upright)
    assert np.array_equal(np.asarray(load_rgb(image))[..., 0] > 127, upright)


def test_mask_that_decodes_to_another_size_than_its_image_stops(tmp_path):
    image = write_image(tmp_path / "a.png", size=(32, 32))
    mask = write_mask(tmp_path / "a_mask.png", size=(32, 30))
    with pytest.raises(AgpnetError, match=r"a_mask.png: mask decodes to 32x30 but its image to 32x32"):
        AnomalyDataset([Sample(image, "c", 1, "x", mask)], image_size=8)[0]


def test_cache_skips_decoding_after_first_read(tmp_path):
    image = write_image(tmp_path / "a.png")
    mask = write_mask(tmp_path / "a_mask.png")
    sample = Sample(image, "c", 1, "x", mask)
    cached, plain = (
        AnomalyDataset([sample], image_size=16, cache=True),
        AnomalyDataset([sample], image_size=16),
    )
    first, reference = cached[0], plain[0]
    image.unlink()
    mask.unlink()
    second = cached[0]
    assert torch.equal(first["image"], second["image"]) and torch.equal(first["mask"], second["mask"])
    assert torch.equal(first["image"], reference["image"]) and torch.equal(first["mask"], reference["mask"])
    with pytest.raises(AgpnetError, match="a.png"):
        plain[0]


def test_denormalize_inverts_normalisation(tmp_path):
    image = write_image(tmp_path / "a.png", size=(16, 16))
    item = AnomalyDataset([Sample(image, "c", 0, "good", None)], image_size=16)[0]
    restored = denormalize(item["image"])
    assert restored.dtype == np.uint8 and restored.shape == (16, 16, 3)
    assert np.array_equal(restored, np.asarray(Image.open(image)))


def test_dataloader_batches(tmp_path):
    samples = [Sample(write_image(tmp_path / f"{i}.png", seed=i), "c", 0, "good", None) for i in range(3)]
    batch = next(iter(DataLoader(AnomalyDataset(samples, image_size=8), batch_size=3)))
    assert batch["image"].shape == (3, 3, 8, 8) and batch["mask"].shape == (3, 8, 8)
    assert batch["label"].tolist() == [0, 0, 0] and batch["index"].tolist() == [0, 1, 2]
    assert batch["category"] == ["c"] * 3


def _rotated_photo(path, pixels):
    """Save `pixels` with EXIF orientation 6: viewers show them turned 90 degrees clockwise."""
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6
    Image.fromarray(pixels).save(path, exif=exif)
    return path


def test_exif_orientation_turns_images_masks_and_sizes_upright(tmp_path):
    stored = np.zeros((20, 40), np.uint8)  # 40 wide, 20 high, the top-left quarter white
    stored[:10, :20] = 255
    upright = np.zeros((40, 20), np.uint8)  # as shown: 20 wide, 40 high, the white quarter top right
    upright[:20, 10:] = 255
    for suffix in (".png", ".jpg", ".tif"):  # Pillow turns TIFF pixels itself: no second turn
        photo = _rotated_photo(tmp_path / f"photo{suffix}", np.stack([stored] * 3, axis=-1))
        assert image_size(photo) == (20, 40)
        assert ((np.asarray(load_rgb(photo))[..., 1] > 127) == (upright > 0)).all()
    assert (load_mask(_rotated_photo(tmp_path / "rotated_mask.png", stored)) == upright).all()

    # A mask drawn on the photo as shown (no EXIF) matches it: the readers accept the pair and
    # the dataset's mask covers the white quarter.
    for name in ("good", "spot", "masks"):
        (tmp_path / name).mkdir()
    _rotated_photo(tmp_path / "good" / "normal.png", np.zeros((20, 40, 3), np.uint8))
    _rotated_photo(tmp_path / "spot" / "photo.png", np.stack([stored] * 3, axis=-1))
    Image.fromarray(upright).save(tmp_path / "masks" / "photo_mask.png")
    split = read_folder(tmp_path / "good", None, [tmp_path / "spot"], mask_dir=tmp_path / "masks")
    item = AnomalyDataset(split.test, image_size=8)[0]
    white = item["image"][1] > 0
    assert item["mask"].any() and (item["mask"] == white).all()


def test_jpeg_full_decode_by_default_draft_mode_only_with_fast_jpeg(tmp_path):
    """Published numbers use the full JPEG decode; Pillow's reduced-scale draft decode is opt-in."""
    rng = np.random.default_rng(0)
    path = tmp_path / "photo.jpg"
    Image.fromarray(rng.integers(0, 256, (512, 640, 3), dtype=np.uint8)).save(path, quality=90)
    sample = Sample(image=path, category="c", label=0, defect="good", mask=None)
    expected = np.asarray(Image.open(path).convert("RGB").resize((64, 64), Image.BILINEAR)).transpose(2, 0, 1)
    full = AnomalyDataset([sample], image_size=64, mean=(0, 0, 0), std=(1 / 255,) * 3)[0]["image"]
    np.testing.assert_array_equal(full.numpy().round().astype(np.uint8), expected)
    fast = AnomalyDataset([sample], image_size=64, mean=(0, 0, 0), std=(1 / 255,) * 3, fast_jpeg=True)[0]["image"]
    assert fast.shape == full.shape and not torch.equal(fast, full)
