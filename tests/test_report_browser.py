"""The report as a person sees it: headless Chromium loads the pages, which render their tables
and inline images, show something (a non-blank screenshot) and log no console error."""

import re
import subprocess

import numpy as np
import pytest
from fixtures_runs import chromium, demo_report
from PIL import Image

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--enable-logging=stderr",
    "--v=0",
]


def browse(browser: str, page, profile, *action: str) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [browser, *FLAGS, f"--user-data-dir={profile}", *action, page.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    console = [line for line in result.stderr.splitlines() if ":CONSOLE" in line]
    assert not console, f"{page.name}: console messages {console}"
    return result


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    return demo_report(tmp_path_factory)


@pytest.mark.parametrize("page, images", [("index.html", 0), ("aggregate.html", 0), ("ablations.html", 1)])
def test_page_renders_tables_and_inline_images(report, tmp_path, page, images):
    browser = chromium()
    _, out, _ = report
    dom = browse(browser, out / page, tmp_path / "profile", "--dump-dom").stdout
    assert "<table" in dom
    assert len(re.findall(r'<img [^>]*src="data:image/png;base64,', dom)) >= images
    assert "<script>alert" not in dom


def screenshot(browser, page, tmp_path) -> np.ndarray:
    shot = tmp_path / f"{page.stem}.png"
    browse(
        browser,
        page,
        tmp_path / "profile",
        f"--screenshot={shot}",
        "--window-size=1200,1600",
        "--hide-scrollbars",
    )
    pixels = np.asarray(Image.open(shot).convert("RGB"), dtype=float)
    assert pixels.shape[:2] == (1600, 1200)
    return pixels


def test_screenshots_show_the_banner_and_the_plots(report, tmp_path):
    browser = chromium()
    _, out, index = report
    pixels = screenshot(browser, index, tmp_path)
    red = (pixels[..., 0] > 150) & (pixels[..., 1] < 80) & (pixels[..., 2] < 80)
    assert pixels.std() > 10 and red.mean() > 0.005  # text on white, and the red weights banner
    pixels = screenshot(browser, out / "ablations.html", tmp_path)
    blue = (
        (abs(pixels[..., 0] - 31) < 40) & (abs(pixels[..., 1] - 119) < 40) & (abs(pixels[..., 2] - 180) < 40)
    )
    assert blue.sum() > 50  # the points and error bars of the ablation plot (matplotlib's C0) are drawn
