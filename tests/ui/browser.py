"""What the browser tests share: Debian's chromium (Playwright downloads no browser here) and its flags, and the
screenshots they keep. Without chromium the browser tests skip, except under VOXTRACE_REQUIRE_BROWSER=1 (CI), where
its absence is an error."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

CHROMIUM = Path("/usr/bin/chromium")
ROOT = Path(__file__).resolve().parents[2]
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
        "--autoplay-policy=no-user-gesture-required"]  # fmt: skip


def playwright() -> ModuleType:
    """Playwright's sync API, for a test module to call at import: skips the module when there is no browser."""
    if not CHROMIUM.exists():
        reason = f"no {CHROMIUM} (Debian's chromium package; .ci/run installs it)"
        if os.environ.get("VOXTRACE_REQUIRE_BROWSER") == "1":
            raise RuntimeError(f"VOXTRACE_REQUIRE_BROWSER=1 but {reason}")
        pytest.skip(reason, allow_module_level=True)
    return pytest.importorskip("playwright.sync_api")


def launch(p: Any, *args: str) -> Any:
    """Headless chromium from a running `sync_playwright()`, with `args` added to the usual flags."""
    return p.chromium.launch(executable_path=str(CHROMIUM), args=[*ARGS, *args])


def keep_screenshot(page: Any, name: str) -> Path:
    """The whole page as artifacts/<name>.png; with VOXTRACE_UPDATE_SCREENSHOT=1 also as docs/<name>.png, its top
    1500 px at 2/3 size in 128 colours, for the README."""
    shot = ROOT / "artifacts" / f"{name}.png"
    shot.parent.mkdir(exist_ok=True)
    page.screenshot(path=str(shot), full_page=True)
    if os.environ.get("VOXTRACE_UPDATE_SCREENSHOT") == "1":
        from PIL import Image

        image = Image.open(shot).convert("RGB")
        image = image.crop((0, 0, image.width, min(image.height, 1500)))
        image.resize((image.width * 2 // 3, image.height * 2 // 3)).quantize(128).save(ROOT / "docs" / f"{name}.png")
    return shot


@contextmanager
def page_at(url: str, *args: str, width: int = 1400, height: int = 1000) -> Iterator[Any]:
    """A page of a fresh headless chromium (`args` added to its flags) opened at `url`; the browser closes after."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = launch(p, *args)
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            page.goto(url)
            yield page
        finally:
            browser.close()
