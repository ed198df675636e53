"""Image and mask files: decoding to 8-bit RGB or a binary mask, and the size from the header.

Every reader here applies the EXIF orientation tag (phone and camera photos store the pixels
unrotated and say how to turn them), so an image, its mask and its size agree with what an
image viewer shows; OpenCV's imread does the same. The tag is read from the header only: in a
PNG it counts before the pixel data, where the PNG specification puts the eXIf chunk. Pillow
turns TIFF pixels itself (and, in newer versions, reports TIFF sizes turned): for TIFF the
pixels are left to Pillow and the size comes from the tags. Files without the tag are unchanged.
Pixels are decoded from an open file, not from the path: given a path, Pillow memory-maps an
uncompressed grayscale, palette or RGBA TIFF at its turned size, which scrambles the pixels of
one turned by 90 degrees (Pillow 13).
"""

import os
import struct

import numpy as np
from PIL import ExifTags, Image

from agpnet.errors import AgpnetError

_DECODE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)
# EXIF orientation -> the turn that shows the pixels upright (2-8; 1 = as stored)
_UPRIGHT = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
            4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270,
            7: Image.Transpose.TRANSVERSE, 8: Image.Transpose.ROTATE_90}
_TRANSPOSED = (5, 6, 7, 8)  # the orientations that swap width and height


def image_size(path: str | os.PathLike, what: str = "image") -> tuple[int, int]:
    """(width, height) as displayed (EXIF orientation applied), from the file header only."""
    try:
        with Image.open(path) as image:
            width, height = image.size
            if image.format == "TIFF":  # as stored, whatever this Pillow version reports
                width, height = image.tag_v2.get(256, width), image.tag_v2.get(257, height)
            if _orientation(image) in _TRANSPOSED:
                return height, width
            return width, height
    except _DECODE_ERRORS as err:
        reason = " ".join(str(err).split())
        raise AgpnetError(
            f"{path}: cannot read {what} (expected a PNG/JPEG/BMP/TIFF file): {reason}") from err


def load_rgb(path: str | os.PathLike, draft_size: tuple[int, int] | None = None) -> Image.Image:
    """Decode an image as 8-bit RGB (16-bit scaled to 8-bit), upright. `draft_size` lets JPEG
    decode at a reduced scale that is still at least that size (faster for large photos)."""
    try:
        with open(path, "rb") as file, Image.open(file) as image:  # an open file: see above
            orientation = _orientation(image)
            if draft_size is not None:
                image.draft(None, draft_size)
            image.load()
            return _to_rgb(_upright(image, orientation))
    except _DECODE_ERRORS as err:
        reason = " ".join(str(err).split())
        raise AgpnetError(
            f"{path}: cannot decode image (expected a readable PNG/JPEG/BMP/TIFF): {reason}") from err


def load_mask(path: str | os.PathLike, size: tuple[int, int] | None = None) -> np.ndarray:
    """Decode a mask as uint8 (H,W), upright, with 255 where the visible colour is defective.

    The visible colour is what a viewer shows: palette masks through their palette, alpha
    ignored (an opaque RGBA/LA mask is read by its colour). A pixel is defective if its
    brightest channel is > 0 (VisA marks defects with small values such as 1), except in a JPEG
    mask, where it must be > 127: lossy compression leaves faint noise around each region, so
    a JPEG mask must be drawn bright on black. `size`: its image's (width, height) as shown
    (`image_size`); a mask that decodes to another shape stops with one line naming the file.
    """
    try:
        with open(path, "rb") as file, Image.open(file) as image:  # an open file: see above
            orientation = _orientation(image)
            image.load()  # before turning: Pillow turns TIFF pixels while loading
            lossy = image.format in ("JPEG", "MPO")
            image = _upright(image, orientation)
            if image.mode in ("LA", "RGBA"):
                image = image.convert(image.mode[:-1])  # alpha dropped, colour kept
            elif image.mode not in ("1", "L", "RGB") and not image.mode.startswith(("I", "F")):
                image = image.convert("RGB")  # palette, CMYK, YCbCr: the colours shown
            values = np.asarray(image)
    except _DECODE_ERRORS as err:
        reason = " ".join(str(err).split())
        raise AgpnetError(f"{path}: cannot decode mask (expected a readable PNG/BMP/TIFF): {reason}") from err
    if values.ndim == 3:
        values = values.max(axis=2)
    if size is not None and values.shape != (size[1], size[0]):
        raise AgpnetError(f"{path}: mask decodes to {values.shape[1]}x{values.shape[0]} but its image to "
                          f"{size[0]}x{size[1]} (expected the same size)")
    return np.where(values > (127 if lossy else 0), 255, 0).astype(np.uint8)


def _orientation(image: Image.Image) -> int:
    """EXIF orientation (1-8) from an opened, not yet loaded image; 1 when absent or unreadable."""
    if image.format == "PNG" and "exif" not in image.info:
        return 1  # no eXIf before the pixel data (looking further would decode the image)
    try:
        return int(image.getexif().get(ExifTags.Base.Orientation, 1))
    except (struct.error, SyntaxError, ValueError, TypeError):
        return 1  # a damaged EXIF block: shown as stored, as image viewers do


def _upright(image: Image.Image, orientation: int) -> Image.Image:
    """The loaded image turned as `orientation` says; the same image for 1, an unknown value or
    a TIFF (Pillow has turned its pixels while loading)."""
    if image.format == "TIFF" or orientation not in _UPRIGHT:
        return image
    return image.transpose(_UPRIGHT[orientation])


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode.startswith("I"):  # 16/32-bit integer grayscale: 16-bit range to 8-bit
        values = np.asarray(image, dtype=np.float64) / 257.0
        image = Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8))
    elif image.mode == "F":  # float grayscale: [0, 1] if it fits, else [0, 255]
        values = np.asarray(image, dtype=np.float64)
        values = values * 255.0 if values.max(initial=0.0) <= 1.0 else values
        image = Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8))
    return image.convert("RGB")
