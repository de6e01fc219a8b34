"""The viewer in a real browser: headless Chromium (Playwright) on a small synthetic run made by the pipeline
with the oracle teacher. Type a query, take screenshots, check the pixels and the server-side selection."""

from __future__ import annotations

import re
import socket
import time
from pathlib import Path

import numpy as np
import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--use-gl=swiftshader", "--enable-unsafe-swiftshader",
    "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
    "--disable-quic",
]
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
HIGHLIGHT_THRESHOLD = 0.9

pytestmark = pytest.mark.browser



def dismiss_notice(page) -> None:
    """Close the "software WebGL" notice if it is up. The click itself lands; on a loaded machine Playwright's
    wait for navigations after it can time out, which says nothing about the viewer, so it is not waited for."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    close = page.locator("button.mantine-Notification-closeButton")
    if close.count():
        try:
            close.first.click(timeout=5000)
        except PlaywrightTimeout:
            pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def highlight_pixels(png: bytes, colour: np.ndarray, tol: float = 40.0) -> int:
    """Pixels of a screenshot within ``tol`` (RGB distance) of ``colour``."""
    import io

    from PIL import Image

    img = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(np.float32)
    return int((np.linalg.norm(img - colour[None, None, :], axis=2) < tol).sum())


def gui_input(page, label: str):
    """The <input> in the viser GUI row labelled ``label``."""
    row = page.locator("div.mantine-Flex-root", has=page.locator("label", has_text=re.compile(f"^{label}$")))
    return row.locator("input:visible").first


def test_viewer_query_in_chromium(urban_run):
    pytest.importorskip("playwright")
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} not installed (make setup installs it)")
    from playwright.sync_api import sync_playwright

    from scene_kd.apps.viewer.app import ViewerApp
    from scene_kd.apps.viewer.colours import TURBO_HIGH, turbo
    from scene_kd.field import FeatureField

    field = FeatureField.load(urban_run)
    building = next(k for k, v in field.label_names.items() if v == "building")
    gt = field.labels == building
    red = turbo(np.array([TURBO_HIGH]))[0].astype(np.float32)  # colour of relevancy ~1
    ARTIFACTS.mkdir(exist_ok=True)

    app = ViewerApp(urban_run, port=free_port()).start(background_load=True)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.goto(app.url)
            page.get_by_text("Loaded 20,000 points").wait_for(timeout=60_000)
            dismiss_notice(page)
            page.wait_for_timeout(1500)
            before = page.screenshot(path=str(ARTIFACTS / "viewer-true-colour.png"))

            threshold = gui_input(page, "Threshold")
            threshold.fill(str(HIGHLIGHT_THRESHOLD))
            threshold.press("Enter")
            box = gui_input(page, "Query")
            box.fill("building")
            box.press("Enter")
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and not (
                app.state.query == "building" and app.state.threshold == pytest.approx(HIGHLIGHT_THRESHOLD)
                and app.wait_updates(1, timeout=0.1)
            ):
                time.sleep(0.1)
            assert app.state.query == "building", app.state.message
            assert app.state.threshold == pytest.approx(HIGHLIGHT_THRESHOLD)
            page.get_by_text("'building':").wait_for(timeout=10_000)

            # wait until the browser has drawn the new colours
            after, lit = before, 0
            for _ in range(40):
                page.wait_for_timeout(250)
                after = page.screenshot()
                lit = highlight_pixels(after, red)
                if lit > 2000:
                    break
            (ARTIFACTS / "viewer-building.png").write_bytes(after)
            was_lit = highlight_pixels(before, red)
            assert lit > 2000 and lit > 5 * was_lit + 500, (lit, was_lit)

            # the server-side selection is the building class (oracle teacher through the real pipeline)
            sel = app.selection
            iou = (sel & gt).sum() / (sel | gt).sum()
            assert iou > 0.5, iou

            # bad input in the GUI: a message, and the server keeps serving
            box.fill("")
            box.press("Enter")
            page.get_by_text("Type a query first").wait_for(timeout=10_000)
            box.fill("tree")
            box.press("Enter")
            page.get_by_text("'tree':").wait_for(timeout=10_000)
            browser.close()
    finally:
        app.stop()


@pytest.fixture(scope="module")
def splat_run(tmp_path_factory) -> Path:
    """A small Gaussian run (synthetic tabletop as splats, oracle teacher) made through the CLI."""
    from scene_kd.cli import main

    root = tmp_path_factory.mktemp("splat_run")
    scene = root / "table.ply"
    assert main(["synth", "--kind", "tabletop", "--as-splats", "--max-gaussians", "6000", "--points", "20000",
                 "--out", str(scene)]) == 0
    cfg = root / "cfg.yaml"
    cfg.write_text("render: {preset: orbit, width: 256, height: 256, levels: 1}\n"
                   "teacher: {name: oracle-labels, oracle_realism: perfect}\ndistill: {enabled: false}\n")
    assert main(["run", str(scene), "--out", str(root / "run"), "--config", str(cfg), "--json"]) == 0
    return root / "run"


def test_gaussian_run_drawn_as_splats_with_a_query(splat_run):
    pytest.importorskip("playwright")
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} not installed (make setup installs it)")
    from playwright.sync_api import sync_playwright

    from scene_kd.apps.viewer.app import ViewerApp
    from scene_kd.apps.viewer.colours import TURBO_HIGH, turbo

    red = turbo(np.array([TURBO_HIGH]))[0].astype(np.float32)
    ARTIFACTS.mkdir(exist_ok=True)
    app = ViewerApp(splat_run, port=free_port()).start(background_load=True)
    try:
        assert app.wait_loaded(120)
        assert hasattr(app.points, "rgbs"), "a Gaussian run must be drawn as a Gaussian-splat node"
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.goto(app.url)
            page.get_by_text("Loaded 6,000 points").wait_for(timeout=60_000)
            dismiss_notice(page)
            page.wait_for_timeout(2000)
            before = page.screenshot(path=str(ARTIFACTS / "viewer-splats-true-colour.png"))
            box = gui_input(page, "Query")
            box.fill("table")
            box.press("Enter")
            page.get_by_text("'table':").wait_for(timeout=30_000)
            after, lit = before, 0
            for _ in range(40):
                page.wait_for_timeout(250)
                after = page.screenshot()
                lit = highlight_pixels(after, red, tol=60)
                if lit > 2000:
                    break
            (ARTIFACTS / "viewer-splats-table.png").write_bytes(after)
            assert lit > 2000 and lit > 5 * highlight_pixels(before, red, tol=60) + 500, lit
            # the splat node carries the relevancy colours of the selected Gaussians
            sel = app.selection[app.display_index]
            rgbs = np.asarray(app.points.rgbs, np.float32)  # viser keeps uint8 colours
            assert sel.any() and np.abs(rgbs[sel] - red).sum(1).mean() < np.abs(rgbs[~sel] - red).sum(1).mean()
            browser.close()
    finally:
        app.stop()
