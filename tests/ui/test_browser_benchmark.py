"""A small benchmark in a real browser (headless Chromium through Playwright): the sweep's chart ticks concurrency at
whole numbers, its table is rounded (read once its rows are drawn: they come after the chart), and the run opens
again in Runs with its chart and nothing else."""

from __future__ import annotations

import re
from typing import Any

from tests.ui.browser import keep_screenshot, page_at, playwright
from tests.ui.conftest import RunningApp

sync_api = playwright()


def x_ticks(page: Any, plot: str) -> set[str]:
    """The concurrency axes' tick labels of a drawn plotly chart."""
    page.locator(f"{plot} .js-plotly-plot .xtick text").first.wait_for(timeout=60_000)
    return set(page.locator(f"{plot} .js-plotly-plot .xtick text").all_text_contents())


def test_a_small_benchmark_shows_whole_concurrency_levels_and_opens_again_in_runs(running_app: RunningApp) -> None:
    with page_at(running_app.url + "/") as page:
        page.get_by_role("tab", name="Benchmark").click()
        page.get_by_label("concurrency levels").fill("1,2")
        page.get_by_label("requests per level").fill("2")
        page.get_by_label("max frames per request").fill("6")
        page.locator("#vx-benchmark").click()
        assert x_ticks(page, "#vx-benchmark-chart") == {"1", "2"}  # no 1.2, 1.4 ...
        table = page.locator("#vx-benchmark-table")
        sync_api.expect(table).to_contain_text("uni-uni · recording on", timeout=30_000)  # its rows are drawn
        decimals = re.findall(r"\d+\.\d+", table.inner_text())
        assert decimals and all(len(n.replace(".", "").lstrip("0")) <= 3 for n in decimals)  # 3 significant digits
        run_id = running_app.state.runs.newest_first()[0].id
        assert run_id.startswith("benchmark-")
        keep_screenshot(page, "benchmark")

        page.get_by_role("tab", name="Runs").click()  # the tab's list picks the newest run: this sweep
        sync_api.expect(page.get_by_role("listbox", name="run")).to_have_value(run_id, timeout=30_000)
        page.locator("#vx-open-run").click()
        assert x_ticks(page, "#vx-run-plot-0") == {"1", "2"}  # its own chart again
        sync_api.expect(page.locator("#vx-run-plot-1")).to_be_hidden()  # no utilization of another run
        sync_api.expect(page.locator("#vx-run-plot-2")).to_be_hidden()
        keep_screenshot(page, "runs")
