"""The admin dashboard in a real headless browser (Debian's chromium, driven by playwright)
against the gateway served over real HTTP."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, sync_playwright

from tests.api_helpers import Live, live_gateway_fixture
from tests.conftest import ADMIN_TOKEN, ARTIFACTS

pytestmark = pytest.mark.slow  # a headless chromium

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
CHARTS = [
    "deferral rate per level",
    "large-LM share",
    "cost saved vs large LM alone",
    "cache hit rate",
    "agreement with the large LM",
]


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        pytest.fail("chromium is not installed: apt-get install -y chromium (or tests/services.sh)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        yield b
        b.close()


live = live_gateway_fixture("dashboard")


@pytest.fixture(scope="module")
def gw(live: Live) -> Live:
    """A gateway that served: two inputs answered by the large LM, one cache hit."""
    with httpx.Client(base_url=live.url, timeout=120) as client:
        for text in ("a warm film", "a warm film", "a dreary film"):
            r = client.post("/generate", json={"task": "sentiment", "input": text})
            assert r.status_code == 200, r.text
    return live


def test_dashboard_renders_live_data(gw: Live, browser: Browser) -> None:
    page = browser.new_page(viewport={"width": 1280, "height": 1400})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(f"{gw.url}/admin/#token={ADMIN_TOKEN}")
    page.wait_for_selector('body[data-loaded="1"]', timeout=30_000)
    assert "#token" not in page.url  # the token does not linger in the address bar
    assert "store embedded" in page.inner_text("#status")

    section = page.locator('section.task[data-task="sentiment"]')
    assert "version 0" in section.locator("h2").inner_text()
    kpis = {
        k.locator(".k").inner_text(): k.locator(".v").inner_text()
        for k in section.locator(".kpi").all()
    }
    assert kpis["requests"] == "3"
    assert kpis["cache hit rate"] == "33.3%"
    assert kpis["large-LM share"] == "66.7%"
    assert kpis["cost saved"] == "26.0%"  # 1 - 2 x 1.1101 / 3: two walks, three requests
    assert kpis["learner lag"] == "2"
    assert "small: agreement with large" in " ".join(kpis)

    titles = section.locator(".chart h3").all_inner_texts()
    assert titles == CHARTS
    for chart in section.locator(".chart").all():
        title = chart.locator("h3").inner_text()
        paths = chart.locator("svg path.series").all()
        assert paths, f"chart {title!r} drew no series"
        for p in paths:
            assert (p.get_attribute("d") or "").startswith("M"), title
    deferral = section.locator(".chart").first.locator("path.series")
    names = [p.get_attribute("data-name") for p in deferral.all()]
    assert names == ["logistic", "encoder", "small"]
    # the chat task had no traffic: its KPIs are there, its charts are empty
    chat = page.locator('section.task[data-task="chat"]')
    assert chat.locator(".kpi").first.locator(".v").inner_text() == "0"
    assert chat.locator("svg path.series").count() == 0
    assert errors == []

    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
    page.close()


def test_dashboard_without_token_shows_the_api_error(gw: Live, browser: Browser) -> None:
    context = browser.new_context()  # a fresh profile: no stored token
    page = context.new_page()
    page.goto(f"{gw.url}/admin/")
    error = page.wait_for_selector("#main .error", timeout=30_000)
    assert error is not None
    assert "admin token required" in error.inner_text()
    assert page.inner_text("#status") == "error"
    assert page.get_attribute("body", "data-loaded") is None

    # a wrong token typed into the field: the API's answer is shown
    page.fill("#token", "not-the-token")
    page.dispatch_event("#token", "change")
    page.wait_for_function(
        "document.querySelector('#main .error')?.textContent === 'wrong admin token'"
    )
    context.close()
