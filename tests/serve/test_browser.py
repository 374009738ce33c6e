"""The web page in headless Chromium (Debian's chromium driven by playwright, no browser download): ask, watch the
answer stream in, click a citation marker and check it highlights a real source span. Screenshot: out/page.png."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from ragcore.pipeline import Pipeline
from serve.app import create_app
from tests.conftest import DOCS
from tests.serve.conftest import Server

CHROMIUM = "/usr/bin/chromium"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
OUT = Path(__file__).resolve().parents[2] / "out"


@pytest.mark.skipif(not Path(CHROMIUM).exists() and not shutil.which("chromium"), reason="make test installs chromium")
def test_the_page_streams_an_answer_and_highlights_a_cited_span(config, gen):
    from playwright.sync_api import sync_playwright

    with Server(create_app(config, Pipeline.from_config(config, generator=gen))) as s, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        try:
            page = browser.new_page()
            page.goto(s.url + "/")
            page.fill("#question", "Which planet has the tallest volcano?")
            page.fill("#topk", "2")
            page.click("#go")
            page.wait_for_selector("body[data-state=done]", timeout=60_000)
            assert page.inner_text("#answer").strip() and not page.inner_text("#error")
            marker = page.locator("#answer a.cite").first
            marker.click()
            mark = page.locator("mark.active")
            assert mark.count() == 1
            source, start, end = (
                mark.get_attribute("data-source"),
                mark.get_attribute("data-start"),
                mark.get_attribute("data-end"),
            )
            assert mark.inner_text() == DOCS[source][int(start) : int(end)] and mark.inner_text()
            assert page.locator(".stage").count() >= 2
            OUT.mkdir(exist_ok=True)
            page.screenshot(path=str(OUT / "page.png"), full_page=True)
        finally:
            browser.close()
