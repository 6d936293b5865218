"""The explorer in a real browser: headless Chromium (Debian's chromium and chromium-driver) driven
by Selenium, on the demo classifier.

Open the page, type a sentence, run it, read the rendered contributions and compare them with
DecompX called directly on the same model; switch the layer slider and compare the token's
composition with the library's token maps; download the JSON; type markup and see it shown as
text; check that the page asked nothing of any host but the server. Skipped with the reason when
Gradio, Selenium, Chromium or its driver is missing (CI installs them).
"""

from __future__ import annotations

import json
import shutil
import socket
import time
from pathlib import Path

import pytest
import torch

pytest.importorskip("gradio", reason="the explorer needs the [app] extra: pip install -e '.[app]'")
webdriver = pytest.importorskip("selenium.webdriver", reason="the browser test needs Selenium (in the [app] extra)")

from selenium.common.exceptions import NoAlertPresentException  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from captum_decompx import DecompX  # noqa: E402
from captum_decompx.app import build_app, launch_options, load_for_app  # noqa: E402

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
SENTENCE = "a good piece of work more often than not."
MARKUP = "<img src=x onerror=alert(1)> a fine film"
WAIT_S = 120


def open_browser(download_folder: Path, width: int = 1280, height: int = 2400):
    """Headless Chromium that logs its network requests and saves downloads into ``download_folder``."""
    if CHROMIUM is None or CHROMEDRIVER is None:
        pytest.skip("Chromium or chromedriver is not installed (Debian: apt-get install chromium chromium-driver)")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        f"--window-size={width},{height}",
    ):
        options.add_argument(argument)
    options.add_experimental_option(
        "prefs", {"download.default_directory": str(download_folder), "download.prompt_for_download": False}
    )
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(download_folder)})
    return driver


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def demo():
    model, tokenizer, source = load_for_app(None)
    app = build_app(model, tokenizer, source=source)
    app.queue(default_concurrency_limit=1)
    app.launch(prevent_thread_lock=True, quiet=True, **launch_options(port=free_port()))
    yield app, model, tokenizer
    app.close()


def library(model, tokenizer, text):
    """DecompX on the demo model, called directly: the output with token maps, and the tokens."""
    batch = tokenizer(text, return_tensors="pt")
    forward = lambda ids, mask, types: model(input_ids=ids, attention_mask=mask, token_type_ids=types).logits  # noqa: E731
    explainer = DecompX(forward, model=model)
    output = explainer.decompose(batch["input_ids"], (batch["attention_mask"], batch["token_type_ids"]), return_token_maps=True)
    return output, tokenizer.convert_ids_to_tokens(batch["input_ids"][0].tolist())


def run_text(driver, text: str) -> None:
    box = driver.find_element(By.CSS_SELECTOR, "#decompx-text textarea")
    box.clear()
    box.send_keys(text)
    driver.find_element(By.ID, "decompx-run").click()


def wait_for_text(driver, selector: str, expected: str) -> None:
    WebDriverWait(driver, WAIT_S).until(lambda d: expected in d.find_element(By.CSS_SELECTOR, selector).text)


def test_explorer_in_the_browser(demo, tmp_path):
    app, model, tokenizer = demo
    driver = open_browser(tmp_path)
    try:
        driver.get(app.local_url)
        WebDriverWait(driver, WAIT_S).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#decompx-text textarea"))
        driver.find_element(By.ID, "decompx-run").click()  # nothing typed yet: a message, no error
        wait_for_text(driver, "#decompx-status", "The text is empty: type a sentence to explain.")
        run_text(driver, SENTENCE)
        wait_for_text(driver, "#decompx-status", "Prediction: positive")
        wait_for_text(driver, "#decompx-deletion-table", "90%")  # the last view of the chain is there
        output, tokens = library(model, tokenizer, SENTENCE)

        # (1) the per-class view: every token's hover value against the library, row by row
        driver.switch_to.frame(driver.find_element(By.CSS_SELECTOR, "#decompx-view iframe"))
        rows = [row for row in driver.find_elements(By.CSS_SELECTOR, "tr") if row.find_elements(By.CSS_SELECTOR, "mark")]
        assert len(rows) == 2
        for cls, row in enumerate(rows):
            marks = row.find_elements(By.CSS_SELECTOR, "mark")
            assert [mark.get_attribute("textContent") for mark in marks] == tokens
            shown = torch.tensor([float(mark.get_attribute("title")) for mark in marks], dtype=torch.float64)
            torch.testing.assert_close(shown, output.attributions[0, :, cls].double(), rtol=0, atol=5.1e-5)
        assert "towards the row's class" in driver.find_element(By.CSS_SELECTOR, ".legend").get_attribute("textContent")
        driver.switch_to.default_content()
        sum_check = driver.find_element(By.ID, "decompx-sum-check").text
        assert f"{float(output.logits[0, 1]):+.6f}" in sum_check

        # (3) the layer slider: layer 3, the composition of [CLS] against the library's token maps
        number = driver.find_element(By.CSS_SELECTOR, "#decompx-layer input[type=number]")
        number.send_keys(Keys.CONTROL, "a")
        number.send_keys("3", Keys.ENTER)
        wait_for_text(driver, "#decompx-composition", "after layer 3 of 6")
        marks = driver.find_elements(By.CSS_SELECTOR, "#decompx-composition mark")
        shares = torch.tensor([float(mark.get_attribute("title")) for mark in marks], dtype=torch.float64)
        row = output.token_maps[2][0, 0].double()
        torch.testing.assert_close(shares, row / row.sum(), rtol=0, atol=5.1e-5)

        # (5) download the JSON and compare it with the library
        link = WebDriverWait(driver, WAIT_S).until(
            lambda d: d.find_element(By.CSS_SELECTOR, '#decompx-downloads a[download="decompx_explanation.json"]')
        )
        link.click()
        downloaded = tmp_path / "decompx_explanation.json"
        deadline = time.monotonic() + 60
        while not downloaded.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        payload = json.loads(downloaded.read_text())
        assert payload["tokens"] == tokens and payload["prediction"] == "positive"
        torch.testing.assert_close(torch.tensor(payload["contributions"]).T, output.attributions[0].float(), rtol=1e-5, atol=1e-5)

        # markup typed into the text is shown as text: no image element, no script run
        run_text(driver, MARKUP)
        wait_for_text(driver, "#decompx-status", f"exact, {len(tokenizer(MARKUP)['input_ids'])} tokens")
        driver.switch_to.frame(driver.find_element(By.CSS_SELECTOR, "#decompx-view iframe"))
        assert not driver.find_elements(By.CSS_SELECTOR, "img")
        assert "<" in [mark.get_attribute("textContent") for mark in driver.find_elements(By.CSS_SELECTOR, "mark")]
        driver.switch_to.default_content()
        assert not driver.find_elements(By.CSS_SELECTOR, "#decompx-compare img, #decompx-composition img")
        with pytest.raises(NoAlertPresentException):
            driver.switch_to.alert.text  # noqa: B018

        # offline: every request the page made went to the server (or stayed inside the page)
        requests = [json.loads(entry["message"])["message"] for entry in driver.get_log("performance")]
        urls = {m["params"]["request"]["url"] for m in requests if m["method"] == "Network.requestWillBeSent"}
        outside = sorted(u for u in urls if not u.startswith((app.local_url.rstrip("/"), "data:", "blob:")))
        assert not outside, f"the page requested other hosts: {outside[:5]}"
    finally:
        driver.quit()
