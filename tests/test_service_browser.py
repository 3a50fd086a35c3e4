"""The web page in a real browser: headless Chromium (Debian's chromium and chromium-driver, driven by selenium)
picks a clip, submits it, watches the progress bar and plays the result. Skips, saying why, where Chromium is
missing; .ci/run installs it. ``M3DDM_SCREENSHOT=FILE`` also saves a screenshot taken during the run there."""
import os
import shutil
import time

import pytest

import media
from test_service_http import server

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(not (CHROMIUM and DRIVER),
                                reason="Chromium is not installed (apt-get install chromium chromium-driver)")


def test_the_page_submits_a_clip_follows_it_and_plays_the_result(engines, tmp_path):
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    clip = tmp_path / "clip.mp4"
    media.write(clip, media.scene(20, 96, 54, seed=41), fps=24)  # two windows: ten steps for the bar to move in
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                "--autoplay-policy=no-user-gesture-required", "--window-size=1100,1300"):
        options.add_argument(arg)
    with server(engines, tmp_path / "data") as client:
        browser = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=DRIVER))
        try:
            browser.get(str(client.base_url))
            browser.find_element(By.ID, "file").send_keys(str(clip))
            browser.find_element(By.ID, "steps").send_keys("5")
            browser.find_element(By.ID, "go").click()
            wait = WebDriverWait(browser, 300, poll_frequency=0.1)
            wait.until(lambda b: float(b.find_element(By.ID, "bar").get_attribute("value") or 0) > 0)
            if os.environ.get("M3DDM_SCREENSHOT"):
                browser.save_screenshot(os.environ["M3DDM_SCREENSHOT"])  # the page during a run
            wait.until(lambda b: b.find_element(By.ID, "status").text.startswith(("succeeded", "failed")))
            assert browser.find_element(By.ID, "status").text == "succeeded", browser.find_element(By.ID, "error").text
            video = wait.until(lambda b: b.find_element(By.CSS_SELECTOR, "video.result"))
            wait.until(lambda b: b.execute_script("return arguments[0].readyState >= 2 && arguments[0].videoWidth > 0",
                                                  video))
            t0 = time.monotonic()
            wait.until(lambda b: b.execute_script("return arguments[0].currentTime > 0.2", video))  # it plays
            assert time.monotonic() - t0 < 60
            assert browser.execute_script("return arguments[0].videoHeight / arguments[0].videoWidth", video) > 1.5
            assert "succeeded" in browser.find_element(By.ID, "jobs").text
        finally:
            browser.quit()
