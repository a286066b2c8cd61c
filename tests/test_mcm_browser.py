"""
The interactive Mandelbrot page in a real headless Chromium, driven by
Playwright against ``mcm serve --port 0``: the set appears, a click zooms
in 5x about the point clicked (each axis by its own span), the hover text
follows, Zoom Out and Back work, and the permalink reproduces the view.
Skipped only where Chromium or Playwright is missing.
"""
import io
import os
import re
import shutil
import signal
import subprocess
import sys
import urllib.parse

import numpy as np
import pytest

sync_api = pytest.importorskip(
    "playwright.sync_api",
    reason="the Python package playwright is not installed "
    "(pip install playwright)")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHROMIUM = next(filter(None, map(shutil.which, (
    "chromium", "chromium-browser", "google-chrome"))), None)

pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="no Chromium found on PATH (install the Debian "
    "packages chromium and chromium-driver, as .ci/run does)")

#: Milliseconds a page may take to show an image.
TIMEOUT = 15000
LOADED = """() => {
    const img = document.getElementById("mandelbrot");
    return img.complete && img.naturalWidth > 0 &&
        img.dataset.loaded === img.getAttribute("src");
}"""


@pytest.fixture
def url():
    """The URL of a fresh ``mcm serve`` on a free port; stopped after."""
    env = dict(os.environ, PYTHONPATH=ROOT)
    p = subprocess.Popen(
        [sys.executable, "-m", "mcmandelbrot", "serve", "--port", "0",
         "-w", "2", "-N", "200"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
    try:
        line = p.stdout.readline()
        assert line.startswith("mcm serving http://127.0.0.1:"), \
            line + p.stderr.read()
        yield line.split()[-1]
        p.send_signal(signal.SIGTERM)
        _, err = p.communicate(timeout=30)
        assert p.returncode == 0, err
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate()


@pytest.fixture
def browser():
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True)
        try:
            yield chromium
        finally:
            chromium.close()


def newPage(browser, errors):
    """A 1280x720 page that reports script errors into ``errors``."""
    page = browser.new_page(viewport={"width": 1280, "height": 720})
    page.set_default_timeout(TIMEOUT)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: m.type == "error" and errors.append(m.text))
    return page


def inputs(page):
    """The form's (cr, ci, crpm) as numbers."""
    return tuple(float(page.input_value("#" + name))
                 for name in ("cr", "ci", "crpm"))


def imageQuery(page):
    """The query of the image shown, as a dict of floats (no client)."""
    src = page.get_attribute("#mandelbrot", "src")
    query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(src).query))
    query.pop("client")
    return {k: float(v) for k, v in query.items()}


def waitForImage(page, previous=None):
    """Wait until an image other than ``previous`` (a src) has loaded;
    its src."""
    page.wait_for_function(LOADED)
    if previous is not None:
        page.wait_for_function(
            "(old) => document.getElementById('mandelbrot').dataset.loaded"
            " !== old", arg=previous)
        page.wait_for_function(LOADED)
    return page.get_attribute("#mandelbrot", "src")


def shownPixels(page):
    """The pixels of the image element as the browser shows them."""
    from PIL import Image
    data = page.locator("#mandelbrot").screenshot()
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def test_zoomPage(url, browser, tmp_path):
    errors = []
    page = newPage(browser, errors)
    page.goto(url)
    src = waitForImage(page)
    assert page.title() == \
        "Interactive Mandelbrot Set: Driven by Twisted and AsynQueue"
    assert inputs(page) == (-0.63, 0.0, 1.4)
    box = page.locator("#mandelbrot").bounding_box()
    size = page.evaluate("""() => {
        const img = document.getElementById("mandelbrot");
        return [img.naturalWidth, img.naturalHeight,
                img.clientWidth, img.clientHeight];
    }""")
    W, H = size[2], size[3]
    # The window is wider than tall: so is the image, drawn pixel for pixel.
    assert size[:2] == [W, H] and H < W
    query = imageQuery(page)
    assert query["N"] == W
    assert query["cipm"] == pytest.approx(1.4 * H / W)
    shown = shownPixels(page)
    assert len(np.unique(shown.reshape(-1, 3), axis=0)) > 50
    page.screenshot(path=str(tmp_path / "start.png"))

    # Hovering tells the scale and the point under the pointer.
    border = (box["width"] - W) / 2
    x, y = 0.25, 0.4
    page.mouse.move(box["x"] + border + x * W, box["y"] + border + y * H)
    hover = page.text_content("#hover")
    match = re.fullmatch(
        r"Scale: 0\.7:1  Center: \(([-+][\d.]+), ([-+][\d.]+)\)", hover)
    assert match, hover
    cr, ci = -0.63 + 1.4 * (2 * x - 1), 1.4 * H / W * (1 - 2 * y)
    assert float(match.group(1)) == pytest.approx(cr, abs=2e-3)
    assert float(match.group(2)) == pytest.approx(ci, abs=2e-3)

    # A click zooms in 5x about that point; the imaginary axis uses its
    # own span (0.9 used crpm for both, which is wrong unless square).
    page.mouse.click(box["x"] + border + x * W, box["y"] + border + y * H)
    zoomed = waitForImage(page, src)
    newCr, newCi, crpm = inputs(page)
    assert newCr == pytest.approx(cr, abs=2e-3)
    assert newCi == pytest.approx(ci, abs=2e-3)
    assert crpm == pytest.approx(0.28)
    assert imageQuery(page)["crpm"] == pytest.approx(0.28)
    assert page.text_content("#hover").startswith("Scale: 3.6:1  Center: (")
    assert not np.array_equal(shownPixels(page), shown)
    page.screenshot(path=str(tmp_path / "zoomed.png"))
    permalink = page.get_attribute("#permalink", "href")
    hd = urllib.parse.parse_qs(urllib.parse.urlsplit(
        page.get_attribute("#hd", "href")).query)
    assert hd["N"] == ["2048"]
    assert float(hd["crpm"][0]) == pytest.approx(0.28)

    # Zoom Out goes back out about the same centre; Back returns.
    page.click("#zoomout")
    waitForImage(page, zoomed)
    # (The centre is shown to fewer places, as befits the wider view.)
    assert inputs(page) == pytest.approx((newCr, newCi, 1.4), abs=1e-4)
    page.go_back()
    page.wait_for_function(
        "() => document.getElementById('crpm').value === '0.28'")
    assert imageQuery(page)["crpm"] == pytest.approx(0.28)
    waitForImage(page)
    assert inputs(page) == (newCr, newCi, crpm)

    # The permalink, opened anew, shows the zoomed view again.
    other = newPage(browser, errors)
    other.goto(permalink)
    waitForImage(other)
    assert inputs(other) == (newCr, newCi, crpm)
    assert imageQuery(other) == imageQuery(page)
    other.screenshot(path=str(tmp_path / "permalink.png"))
    assert errors == []


def test_typedViewQuickClicksAndClamping(url, browser):
    errors = []
    page = newPage(browser, errors)
    page.goto(url)
    src = waitForImage(page)
    # Two quick clicks: the second request supersedes the first, and the
    # image of the 25x view arrives.
    box = page.locator("#mandelbrot").bounding_box()
    centre = (box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.mouse.click(*centre)
    page.mouse.click(*centre)
    src = waitForImage(page, src)
    assert imageQuery(page)["crpm"] == pytest.approx(1.4 / 25)
    page.fill("#cr", "-0.74364")
    page.fill("#ci", "0.13183")
    page.fill("#crpm", "0.0005")
    page.click("#reload")
    waitForImage(page, src)
    assert imageQuery(page)["cr"] == -0.74364
    assert inputs(page) == (-0.74364, 0.13183, 0.0005)
    # Out-of-range values are clamped, as 0.9 did.
    page.fill("#crpm", "50")
    page.press("#crpm", "Enter")
    page.wait_for_function(
        "() => document.getElementById('crpm').value === '3'")
    # The server cuts a superseded image's response; if the browser was
    # still reading it, it says so. Nothing else may go wrong.
    assert [e for e in errors if "ERR_INCOMPLETE_CHUNKED_ENCODING" not in e
            ] == []
