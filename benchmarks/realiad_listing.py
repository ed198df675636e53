"""How long reading Real-IAD's split takes: a generated tree of Real-IAD's size with tiny images.

    python benchmarks/realiad_listing.py --root /tmp/realiad_bench     # generate (once), then time

Writes <root>/realiad_1024/<30 categories>/{OK,NG/AK}/S<nnnn>/*.jpg (16x16 JPEGs, one encoded
image copied to every path), *_mask.png beside the NG images and realiad_jsons/realiad_jsons/
<category>.json: 151,050 images (Real-IAD's count), of which 51,330 defective with a mask. Per
category 1,216 training and 2,108 + 1,711 test images; how the images divide between train and
test does not change the time, only their number does. Then times `load_split("realiad", ...,
"multi-class")` three ways: as is (JSON, a stat per file, every image and mask header opened), without
the header check, and the header check alone. Run it twice to see the warm file cache (the
second run reads no new data). The last line printed is one JSON object.
"""

import argparse
import io
import json
import time
from pathlib import Path

import numpy as np
from PIL import Image

from agpnet.data import load_split, readers

CATEGORIES = 30
TRAIN, TEST_GOOD, TEST_BAD = 1216, 2108, 1711  # per category: 30 x 5,035 = 151,050 images


def encoded(suffix: str, mode: str) -> bytes:
    pixels = np.random.default_rng(0).integers(0, 256, (16, 16, 3) if mode == "RGB" else (16, 16), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG" if suffix == ".jpg" else "PNG")
    return buffer.getvalue()


def generate(root: Path) -> None:
    jpeg, png = encoded(".jpg", "RGB"), encoded(".png", "L")
    for c in range(CATEGORIES):
        category = f"category{c:02d}"
        cat_dir = root / "realiad_1024" / category
        lists = {"train": [], "test": []}
        for i in range(TRAIN + TEST_GOOD + TEST_BAD):
            bad = i >= TRAIN + TEST_GOOD
            stem = f"{'NG/AK' if bad else 'OK'}/S{i // 5:04d}/{category}_{i // 5:04d}_{'NG' if bad else 'OK'}_C{i % 5 + 1}"
            image, mask = f"{stem}.jpg", f"{stem}_mask.png" if bad else None
            (cat_dir / image).parent.mkdir(parents=True, exist_ok=True)
            (cat_dir / image).write_bytes(jpeg)
            if mask:
                (cat_dir / mask).write_bytes(png)
            lists["train" if i < TRAIN else "test"].append(
                {"category": category, "anomaly_class": "AK" if bad else "OK", "image_path": image, "mask_path": mask})
        split_file = root / "realiad_jsons" / "realiad_jsons" / f"{category}.json"
        split_file.parent.mkdir(parents=True, exist_ok=True)
        split_file.write_text(json.dumps(lists))


def timed(call) -> tuple[float, object]:
    start = time.perf_counter()
    result = call()
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True, help="folder for the generated tree (reused when present)")
    args = parser.parse_args()
    root = Path(args.root)
    generate_s = 0.0
    if not (root / "realiad_jsons").is_dir():
        generate_s, _ = timed(lambda: generate(root))
    full_s, split = timed(lambda: load_split("realiad", root, "multi-class"))
    check = readers._check_images
    readers._check_images = lambda samples: None
    try:
        unchecked_s, _ = timed(lambda: load_split("realiad", root, "multi-class"))
    finally:
        readers._check_images = check
    headers_s, _ = timed(lambda: check(split.train + split.test))
    n_masks = sum(s.mask is not None for s in split.test)
    print(f"{len(split.train) + len(split.test)} images ({n_masks} with masks): load_split {full_s:.1f} s, "
          f"without the header check {unchecked_s:.1f} s, the header check alone {headers_s:.1f} s")
    print(json.dumps({"images": len(split.train) + len(split.test), "masks": n_masks, "generate_s": round(generate_s, 1),
                      "load_split_s": round(full_s, 2), "without_header_check_s": round(unchecked_s, 2),
                      "header_check_s": round(headers_s, 2)}))


if __name__ == "__main__":
    main()
