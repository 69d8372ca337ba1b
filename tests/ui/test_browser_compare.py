"""A new user compares our engine with a remote OpenAI-compatible speech server in a real browser (headless Chromium
through Playwright): the remote is the app's own HTTP API, given by URL; the page shows the verdict, the warm lab
engines and the downloads named by side. The screenshot is kept (`keep_screenshot`)."""

from __future__ import annotations

from tests.ui.browser import keep_screenshot, page_at, playwright
from tests.ui.conftest import RunningApp

sync_api = playwright()


def test_our_engine_against_a_remote_server_by_url(running_app: RunningApp) -> None:
    port = running_app.url.rsplit(":", 1)[1]
    with page_at(running_app.url + "/") as page:
        page.get_by_role("tab", name="Compare").click()
        page.locator("#vx-compare-url-b").locator("textarea, input").first.fill(running_app.url)
        page.locator("#vx-compare-frames input").fill("8")
        page.locator("#vx-compare").click()
        verdict = page.locator("#vx-compare-verdict")
        verdict.get_by_text("for this workload").wait_for(timeout=120_000)
        assert "A · current · uni-uni" in verdict.inner_text()
        assert f"B · {running_app.url}" in verdict.inner_text()
        files = page.locator("#vx-compare-files")
        files.locator('a[download="A-uni-uni-trace.json"]').wait_for(timeout=30_000)
        names = {link.get_attribute("download") for link in files.locator("a[download]").all()}
        remote = f"B-remote-127.0.0.1-{port}"
        assert names == {f"{side}-{kind}.json" for side in ("A-uni-uni", remote) for kind in ("trace", "metrics")}
        lab = page.locator("#vx-lab-status").inner_text()
        assert "Warm lab engines" in lab and "tiny-base · talker uni · code2wav uni · cpu" in lab
        keep_screenshot(page, "compare")


def test_mp_against_ray_side_by_side_on_the_same_requests(running_app: RunningApp) -> None:
    """The two multi-process executors on the same requests: each side's timeline, overhead and figures, the lab
    engines named by executor (the `ray` one on a local Ray cluster the app starts for it)."""
    with page_at(running_app.url + "/") as page:
        page.get_by_role("tab", name="Compare").click()
        for side, name in (("a", "current · mp-mp"), ("b", "current · ray-ray")):
            dropdown = page.locator(f"#vx-compare-config-{side}")
            dropdown.locator("input").click()
            dropdown.get_by_role("option", name=name, exact=True).click()
        page.locator("#vx-compare-frames input").fill("8")
        page.locator("#vx-compare").click()
        verdict = page.locator("#vx-compare-verdict")
        verdict.get_by_text("for this workload").wait_for(timeout=240_000)
        assert "A · current · mp-mp" in verdict.inner_text() and "B · current · ray-ray" in verdict.inner_text()
        files = page.locator("#vx-compare-files")
        files.locator('a[download="B-ray-ray-trace.json"]').wait_for(timeout=30_000)
        names = {link.get_attribute("download") for link in files.locator("a[download]").all()}
        sides = ("A-mp-mp", "B-ray-ray")
        assert names == {f"{side}-{kind}.json" for side in sides for kind in ("trace", "metrics")}
        lab = page.locator("#vx-lab-status").inner_text()
        assert "talker mp · code2wav mp" in lab and "talker ray · code2wav ray" in lab
        table = page.locator("#vx-compare-metrics").inner_text()  # the executors' overhead, side by side
        assert "hand-off p50" in table and "transport cost per hand-off" in table
        keep_screenshot(page, "compare-mp-ray")
