"""Drive the drawing page in headless Chromium: draw a '1' with the mouse, read the prediction.

Needs Debian's `chromium` and `chromium-driver` packages (apt-get install chromium chromium-driver)
and `pip install selenium`; skipped with the reason when any is missing.
"""

from __future__ import annotations

import os
import shutil

import pytest

CHROMIUM = os.environ.get("MNIST_CNN_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = os.environ.get("MNIST_CNN_CHROMEDRIVER") or shutil.which("chromedriver") or "/usr/bin/chromedriver"

pytest.importorskip("fastapi", reason="the service needs the 'serve' extra: pip install 'mnist-cnn[serve]'")
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium not installed (pip install selenium)")
if not os.path.exists(CHROMIUM):
    pytest.skip(f"chromium not installed at {CHROMIUM} (apt-get install chromium chromium-driver)",
                allow_module_level=True)
if not os.path.exists(CHROMEDRIVER):
    pytest.skip(f"chromedriver not installed at {CHROMEDRIVER} (apt-get install chromium-driver)",
                allow_module_level=True)

from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from mnist_cnn.serve import create_app  # noqa: E402

ANSWERED = "return document.getElementById('digit').dataset.seq === document.getElementById('pad').dataset.seq"


@pytest.fixture(scope="module")
def browser():
    os.environ.setdefault("SE_OFFLINE", "true")  # never let Selenium Manager reach for the network
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--no-first-run",
                 "--window-size=1000,800"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def test_draw_a_one_and_see_it_predicted(browser, trained_run, start_server):
    url = start_server(create_app(trained_run))
    browser.get(url + "/")
    wait = WebDriverWait(browser, 15)
    wait.until(lambda d: trained_run.name in d.find_element(By.ID, "model").text)
    pad = browser.find_element(By.ID, "pad")

    # A vertical stroke from top to bottom; the page predicts while the button is still down.
    stroke = ActionChains(browser).move_to_element_with_offset(pad, 4, -95).click_and_hold()
    for _ in range(19):
        stroke = stroke.move_by_offset(-0.4, 10).pause(0.02)
    stroke.perform()
    wait.until(lambda d: d.execute_script(ANSWERED) and d.find_element(By.ID, "digit").text != "?")
    ActionChains(browser).release().perform()
    wait.until(lambda d: d.execute_script(ANSWERED))

    assert browser.find_element(By.ID, "digit").text == "1"
    assert "% sure" in browser.find_element(By.ID, "confidence").text
    bars = browser.find_elements(By.CSS_SELECTOR, "#bars li")
    assert len(bars) == 10 and "best" in bars[1].get_attribute("class")
    seen_ink = browser.execute_script(
        "const d = document.getElementById('seen').getContext('2d').getImageData(0, 0, 28, 28).data;"
        "let s = 0; for (let i = 0; i < d.length; i += 4) s += d[i]; return s;")
    assert seen_ink > 255 * 20  # the 28x28 image the model saw is shown

    browser.find_element(By.ID, "clear").click()
    wait.until(lambda d: d.find_element(By.ID, "digit").text == "?")
    assert all(b.find_element(By.CSS_SELECTOR, ".value").text == "–" for b in bars)
