"""What a listener gets, measured in a real browser: the app on the embedded tiny model, headless Chromium clicking
Generate N times (x-vector clone of a noise clip), and per run the player's click -> first sound, the engine's time to
first audio and the underruns the player played through. A measurement, not a test:

    .venv/bin/python scripts/first_sound.py --runs 20

Prints each run and then p50/p90 of first sound, of the engine's TTFA and of their difference (the goal of issue 12:
first sound p50 <= TTFA + 60 ms, no underrun in 20 runs). Needs /usr/bin/chromium (as the browser test does).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
from pathlib import Path

import numpy as np
import soundfile as sf
import uvicorn
from playwright.sync_api import sync_playwright

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine import EngineConfig  # noqa: E402
from ui.app import create_app  # noqa: E402
from ui.state import AppState  # noqa: E402

ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        "--autoplay-policy=no-user-gesture-required"]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--frames", type=int, default=40, help="max frames per run (80 ms each)")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp())
    clip = folder / "clip.wav"
    sf.write(clip, (np.random.default_rng(0).standard_normal(3 * 24000) * 0.1).astype("float32"), 24000)
    state = AppState.start(EngineConfig(), runs_dir=folder / "runs", data_dir=folder / "data")
    server = uvicorn.Server(uvicorn.Config(create_app(state), host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        thread.join(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    rows = []
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"http://127.0.0.1:{port}/")
            page.get_by_label("x-vector only (no transcript needed)").check()
            page.locator("input[type=file]").first.set_input_files(str(clip))
            page.wait_for_function("document.querySelector('#vx-clip-note').innerText.includes('ready')")
            page.get_by_role("button", name="sampling").click()
            page.get_by_label("max frames (80 ms each)").fill(str(args.frames))
            page.on("console", lambda message: print("browser:", message.text) if message.type == "error" else None)
            for i in range(args.runs):
                before = page.locator("#vx-player .vx-status").inner_text()
                page.evaluate("window.vxPlayerStats = null")
                page.locator("#vx-generate").click()
                page.wait_for_function("window.vxPlayerStats && window.vxPlayerStats.done", timeout=60_000)
                page.wait_for_function(  # the run's own status line (it names the run), set with its cards
                    "([before]) => { const t = document.querySelector('#vx-player .vx-status').innerText;"
                    " return t.startsWith('Run ') && t !== before; }",
                    arg=[before],
                )
                page.locator("#vx-timeline .js-plotly-plot").wait_for()  # a listener waits for the plots too
                stats = page.evaluate("window.vxPlayerStats")
                cards = page.locator("#vx-cards").inner_text().split("\n")
                ttfa = float(cards[cards.index("time to first audio (engine)") - 1].removesuffix(" ms"))
                rows.append((stats["firstSoundMs"], ttfa, stats["underruns"], stats["marginMs"]))
                print(f"run {i + 1}: first sound {stats['firstSoundMs']:.0f} ms, engine TTFA {ttfa:.0f} ms, "
                      f"lead {stats['marginMs']:.0f} ms, underruns {stats['underruns']} "
                      f"(sink: {stats['host']}, started at the click: {stats['early']})")  # fmt: skip
            browser.close()
    finally:
        server.should_exit = True
        thread.join(30)
        state.close()
    first, ttfa = np.array([r[0] for r in rows]), np.array([r[1] for r in rows])
    over = first - ttfa

    def p(a: np.ndarray) -> str:
        return f"p50 {np.percentile(a, 50):.0f} ms, p90 {np.percentile(a, 90):.0f} ms"

    print(f"{len(rows)} runs: click -> first sound {p(first)}; engine TTFA {p(ttfa)}; first sound - TTFA {p(over)}")
    print(f"underruns: {sum(r[2] for r in rows)} in {sum(r[2] > 0 for r in rows)} of {len(rows)} runs")


if __name__ == "__main__":
    main()
