"""Take the documentation's screenshot of the explorer (docs/images/explorer.png).

Serves the demo classifier with ``captum_decompx.app``, opens the page in headless Chromium
(Debian's ``chromium`` and ``chromium-driver``, driven by Selenium), explains one sentence, waits
for every view and saves the whole page::

    python scripts/explorer_screenshot.py [--out docs/images/explorer.png] [--text "..."]
"""

from __future__ import annotations

import argparse
import shutil
import socket
import time
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from captum_decompx.app import build_app, launch_options, load_for_app

REPOSITORY = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(REPOSITORY / "docs" / "images" / "explorer.png"))
    parser.add_argument("--text", default="a good piece of work more often than not.")
    parser.add_argument("--width", type=int, default=1200)
    args = parser.parse_args()

    model, tokenizer, _ = load_for_app(None)
    app = build_app(model, tokenizer, source="models/minilm-sst2")
    app.queue(default_concurrency_limit=1)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    app.launch(prevent_thread_lock=True, quiet=True, **launch_options(port=port))
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "chromium"
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", f"--window-size={args.width},1200"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver") or "chromedriver"), options=options)
    try:
        driver.get(app.local_url)
        wait = WebDriverWait(driver, 300)
        box = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#decompx-text textarea"))
        box.send_keys(args.text)
        driver.find_element(By.ID, "decompx-run").click()
        wait.until(lambda d: "90%" in d.find_element(By.ID, "decompx-deletion-table").text)
        time.sleep(2)  # the plots finish drawing
        height = driver.execute_script("return document.documentElement.scrollHeight")
        driver.set_window_size(args.width, height + 40)
        time.sleep(1)
        driver.save_screenshot(args.out)
        print(f"wrote {args.out} ({args.width} x {height + 40})")
    finally:
        driver.quit()
        app.close()


if __name__ == "__main__":
    main()
