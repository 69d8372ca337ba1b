"""A new user in a real browser (headless Chromium through Playwright): open the page, upload a clip, generate; the
player gets the streamed audio and the timeline appears. The screenshots are kept in artifacts/ (and, with
VOXTRACE_UPDATE_SCREENSHOT=1, refreshed in docs/ for the README)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.ui.browser import keep_screenshot, launch, page_at, playwright
from tests.ui.conftest import RunningApp

sync_api = playwright()


def generate(page: Any) -> dict[str, Any]:
    """Click Generate and wait for the player's figures and the run's cards: what the player saw."""
    page.evaluate("window.vxPlayerStats = null")
    page.locator("#vx-generate").click()
    page.wait_for_function("window.vxPlayerStats && window.vxPlayerStats.done", timeout=60_000)
    stats = page.evaluate("window.vxPlayerStats")
    if stats["error"] is None:
        page.wait_for_function("document.querySelector('#vx-cards').innerText.includes('first sound')", timeout=60_000)
    return stats


def test_a_new_user_clones_a_voice_and_sees_the_timeline(running_app: RunningApp, clips: dict[str, Path]) -> None:
    with page_at(running_app.url + "/") as page:
        assert "random weights" in page.locator("#vx-random-weights").inner_text().lower()
        assert "Upload or record a clip" in page.locator("#vx-guide").inner_text()  # the three steps
        assert "at most 30 s and 20 MB" in page.locator("#vx-clip-note").inner_text()  # limits beside the upload
        assert "voice_clone, custom_voice, voice_design" in page.locator("#vx-engine").inner_text()
        page.get_by_role("button", name="sampling").click()  # the closed accordion of sampling settings
        page.get_by_label("max frames (80 ms each)").fill("40")
        page.get_by_label("seed (-1: pick one and show it)").fill("5")
        # Generate without a clip fails: one message, in the player's status line, and nothing else changes
        failed = generate(page)
        assert "ref_audio" in failed["error"] and "Error" not in failed["error"]
        assert page.locator(".vx-player").get_attribute("data-state") == "error"
        page.locator("input[type=file]").first.set_input_files(str(clips["mono"]))
        page.wait_for_function("document.querySelector('#vx-clip-note').innerText.includes('ready')")
        page.get_by_label("transcript of the clip (voice clone)").fill("What I said in the clip.")
        stats = generate(page)
        assert stats["error"] is None and page.locator(".vx-player").get_attribute("data-state") == "done"
        assert stats["samples"] == 39 * 1920  # 40 draws -> 39 frames of 80 ms, all of it streamed
        cards = page.locator("#vx-cards").inner_text()
        assert "time to first audio (engine)" in cards and "first sound (in your browser" in cards
        assert f"{stats['chunks']}\nchunks (as the engine made them)" in cards  # the player counts the same
        assert f"{stats['firstSoundMs']:.0f} ms" in cards  # what the player measured reached the run
        page.locator("#vx-timeline .js-plotly-plot").wait_for(timeout=30_000)
        assert page.locator(".vx-replay").get_attribute("src").startswith("blob:")
        assert stats["host"] == "worklet"  # 127.0.0.1 is a secure context: the audio thread plays the stream
        again = generate(page)  # nothing changed since: the click itself started the run
        assert again["early"] and again["error"] is None and again["samples"] == stats["samples"]
        keep_screenshot(page, "synthesize")


def test_a_page_over_plain_http_from_another_host_plays_and_a_second_click_replaces_the_first(
    running_app: RunningApp,
) -> None:
    """No AudioWorklet outside a secure context (http from a name that is not localhost): the fallback sink plays."""
    elsewhere = running_app.url.replace("127.0.0.1", "voxtrace.test") + "/"
    with page_at(elsewhere, "--host-resolver-rules=MAP voxtrace.test 127.0.0.1") as page:
        assert page.evaluate("window.isSecureContext") is False
        page.get_by_label("custom_voice").check()
        page.wait_for_function("document.querySelector('#vx-guide').innerText.includes('Pick a speaker')")
        page.get_by_role("button", name="sampling").click()
        page.get_by_label("max frames (80 ms each)").fill("12")
        stats = generate(page)
        assert stats["error"] is None and stats["host"] == "script" and stats["samples"] == 11 * 1920
        assert page.locator("#vx-cards").inner_text().count("first sound (in your browser") == 1
        page.get_by_label("max frames (80 ms each)").fill("2000")  # 160 s of audio: seconds to make, so ...
        page.evaluate("window.vxPlayerStats = null")
        page.locator("#vx-generate").click()
        page.wait_for_function("window.vxPlayerStats && window.vxPlayerStats.chunks > 0")
        page.evaluate("window.vxFirst = window.vxPlayerStats")
        page.get_by_label("max frames (80 ms each)").fill("12")
        second = generate(page)  # ... it is still streaming when a second click takes the player over
        assert second["error"] is None and second["samples"] == 11 * 1920
        assert page.evaluate("window.vxFirst.done") is False  # the first was stopped, not played out
        page.wait_for_function(
            "([ms]) => document.querySelector('#vx-cards').innerText.includes(ms)",
            arg=[f"{second['firstSoundMs']:.0f} ms"],
        )  # the page shows the second run, whatever order the two events ended in
        assert page.locator(".vx-player").get_attribute("data-state") == "done"


def test_two_pages_keep_their_own_task_and_a_phone_gets_the_player_under_generate(running_app: RunningApp) -> None:
    with sync_api.sync_playwright() as p:
        browser = launch(p)
        try:
            a = browser.new_page(viewport={"width": 1400, "height": 1000})
            a.goto(running_app.url + "/")
            a.get_by_label("custom_voice").check()
            a.wait_for_function("document.querySelector('#vx-guide').innerText.includes('Pick a speaker')")
            b = browser.new_page(viewport={"width": 390, "height": 844})  # a phone, opened after A switched
            b.goto(running_app.url + "/")
            assert "Upload or record a clip" in b.locator("#vx-guide").inner_text()  # B keeps the default task
            b.get_by_label("voice_design").check()
            b.wait_for_function("document.querySelector('#vx-guide').innerText.includes('Describe the voice')")
            b.get_by_label("instruct (custom voice, voice design)").fill("A calm, low voice.")
            for page in (a, b):
                page.get_by_role("button", name="sampling").click()
                page.get_by_label("max frames (80 ms each)").fill("12")
            a_stats, b_stats = generate(a), generate(b)
            assert a_stats["error"] is None and b_stats["error"] is None
            assert "serving engine (tiny-custom_voice" in a.locator("#vx-player").inner_text()
            assert "serving engine (tiny-voice_design" in b.locator("#vx-player").inner_text()
            generate_box = b.locator("#vx-generate").bounding_box()
            player_box, cards_box = b.locator("#vx-player").bounding_box(), b.locator("#vx-cards").bounding_box()
            assert generate_box["y"] < player_box["y"] < cards_box["y"]  # the player right under Generate
            keep_screenshot(b, "phone")
        finally:
            browser.close()


def test_saved_voices_are_listed_after_a_reload_and_shown_when_picked(
    running_app: RunningApp, clips: dict[str, Path]
) -> None:
    from ui.voices import SavedVoice

    running_app.state.voices.save(SavedVoice("kept voice", clips["mono"].read_bytes(), None, True))
    try:
        with page_at(running_app.url + "/") as page:
            for visit in ("first", "after a reload"):
                if visit == "after a reload":
                    page.reload()
                page.get_by_label("saved voice").click()
                page.get_by_role("option", name="kept voice").wait_for(timeout=30_000)
            page.get_by_role("option", name="kept voice").click()
            picked = page.locator("#vx-saved-voice")
            picked.get_by_text("kept voice: x-vector only").wait_for(timeout=30_000)
            assert picked.locator("audio").get_attribute("src").startswith("data:audio/")
    finally:
        running_app.state.voices.delete("kept voice")
