"""Swagger UI in a real browser: headless Chromium opens `/`, sees the rerank routes, runs
"Try it out" on `/rerank` with the seed's example and reads the scores; a screenshot is saved
under test-output/. Needs Debian's chromium and chromium-driver (`.ci/run` installs them)."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.servers import serving

ROOT = Path(__file__).resolve().parent.parent.parent
OUTPUT = ROOT / "test-output"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")

pytestmark = pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None,
    reason="needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)",
)


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    from selenium import webdriver

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1400,2200"):  # fmt: skip
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=str(CHROMEDRIVER)))
    try:
        yield driver
    finally:
        driver.quit()


def test_swagger_ui_try_it_out_on_rerank(browser: object, tiny_reranker_dir: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.remote.webdriver import WebDriver
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    assert isinstance(browser, WebDriver)
    with serving(["--model-path", str(tiny_reranker_dir)]) as url:
        browser.get(url + "/")
        wait = WebDriverWait(browser, 60)
        wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, ".opblock")))
        assert browser.current_url.endswith("/docs")
        paths = {e.text for e in browser.find_elements(By.CSS_SELECTOR, ".opblock-summary-path")}
        assert {"/rerank", "/v1/rerank", "/v2/rerank", "/info", "/health"} <= {p.replace("\u200b", "") for p in paths}

        summary = next(
            e
            for e in browser.find_elements(By.CSS_SELECTOR, ".opblock-post .opblock-summary")
            if e.find_element(By.CSS_SELECTOR, ".opblock-summary-path").text.replace("\u200b", "") == "/rerank"
        )
        summary.click()
        block = summary.find_element(By.XPATH, "./ancestor::div[contains(@class, 'opblock')][1]")
        buttons = block.find_elements(By.CSS_SELECTOR, "button.try-out__btn")
        if buttons and "Try it out" in buttons[0].text:
            buttons[0].click()
        body = wait.until(lambda _: block.find_element(By.CSS_SELECTOR, "textarea.body-param__text"))
        assert "什么是函数计算" in (body.get_attribute("value") or "")
        block.find_element(By.CSS_SELECTOR, "button.execute").click()
        answer = wait.until(
            lambda _: block.find_element(By.CSS_SELECTOR, ".live-responses-table .response-col_description pre")
        )
        deadline = time.monotonic() + 30
        while '"data"' not in answer.text and time.monotonic() < deadline:
            time.sleep(0.2)
        scores = json.loads(answer.text)
        OUTPUT.mkdir(exist_ok=True)
        browser.execute_script("arguments[0].scrollIntoView();", block)
        browser.save_screenshot(str(OUTPUT / "swagger-try-it-out.png"))
    assert scores["object"] == "list"
    assert len(scores["data"]) == 3 and all(0 <= s <= 1 for s in scores["data"])
    assert (OUTPUT / "swagger-try-it-out.png").stat().st_size > 10_000
