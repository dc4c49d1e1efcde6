"""The try-it page at / in real headless Chromium (Debian's chromium and chromium-driver, driven by
selenium; nothing downloads a browser), against the real service on the built-in demo model."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import httpx
import pytest

from tests.servers import ROOT, Server

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
if not (CHROMIUM and DRIVER):
    if os.environ.get("CI"):
        raise RuntimeError("CI needs chromium and chromium-driver (scripts/system-deps.sh installs them)")
    pytest.skip(
        "needs chromium and chromium-driver (apt-get install chromium chromium-driver)", allow_module_level=True
    )

from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

SAMPLE = ROOT / "model" / "demo" / "sample.mp4"
QUESTION = "What colour is the square, and what do you hear?"


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    srv = Server(
        {"AVCHAT_MODEL": "demo", "AVCHAT_ENGINE": "transformers"}, tmp_path_factory.mktemp("logs") / "page.log"
    )
    yield srv.wait_ready()
    srv.stop()


@pytest.fixture
def browser(tmp_path):
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-quic",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--window-size=1280,1000",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # the console: CSP violations show there
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def _wait(driver, condition, timeout=90):
    return WebDriverWait(driver, timeout, poll_frequency=0.2).until(lambda d: condition(d))


def _ask(driver, question: str) -> None:
    box = driver.find_element(By.ID, "question")
    box.clear()
    box.send_keys(question)
    driver.find_element(By.CSS_SELECTOR, "button[type=submit]").click()


def _answers(driver) -> list:
    return driver.find_elements(By.CSS_SELECTOR, ".chat .answers")


def _metric(url: str, name: str) -> float:
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in httpx.get(url + "/metrics").text.splitlines()
        if line.startswith(name + " ")
    )


def _screenshot(driver, name: str, tmp_path: Path) -> Path:
    path = tmp_path / name
    driver.save_screenshot(str(path))
    target = os.environ.get("AVCHAT_SCREENSHOT_DIR")  # `AVCHAT_SCREENSHOT_DIR=docs make test` refreshes docs/
    if target:
        shutil.copy(path, Path(target) / name)
    return path


def _not_blank(path: Path) -> None:
    from PIL import Image, ImageStat

    image = Image.open(path).convert("RGB")
    stat = ImageStat.Stat(image)
    assert image.size[0] > 300 and max(stat.stddev) > 20, (image.size, stat.stddev)
    assert len(image.getcolors(1 << 20) or range(1 << 20)) > 50  # text, a video frame, boxes: many colours


def test_upload_ask_stream_and_follow_up_in_chromium(demo, browser, tmp_path):
    browser.get(demo.url + "/")
    _wait(browser, lambda d: "model demo" in d.find_element(By.ID, "model").text)
    assert browser.find_element(By.ID, "key-box").get_attribute("hidden") is not None  # no keys: no key field
    browser.find_element(By.ID, "file").send_keys(str(SAMPLE))
    _wait(browser, lambda d: d.find_element(By.ID, "preview").is_displayed())
    _ask(browser, QUESTION)
    _wait(browser, lambda d: "tokens" in d.find_element(By.CSS_SELECTOR, ".answer .meta").text)
    answer = browser.find_element(By.CSS_SELECTOR, ".answer .text").text
    meta = browser.find_element(By.CSS_SELECTOR, ".answer .meta").text
    assert "red" in answer and "a high tone" in answer
    assert "audio 64 · video 829" in meta and "20 frames" in meta and "heard 2.0 s" in meta
    _not_blank(_screenshot(browser, "page.png", tmp_path))

    decodes = _metric(demo.url, "avchat_decode_seconds_count")
    _ask(browser, "What colour is the square?")  # the follow-up reuses the video_id: no second upload
    _wait(browser, lambda d: len(_answers(d)) == 2 and "tokens" in _answers(d)[1].text)
    assert "red" in _answers(browser)[1].find_element(By.CSS_SELECTOR, ".text").text
    assert "audio 64 · video 829" in _answers(browser)[1].find_element(By.CSS_SELECTOR, ".meta").text
    assert _metric(demo.url, "avchat_decode_seconds_count") == decodes
    assert [li.text for li in browser.find_elements(By.CSS_SELECTOR, ".chat .you")] == [
        QUESTION,
        "What colour is the square?",
    ]


def test_the_page_says_the_demo_is_a_toy_and_analyses_a_window(demo, browser):
    browser.get(demo.url + "/")
    _wait(browser, lambda d: d.find_element(By.ID, "toy").is_displayed())
    assert (
        "toy" in browser.find_element(By.ID, "toy").text and "AVCHAT_MODEL" in browser.find_element(By.ID, "toy").text
    )
    browser.find_element(By.ID, "file").send_keys(str(SAMPLE))
    browser.find_element(By.ID, "start").send_keys("0.5")
    browser.find_element(By.ID, "end").send_keys("1.5")
    _ask(browser, QUESTION)
    _wait(browser, lambda d: "tokens" in d.find_element(By.CSS_SELECTOR, ".answer .meta").text)
    meta = browser.find_element(By.CSS_SELECTOR, ".answer .meta").text
    assert "1.0 s analysed" in meta and "heard 1.0 s" in meta, meta
    console = [entry["message"] for entry in browser.get_log("browser")]
    assert not [m for m in console if "Content Security Policy" in m or "Refused to" in m], console


def test_the_comparison_answers_both_ways_side_by_side(demo, browser, tmp_path):
    browser.get(demo.url + "/")
    browser.find_element(By.ID, "file").send_keys(str(SAMPLE))
    browser.find_element(By.ID, "compare").click()
    _ask(browser, "What do you hear?")
    _wait(
        browser,
        lambda d: (
            all("tokens" in m.text for m in d.find_elements(By.CSS_SELECTOR, ".answer .meta"))
            and len(d.find_elements(By.CSS_SELECTOR, ".answer .meta")) == 2
        ),
    )
    boxes = browser.find_elements(By.CSS_SELECTOR, ".answer")
    titles = [b.find_element(By.TAG_NAME, "h3").text.lower() for b in boxes]
    assert titles == ["audio + video", "video only"]
    assert "a high tone" in boxes[0].text and "audio 64" in boxes[0].text
    assert "audio 0 · video 829" in boxes[1].text
    _not_blank(_screenshot(browser, "page-compare.png", tmp_path))


def test_errors_are_readable_messages(demo, browser, tmp_path):
    bad = tmp_path / "notes.mp4"
    bad.write_text("these are my notes, not a video\n" * 20)
    browser.get(demo.url + "/")
    browser.find_element(By.ID, "file").send_keys(str(bad))
    _ask(browser, "What is this?")
    error = _wait(browser, lambda d: d.find_element(By.ID, "error").text or None)
    assert error.startswith("That file cannot be used: not a ")  # a readable sentence, not a status code


def test_the_page_fits_a_phone(demo, browser, tmp_path):
    browser.set_window_size(390, 844)
    browser.get(demo.url + "/")
    browser.find_element(By.ID, "file").send_keys(str(SAMPLE))
    _ask(browser, QUESTION)
    _wait(browser, lambda d: "tokens" in d.find_element(By.CSS_SELECTOR, ".answer .meta").text)
    width = browser.execute_script("return [document.documentElement.scrollWidth, window.innerWidth]")
    assert width[0] <= width[1], width  # nothing wider than the screen
    _not_blank(_screenshot(browser, "page-phone.png", tmp_path))


def test_a_service_with_keys_asks_for_one(browser, tmp_path):
    srv = Server(
        {"AVCHAT_MODEL": "demo", "AVCHAT_ENGINE": "transformers", "AVCHAT_API_KEYS": "page-key"}, tmp_path / "keys.log"
    )
    try:
        srv.wait_ready()
        browser.get(srv.url + "/")
        _wait(browser, lambda d: d.find_element(By.ID, "key-box").is_displayed())
        browser.find_element(By.ID, "api-key").send_keys("page-key")
        browser.find_element(By.ID, "save-key").click()
        _wait(browser, lambda d: "model demo" in d.find_element(By.ID, "model").text)
        browser.find_element(By.ID, "file").send_keys(str(SAMPLE))
        _ask(browser, QUESTION)
        _wait(browser, lambda d: "tokens" in d.find_element(By.CSS_SELECTOR, ".answer .meta").text)
        assert "red" in browser.find_element(By.CSS_SELECTOR, ".answer .text").text
    finally:
        srv.stop()
