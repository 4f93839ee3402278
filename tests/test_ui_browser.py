"""`sdedrag ui --model tiny` driven end to end in headless Chromium (Debian's /usr/bin/chromium; `.ci/run`
installs it): upload, brush a mask, click a point pair, run, and get a result of the input's size."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from playwright.sync_api import expect, sync_playwright

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
def server(tmp_path):
    """The UI in a subprocess, as a user starts it; yields its URL once it answers."""
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False", "TQDM_DISABLE": "1"}
    log = (tmp_path / "server.log").open("w")
    command = [sys.executable, "-m", "sdedrag", "ui", "--model", "tiny", "--device", "cpu", "--port", str(port),
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
    page.goto(server)

    with page.expect_file_chooser() as chooser:
        page.locator("#upload").click()
    chooser.value.set_files(image_path)
    status = page.locator("#points-status")
    expect(status).to_contain_text("0 pair(s)", timeout=60_000)

    page.locator("#run-button").click()  # nothing clicked yet: a message, no traceback
    expect(page.locator(".toast-body").first).to_contain_text("click a source point", timeout=30_000)
    for close in page.locator(".toast-close").all():
        close.click()

    # brush a stroke across the middle of the editor's canvas
    page.get_by_role("button", name="Brush", exact=True).click()
    canvas = page.locator("#editor canvas").first.bounding_box()
    cx, cy = canvas["x"] + canvas["width"] / 2, canvas["y"] + canvas["height"] / 2
    page.mouse.move(cx - 60, cy - 20)
    page.mouse.down()
    for step in range(1, 7):
        page.mouse.move(cx - 60 + 20 * step, cy - 20 + 6 * step)
    page.mouse.up()

    # a source and its target on the points view, each click once the view has reloaded from the last
    view = page.locator("#points-view img")
    for fx, fy, expected in ((0.35, 0.45, "and a source"), (0.6, 0.55, "1 pair(s)")):
        source = view.get_attribute("src")
        box = view.bounding_box()
        view.click(position={"x": box["width"] * fx, "y": box["height"] * fy})
        expect(status).to_contain_text(expected, timeout=30_000)
        page.wait_for_function(
            "old => { const img = document.querySelector('#points-view img');"
            " return img && img.src !== old && img.complete && img.naturalWidth > 0; }",
            arg=source, timeout=30_000,
        )

    page.locator("#prompt textarea").fill("a photo")
    page.get_by_text("Drag parameters").click()
    steps = page.locator("#steps input[type=number]")
    steps.fill("10")
    steps.press("Enter")
    page.get_by_text("LoRA (fine-tuned").click()
    page.locator("#lora input[type=checkbox]").uncheck()

    page.locator("#run-button").click()
    expect(page.locator("#run-status")).to_contain_text("Done", timeout=180_000)
    natural = page.locator("#result img").evaluate("img => [img.naturalWidth, img.naturalHeight]")
    assert tuple(natural) == SIZE
    downloads = page.locator("#downloads")
    for name in ("result.png", "trajectory.gif", "run.json", "input.png", "mask.png"):  # mask.png: the stroke
        expect(downloads.get_by_role("cell", name=name, exact=True)).to_be_visible()
    page.screenshot(path=tmp_path / "page.png", full_page=True)

    with page.expect_download() as download:
        downloads.get_by_role("row", name="run.json").get_by_role("link").click()
    record = json.loads(Path(download.value.path()).read_text())
    assert record["command"] == "drag" and record["args"]["steps"] == 10 and record["args"]["lora"] is False
    assert len(record["args"]["source"]) == len(record["args"]["target"]) == 1
