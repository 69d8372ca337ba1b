"""A small Tune search in a real browser (headless Chromium through Playwright), as a user runs one: a workload typed
into the page, two candidates on the tiny model. While it runs, the findings say how many runs have finished and
the chart fills in; at the end the page shows the verdict, a row per candidate and the recommended
config, offered as a download that EngineConfig loads."""

from __future__ import annotations

import re

import yaml

from engine import EngineConfig
from tests.ui.browser import keep_screenshot, page_at, playwright
from tests.ui.conftest import RunningApp

sync_api = playwright()

# one line of flow YAML: typed into the code editor as it is, with no indentation for the editor to redo
WORKLOAD = (
    "{arrival: {pattern: closed, concurrency: 2}, text: {length: short}, max_new_tokens: 4, "
    "space: {chunking.first_chunk_frames: [1, 2]}}"
)


# Records, in the page, what the findings said at every change and how many candidates the chart drew then (the
# page's components may be drawn anew, so the whole body is watched), so the test reads the whole course of the search
# afterwards instead of racing it.
WATCH = """() => {
    window.vxSeen = [];
    new MutationObserver(() => {
        const text = document.querySelector('#vx-tune-verdict')?.innerText ?? '';
        const points = document.querySelectorAll('#vx-tune-chart .js-plotly-plot .scatterlayer .point').length;
        const last = window.vxSeen[window.vxSeen.length - 1];
        if (!last || last[0] !== text || last[1] !== points) window.vxSeen.push([text, points]);
    }).observe(document.body, {subtree: true, childList: true, characterData: true});
}"""


def test_a_small_tune_shows_progress_fills_the_chart_and_offers_the_config(running_app: RunningApp) -> None:
    with page_at(running_app.url + "/", height=1200) as page:
        page.get_by_role("tab", name="Tune").click()
        page.locator("#vx-tune-workload .cm-content").click()
        page.keyboard.press("Control+A")
        page.keyboard.insert_text(WORKLOAD)
        budget = page.locator("#vx-tune-budget").locator("textarea, input").first
        budget.fill("5m")  # ample: the search ends by itself
        page.locator("#vx-tune-max-candidates input").fill("2")
        page.evaluate(WATCH)
        page.locator("#vx-tune").click()

        verdict = page.locator("#vx-tune-verdict")
        sync_api.expect(verdict).to_contain_text("2 candidates", timeout=120_000)

        # while it ran: the findings said how far it was, and the chart filled in as candidates finished
        seen = page.evaluate("window.vxSeen")
        finished = [int(m[1]) for text, _ in seen if (m := re.search(r"runs finished (\d+)", text))]
        assert finished[0] == 0 and finished == sorted(finished) and len(set(finished)) >= 4, seen
        drawn = [n for text, n in seen if text.startswith("Searching")]
        assert drawn == sorted(drawn) and {1, 2} <= set(drawn), seen  # one point, then both, before the end
        assert "candidates measured 2 of 2+" in next(text for text, _ in reversed(seen) if "Searching" in text)

        # the end: the verdict, a row per candidate, the recommended config and the files
        assert "verifying of a 300 s budget (two left)" in verdict.inner_text()  # ended by itself, not the budget
        table = page.locator("#vx-tune-table")
        table.scroll_into_view_if_needed()  # the table draws its rows once it is in view
        for candidate in ("c00", "c01"):
            sync_api.expect(table).to_contain_text(candidate)
        files = page.locator("#vx-tune-files tr")
        names = {"".join(row.locator("td").first.inner_text().split()) for row in files.all()}
        assert names == {"recommended.yaml", "tune.html", "tune.json", "tune.csv"}, names
        href = files.filter(has_text="recommended").locator("a[href]").first.get_attribute("href")
        assert href is not None
        response = page.request.get(href if href.startswith("http") else running_app.url + href)
        assert response.ok
        config = EngineConfig.from_dict(yaml.safe_load(response.text()))  # what app.py --config takes
        assert config.chunking.first_chunk_frames in (1, 2) and config.tiny_task == "base"
        assert "model: null" in page.locator("#vx-tune-yaml").inner_text()
        keep_screenshot(page, "tune")
