"""The web page in a real browser: headless Chromium (Debian's chromium and chromium-driver, driven by selenium)
against a real `python -m runtime.serve` with a token. It picks a clip, submits it, sees the live preview change
while the job runs (the event stream and the preview read with fetch, the token in a header), plays the result
beside its source; a file dropped on the page, named like HTML, waits in line, shows as text and is cancelled,
and so is a running job from the jobs table. Skips, saying why, where Chromium is missing; .ci/run installs it.
``M3DDM_SCREENSHOTS=DIR`` also saves the page during a run and once done there (page-running.png,
page-done.png: docs/ holds them)."""
import base64
import os
import shutil
import time
from pathlib import Path

import httpx
import pytest

import media
from test_service_http import submit, token_server

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(not (CHROMIUM and DRIVER),
                                reason="Chromium is not installed (apt-get install chromium chromium-driver)")
TOKEN = "br0wser"
FINISHED = ("succeeded", "failed", "cancelled")
HOSTILE = "<script>window.__xss=1</script><img src=x onerror=window.__xss=2>.mp4"  # what a name must not do


@pytest.fixture(scope="module")
def page(engines, tmp_path_factory):
    """(an httpx client with the token, a Chromium showing the page with the token entered)."""
    webdriver = pytest.importorskip("selenium.webdriver")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                "--autoplay-policy=no-user-gesture-required", "--window-size=1100,1300"):
        options.add_argument(arg)
    with token_server(engines, tmp_path_factory.mktemp("page") / "data", TOKEN) as client:
        browser = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=DRIVER))
        try:
            browser.get(str(client.base_url))
            browser.find_element("id", "token").send_keys(TOKEN)
            yield client, browser
        finally:
            browser.quit()


def text(browser, element_id: str) -> str:
    return browser.execute_script("return document.getElementById(arguments[0]).textContent", element_id)


def wait(browser, condition, timeout=120):
    from selenium.webdriver.support.ui import WebDriverWait
    return WebDriverWait(browser, timeout, poll_frequency=0.05).until(condition)


def screenshot(browser, name: str) -> None:
    if os.environ.get("M3DDM_SCREENSHOTS"):
        browser.save_screenshot(str(Path(os.environ["M3DDM_SCREENSHOTS"]) / name))


def test_the_page_shows_the_preview_change_and_plays_the_result_beside_its_source(page, tmp_path):
    client, browser = page
    clip = tmp_path / "clip.mp4"
    media.write(clip, media.scene(20, 96, 54, seed=41), fps=24)  # two windows: enough steps for a few previews
    browser.find_element("id", "file").send_keys(str(clip))
    browser.find_element("id", "steps").send_keys("24")
    browser.find_element("id", "go").click()
    seen = []  # the preview's sources while the job runs: each a new JPEG fetched for a new preview
    t0 = time.monotonic()
    while (status := text(browser, "status")) not in FINISHED or browser.find_element("id", "current").get_attribute(
            "hidden"):
        src = browser.execute_script("const i = document.getElementById('preview'); return i.hidden ? '' : i.src")
        if status == "running" and src and src not in seen:
            seen.append(src)
            if len(seen) == 2:
                screenshot(browser, "page-running.png")
        assert time.monotonic() - t0 < 180, status
        time.sleep(0.05)
    assert status == "succeeded", text(browser, "error")
    assert len(seen) >= 3, seen  # shown, then changed at least twice before the job ended
    assert all(s.startswith("blob:") for s in seen) and TOKEN not in str(seen)
    video = wait(browser, lambda b: b.find_element("css selector", "video.result"))
    source = wait(browser, lambda b: b.find_element("css selector", "video.source"))
    for v in (video, source):
        wait(browser, lambda b, v=v: b.execute_script("return arguments[0].readyState >= 2 && "
                                                      "arguments[0].videoWidth > 0", v), 60)
    played = browser.execute_script("return arguments[0].currentTime", video)
    wait(browser, lambda b: b.execute_script("return arguments[0].currentTime", video) > played + 0.2, 60)  # it plays
    assert browser.execute_script("return arguments[0].videoHeight / arguments[0].videoWidth", video) > 1.5
    assert browser.execute_script("return arguments[0].videoWidth / arguments[0].videoHeight", source) > 1.5
    row = browser.find_element("css selector", "#jobs tr").text
    assert "clip.mp4" in row and "succeeded" in row and " s" in row and "kB" in row, row
    assert text(browser, "job-name") == "clip.mp4"
    browser.execute_script("document.getElementById('current').scrollIntoView()")
    screenshot(browser, "page-done.png")


def test_a_dropped_file_named_like_html_waits_in_line_as_text_and_is_cancelled(page, tmp_path):
    client, browser = page
    clip = tmp_path / "short.mp4"
    media.write(clip, media.scene(8, 96, 54, seed=5), fps=24)
    blocker = submit(client, clip, steps=400).json()["id"]  # runs while the dropped one waits
    t0 = time.monotonic()
    while client.get(f"/v1/jobs/{blocker}").json()["status"] != "running":
        assert time.monotonic() - t0 < 60
        time.sleep(0.05)
    browser.execute_script("""
        const bytes = Uint8Array.from(atob(arguments[0]), (c) => c.charCodeAt(0));
        const data = new DataTransfer();
        data.items.add(new File([bytes], arguments[1], { type: "video/mp4" }));
        document.getElementById("drop").dispatchEvent(
            new DragEvent("drop", { dataTransfer: data, bubbles: true, cancelable: true }));
    """, base64.b64encode(clip.read_bytes()).decode(), HOSTILE)
    assert text(browser, "chosen").startswith(HOSTILE)
    browser.find_element("id", "go").click()
    wait(browser, lambda b: text(b, "detail") == "next in line" and text(b, "job-name") == HOSTILE)
    assert text(browser, "status") == "queued"
    wait(browser, lambda b: HOSTILE in b.find_element("css selector", "#jobs tr").text)
    cells = browser.find_elements("css selector", "#jobs tr:first-child td")
    assert cells[0].text == HOSTILE and "next in line" in cells[4].text
    assert browser.execute_script("return window.__xss === undefined && document.scripts.length === 1 && "
                                  "document.querySelectorAll('img').length === 1")  # the name stayed text
    dropped = browser.execute_script("return document.getElementById('job-id').textContent")
    browser.find_element("id", "cancel").click()
    wait(browser, lambda b: text(b, "status") == "cancelled")
    assert client.get(f"/v1/jobs/{dropped}").status_code == 404
    # the running one, from its row in the jobs table
    wait(browser, lambda b: len(b.find_elements("css selector", "#jobs tr")) == 2)
    row = browser.find_elements("css selector", "#jobs tr")[0]
    assert "running" in row.text
    row.find_element("css selector", "button.cancel").click()
    t0 = time.monotonic()
    while client.get(f"/v1/jobs/{blocker}").status_code != 404:
        assert time.monotonic() - t0 < 30
        time.sleep(0.05)
    assert httpx.get(f"{client.base_url}/v1/jobs/{blocker}/source").status_code == 401  # the page's token only


def test_the_page_says_what_went_wrong_in_its_own_words(page):
    client, browser = page
    browser.refresh()  # nothing chosen; the token kept (localStorage)
    assert browser.find_element("id", "token").get_attribute("value") == TOKEN
    browser.find_element("id", "go").click()
    assert "Choose a video" in text(browser, "form-error")
    browser.find_element("id", "token").clear()
    browser.find_element("id", "token").send_keys("wrong")
    browser.execute_script("""
        const data = new DataTransfer();
        data.items.add(new File(["not a video"], "notes.txt", { type: "text/plain" }));
        document.dispatchEvent(new DragEvent("drop", { dataTransfer: data, bubbles: true, cancelable: true }));
    """)
    browser.find_element("id", "go").click()
    wait(browser, lambda b: "needs a token" in text(b, "form-error"))
    browser.find_element("id", "token").clear()
    browser.find_element("id", "token").send_keys(TOKEN)
    browser.find_element("id", "go").click()  # taken, then failed by the worker: its one line, said so
    wait(browser, lambda b: text(b, "status") == "failed" and text(b, "job-name") == "notes.txt")
    assert text(browser, "error").startswith("The job failed: ") and "DATA" not in text(browser, "error")
