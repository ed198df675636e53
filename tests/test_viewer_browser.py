"""The viewer as a person uses it: JupyterLab from this Python on 127.0.0.1 (a token, a free port),
headless Chromium (Debian's, driven by Playwright), the viewer notebook run on a run folder made
here. The widgets must render, follow the menus, the threshold and a preset, show the picture
pixel for pixel and save a PNG; after a kernel restart the output must say to re-run the cell.
Skips without Chromium or Playwright."""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from fixtures_runs import REPO, chromium, require_kernel, write_maps, write_run

TIMEOUT_MS = 60_000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def lab(tmp_path):
    """(playwright.sync_api, Chromium's path, base URL, token, work folder) of a JupyterLab serving
    work/: notebooks/viewer.ipynb (the repository's, unchanged) and runs/demo/multi (record.json,
    maps.npz, images). The server and its kernels are stopped afterwards, also on failure."""
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="playwright is not installed (pip install playwright; it drives Debian's chromium)")
    browser_path = chromium()
    require_kernel()
    work = tmp_path / "work"
    (work / "notebooks").mkdir(parents=True)
    shutil.copy(REPO / "notebooks/viewer.ipynb", work / "notebooks/viewer.ipynb")
    run = work / "runs/demo/multi"
    write_run(run, categories=("bottle", "cable"), pretrained=False)
    write_maps(run, categories=("bottle", "cable"), per_category=4, size=64)
    token, port = os.urandom(16).hex(), free_port()
    state = tmp_path / "jupyter"  # config, runtime files and lab settings of this server only
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(state / "config"), "JUPYTER_RUNTIME_DIR": str(state / "runtime"),
           "JUPYTERLAB_SETTINGS_DIR": str(state / "settings"), "JUPYTERLAB_WORKSPACES_DIR": str(state / "workspaces"),
           "PYTHONPATH": os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])}
    log = (tmp_path / "lab.log").open("w")
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1",
         f"--ServerApp.port={port}", "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}",
         f"--ServerApp.root_dir={work}", "--LabApp.expose_app_in_browser=True",
         "--ServerApp.allow_root=True", "--LabApp.extension_manager=readonly",  # CI runs as root; no PyPI
         "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate", "--LabApp.news_url=None"],
        cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2):
                    break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"JupyterLab did not start:\n{(tmp_path / 'lab.log').read_text()[-3000:]}")
                time.sleep(0.3)
        yield sync_api, browser_path, base, token, work
    finally:
        try:  # the server stops its kernels, then exits
            request = urllib.request.Request(f"{base}/api/shutdown?token={token}", method="POST")
            urllib.request.urlopen(request, timeout=5).close()
            server.wait(timeout=20)
        except (OSError, subprocess.TimeoutExpired):
            server.kill()
            server.wait()
        log.close()


def test_viewer_in_jupyterlab(lab, tmp_path):
    sync_api, browser_path, base, token, work = lab
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=browser_path, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            try:
                drive_viewer(page, base, token, work)
            finally:
                page.screenshot(path=str(tmp_path / "viewer.png"), full_page=True)  # kept for a look on failure
        finally:
            browser.close()


def drive_viewer(page, base: str, token: str, work: Path):
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(f"{base}/lab/tree/notebooks/viewer.ipynb?token={token}")
    page.wait_for_function("() => window.jupyterapp?.shell.currentWidget?.sessionContext?.session?.kernel"
                           "?.connectionStatus === 'connected'")
    page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
    picture = page.locator("img.agpnet-picture")
    picture.wait_for(state="visible")
    f1 = page.locator(".agpnet-info .agpnet-f1")
    wait_for_text(f1, lambda text: text != "")
    assert "Error displaying widget" not in page.inner_text("body")
    assert page.locator(".agpnet-rerun").is_hidden()  # the re-run hint is only for a lost widget
    assert "no pretrained weights" in page.inner_text(".agpnet-viewer")  # the weights warning in the header
    runs_dir = str((work / "runs").resolve())  # the default runs_dir, found from notebooks/
    assert runs_dir in page.inner_text(".agpnet-viewer")
    # Pixel for pixel: the PNG is as wide as the element that shows it.
    sizes = picture.evaluate("img => [img.naturalWidth, img.getBoundingClientRect().width, devicePixelRatio]")
    assert sizes[0] == sizes[1] * sizes[2] == 960, sizes

    shown = picture.screenshot()
    page.locator(".agpnet-category select").select_option("cable")
    wait_for_text(page.locator(".agpnet-info"), lambda text: "cable" in text)
    shown = wait_for_change(picture, shown)
    page.locator(".agpnet-order select").select_option(label="false negatives: defective images, lowest score first")
    wait_for_text(page.locator(".agpnet-info"), lambda text: "scratch (defective)" in text)
    shown = wait_for_change(picture, shown)
    page.locator(".agpnet-image select").select_option(index=1)
    wait_for_text(page.locator(".agpnet-info"), lambda text: "rank in list2 of 2" in text.replace("\t", ""))
    shown = wait_for_change(picture, shown)

    set_threshold(page, "0.5")  # the defect square scores >= 0.6, the background < 0.2
    wait_for_text(f1, lambda text: text == "1.000")
    shown = wait_for_change(picture, shown)
    set_threshold(page, "0.1")
    wait_for_text(f1, lambda text: text not in ("", "1.000") and float(text) < 0.5)
    shown = wait_for_change(picture, shown)

    page.locator(".agpnet-preset-category").click()
    wait_for_text(page.locator(".agpnet-info"), lambda text: "test-set oracle" in text and "images of cable" in text)
    wait_for_text(f1, lambda text: text == "1.000")
    wait_for_change(picture, shown)

    page.locator(".agpnet-save-png").click()
    wait_for_text(page.locator(".agpnet-status"), lambda text: text.startswith("saved"))
    saved = Path(page.inner_text(".agpnet-status").removeprefix("saved").strip())
    assert saved.parent == work / "runs/demo/multi/viewer" and saved.suffix == ".png"
    assert saved.read_bytes().startswith(b"\x89PNG")

    # The widget state is lost (kernel restarted, page reloaded): the output says to re-run the cell.
    page.evaluate("() => window.jupyterapp.commands.execute('docmanager:save')")
    page.evaluate("() => window.jupyterapp.shell.currentWidget.sessionContext.session.kernel.restart()")
    page.reload()
    page.get_by_text("Error displaying widget: model not found").wait_for()
    hint = page.locator(".agpnet-rerun")
    assert hint.is_visible() and "re-run this cell" in hint.inner_text()


def set_threshold(page, value: str):
    """Type a value into the slider's readout, as a person does."""
    readout = page.locator(".agpnet-threshold .widget-readout")
    readout.click()
    page.keyboard.press("Control+A")
    page.keyboard.type(value)
    page.keyboard.press("Enter")


def wait_for_text(locator, ok, timeout_s: float = TIMEOUT_MS / 1000) -> str:
    deadline = time.monotonic() + timeout_s
    while True:
        text = locator.inner_text().strip()
        if ok(text):
            return text
        if time.monotonic() > deadline:
            raise AssertionError(f"unexpected text: {json.dumps(text)}")
        time.sleep(0.1)


def wait_for_change(locator, before: bytes, timeout_s: float = TIMEOUT_MS / 1000) -> bytes:
    """A screenshot of the element once it differs from `before`."""
    deadline = time.monotonic() + timeout_s
    while True:
        after = locator.screenshot()
        if after != before:
            return after
        if time.monotonic() > deadline:
            raise AssertionError("the picture did not change")
        time.sleep(0.2)
