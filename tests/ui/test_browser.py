"""A new user in a real browser (headless Chromium through Playwright): open the page, upload a clip, generate; the
player gets the streamed audio and the timeline appears. The screenshot is kept in artifacts/ (and, with
VOXTRACE_UPDATE_SCREENSHOT=1, refreshed in docs/ for the README)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.ui.conftest import RunningApp

CHROMIUM = Path("/usr/bin/chromium")
ROOT = Path(__file__).resolve().parents[2]
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
        "--autoplay-policy=no-user-gesture-required"]  # fmt: skip

if not CHROMIUM.exists():
    reason = "no /usr/bin/chromium (Debian's chromium package; .ci/run installs it)"
    if os.environ.get("VOXTRACE_REQUIRE_BROWSER") == "1":
        raise RuntimeError(f"VOXTRACE_REQUIRE_BROWSER=1 but {reason}")
    pytest.skip(reason, allow_module_level=True)

sync_api = pytest.importorskip("playwright.sync_api")


def test_a_new_user_clones_a_voice_and_sees_the_timeline(running_app: RunningApp, clips: dict[str, Path]) -> None:
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(running_app.url + "/")
            assert "random weights" in page.locator("#vx-random-weights").inner_text().lower()
            page.locator("input[type=file]").first.set_input_files(str(clips["mono"]))
            page.get_by_label("transcript of the clip (voice clone)").fill("What I said in the clip.")
            page.get_by_role("button", name="sampling").click()  # the closed accordion of sampling settings
            page.get_by_label("max frames (80 ms each)").fill("40")
            page.get_by_label("seed (-1: pick one and show it)").fill("5")
            page.wait_for_timeout(1500)  # the upload lands before the click
            page.locator("#vx-generate").click()
            stats = page.wait_for_function("window.vxPlayerStats && window.vxPlayerStats.done", timeout=60_000)
            stats = page.evaluate("window.vxPlayerStats")
            assert stats["error"] is None
            assert stats["samples"] == 39 * 1920  # 40 draws -> 39 frames of 80 ms, all of it streamed
            assert stats["firstAudioMs"] is not None
            page.locator("#vx-timeline .js-plotly-plot").wait_for(timeout=30_000)
            assert "time to first audio" in page.locator("#vx-cards").inner_text()
            assert page.locator(".vx-replay").get_attribute("src").startswith("blob:")
            shot = ROOT / "artifacts" / "screenshot.png"
            shot.parent.mkdir(exist_ok=True)
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    if os.environ.get("VOXTRACE_UPDATE_SCREENSHOT") == "1":
        from PIL import Image

        image = Image.open(shot).convert("RGB")
        image = image.crop((0, 0, image.width, min(image.height, 1500)))
        image.resize((image.width * 2 // 3, image.height * 2 // 3)).quantize(128).save(ROOT / "docs" / "screenshot.png")
