"""`sdedrag ui` driven end to end in headless Chromium (Debian's /usr/bin/chromium; `.ci/run` installs it).
On `tiny`: the random-weights notice, upload, brush a mask, click a point pair, run, and get a result of the
input's size. On `shapes`: a new ShapesBench scene, two clicks, run, and the result beside its ground truth."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from playwright.sync_api import expect, sync_playwright

from sdedrag.settings import FAST_PRESET
from sdedrag.shapes.bench import make_drag_case
from tests.conftest import smooth_image

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
SIZE = (96, 64)  # small and not square

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def server(request, tmp_path):
    """The UI on the model ``request.param`` (default tiny) in a subprocess, as a user starts it; yields its URL
    once it answers."""
    model = getattr(request, "param", "tiny")
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False", "TQDM_DISABLE": "1"}
    log = (tmp_path / "server.log").open("w")
    command = [sys.executable, "-m", "sdedrag", "ui", "--model", model, "--device", "cpu", "--port", str(port),
               "--lora-cache", str(tmp_path / "lora")]
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tmp_path)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 180
        while True:
            if process.poll() is not None:
                pytest.fail(f"sdedrag ui exited with {process.returncode}:\n{(tmp_path / 'server.log').read_text()}")
            try:
                with urllib.request.urlopen(url, timeout=2):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"sdedrag ui did not answer in time:\n{(tmp_path / 'server.log').read_text()}")
                time.sleep(0.5)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


@pytest.fixture
def page():
    if not CHROMIUM.is_file():
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium; .ci/run does this)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser.new_page(viewport={"width": 1400, "height": 1000})
        finally:
            browser.close()


def test_drag_in_the_browser(page, server, tmp_path):
    image_path = tmp_path / "input.png"
    smooth_image(*SIZE).save(image_path)
    Image.new("RGB", (1100, 1000)).save(tmp_path / "huge.png")
    page.goto(server)
    expect(page.locator("#model-notice")).to_contain_text("tiny")
    expect(page.locator("#model-notice")).to_contain_text("weights are random")
    expect(page.locator("#new-scene")).to_be_hidden()  # scenes are for the shapes model
    expect(page.locator("#editor")).to_be_hidden()  # nothing to brush before an upload
    expect(page.locator("#editor-placeholder")).to_contain_text("No image yet")

    # open the parameter panels now; their widgets are set at the end, long after they have mounted
    # (typing into a widget in the instant after it mounts can be lost)
    page.get_by_text("Drag parameters").click()
    page.get_by_text("LoRA (fine-tuned").click()

    upload(page, tmp_path / "huge.png")  # over the default 1024x1024 pixels: a message, no traceback
    expect_message(page, "1100x1000 (1.10 megapixels), more than the limit")
    upload(page, image_path)
    status = page.locator("#points-status")
    expect(status).to_contain_text("0 pair(s)", timeout=60_000)
    expect(page.locator("#editor")).to_be_visible()
    expect(page.locator("#editor-placeholder")).to_be_hidden()
    page.locator("#run-button").click()  # nothing clicked yet
    expect_message(page, "click a source point")

    # brush a stroke across the middle of the editor's canvas; the points view then shades the rest
    view = page.locator("#points-view img")
    shown = view.get_attribute("src")
    page.get_by_role("button", name="Brush", exact=True).click()
    canvas = page.locator("#editor canvas").first.bounding_box()
    cx, cy = canvas["x"] + canvas["width"] / 2, canvas["y"] + canvas["height"] / 2
    page.mouse.move(cx - 60, cy - 20)
    page.mouse.down()
    for step in range(1, 7):
        page.mouse.move(cx - 60 + 20 * step, cy - 20 + 6 * step)
    page.mouse.up()
    wait_for_new_view(page, shown)

    # a source and its target on the points view, each click once the view has reloaded from the last
    clicks = ((0.3, 0.4, "and a source"), (0.65, 0.6, "1 pair(s)"))
    for fx, fy, expected in clicks:
        shown = view.get_attribute("src")
        view.click(position=image_position(view, fx, fy))
        expect(status).to_contain_text(expected, timeout=30_000)
        wait_for_new_view(page, shown)

    # few steps and no LoRA, for speed
    page.locator("#prompt textarea").fill("a photo")
    steps = page.locator("#steps input[type=number]")
    steps.fill("10")
    steps.blur()
    expect(page.locator("#steps input[type=range]")).to_have_value("10")
    page.locator("#lora input[type=checkbox]").uncheck()

    page.locator("#run-button").click()
    expect(page.locator("#run-status")).to_contain_text("Done", timeout=180_000)
    natural = page.wait_for_function(
        "() => { const img = document.querySelector('#result img');"
        " return img && img.complete && img.naturalWidth > 0 && [img.naturalWidth, img.naturalHeight]; }",
        timeout=30_000,
    ).json_value()
    assert tuple(natural) == SIZE
    downloads = page.locator("#downloads")
    for name in ("result.png", "trajectory.gif", "run.json", "input.png", "mask.png"):  # mask.png: the stroke
        expect(downloads.get_by_role("cell", name=name, exact=True)).to_be_visible()
    page.screenshot(path=tmp_path / "page.png", full_page=True)

    record = json.loads(download(page, downloads, "run.json").read_text())
    args = record["args"]
    assert record["command"] == "drag" and args["steps"] == 10 and args["lora"] is False
    assert len(args["source"]) == len(args["target"]) == 1  # the clicks land on the pixels clicked
    for (x, y), (fx, fy, _) in zip(args["source"] + args["target"], clicks):
        assert abs(x - fx * SIZE[0]) <= 1 and abs(y - fy * SIZE[1]) <= 1
    mask = np.asarray(Image.open(download(page, downloads, "mask.png"))) > 0
    assert mask.shape == SIZE[::-1] and mask[SIZE[1] // 2, SIZE[0] // 2] and not mask.all()  # the stroke


@pytest.mark.parametrize("server", ["shapes"], indirect=True)
def test_shapes_scene_in_the_browser(page, server, tmp_path):
    page.goto(server)
    expect(page.locator("#model-notice")).to_contain_text("shapes")
    expect(page.locator("#model-notice")).not_to_contain_text("random")
    page.locator("#new-scene").click()
    status = page.locator("#points-status")
    expect(status).to_contain_text("Scene", timeout=60_000)
    seed, index = map(int, re.search(r"Scene (\d+)-(\d+)", status.inner_text()).groups())
    case = make_drag_case(seed, index)
    expect(page.locator("#editor")).to_be_visible()

    # the shape's centre, then the marked target, each click once the view has reloaded from the last
    view = page.locator("#points-view img")
    wait_for_new_view(page, None)
    for (x, y), expected in ((case.source, "and a source"), (case.target, "1 pair(s)")):
        shown = view.get_attribute("src")
        view.click(position=image_position(view, (int(x) + 0.5) / case.resolution, (int(y) + 0.5) / case.resolution))
        expect(status).to_contain_text(expected, timeout=30_000)
        wait_for_new_view(page, shown)
    expect(page.locator("#cost")).to_contain_text("UNet calls")
    page.locator("#fast").click()
    expect(page.locator("#cost")).to_contain_text(f"of {FAST_PRESET['steps']} steps")

    page.locator("#run-button").click()
    expect(page.locator("#run-status")).to_contain_text("Done", timeout=180_000)
    natural = page.wait_for_function(
        "() => { const img = document.querySelector('#result img');"
        " return img && img.complete && img.naturalWidth > 0 && [img.naturalWidth, img.naturalHeight]; }",
        timeout=30_000,
    ).json_value()
    assert tuple(natural) == (case.resolution, case.resolution)
    gallery = page.locator("#comparison")
    for caption in ("input and drag", "SDE-Drag", "ground truth"):
        expect(gallery.get_by_text(caption, exact=True)).to_be_visible()
    measures = page.locator("#measures")
    expect(measures).to_contain_text("SDE-Drag")
    expect(measures).to_contain_text("vacated area clean")
    page.screenshot(path=tmp_path / "page.png", full_page=True)


def upload(page, path: Path) -> None:
    """Upload ``path`` through the page's upload button."""
    with page.expect_file_chooser() as chooser:
        page.locator("#upload").click()
    chooser.value.set_files(path)


def expect_message(page, text: str) -> None:
    """An error shown in the page (a toast), which is then closed."""
    expect(page.locator(".toast-body").first).to_contain_text(text, timeout=30_000)
    for close in page.locator(".toast-close").all():
        close.click()
    expect(page.locator(".toast-body")).to_have_count(0)


def wait_for_new_view(page, shown: str | None) -> None:
    """Wait until the points view shows a new, loaded image (clicks on a half-loaded one are dropped)."""
    page.wait_for_function(
        "old => { const img = document.querySelector('#points-view img');"
        " return img && img.src !== old && img.complete && img.naturalWidth > 0; }",
        arg=shown, timeout=30_000,
    )


def image_position(image, fx: float, fy: float) -> dict[str, float]:
    """Where to click an <img> (shown scaled down and centred, as gradio does) to hit the image fraction (fx, fy)."""
    box = image.bounding_box()
    width, height = image.evaluate("img => [img.naturalWidth, img.naturalHeight]")
    scale = min(box["width"] / width, box["height"] / height, 1.0)
    return {"x": (box["width"] - width * scale) / 2 + fx * width * scale,
            "y": (box["height"] - height * scale) / 2 + fy * height * scale}


def download(page, files, name: str) -> Path:
    """Download one of the listed files through its link; returns where the browser saved it."""
    with page.expect_download() as download:
        files.get_by_role("row", name=name).get_by_role("link").click()
    return Path(download.value.path())
