"""The HTML report as a browser renders it: headless Chromium driven by Selenium, offline."""

import os
import shutil

import pytest

from tlbench.report.document import render_report
from tlbench.report.records import load_env, load_records
from tlbench.report.samples import write_sample_run
from tlbench.report.screenshot import CHROMEDRIVER, CHROMIUM, FLAGS

CHROMIUM_FLAGS = (*FLAGS[:-1], "--window-size=1400,1800")


@pytest.fixture
def browser(tmp_path):
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.skip(
            f"needs {CHROMIUM} and {CHROMEDRIVER} (Debian packages chromium, chromium-driver)"
        )
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(
        service=webdriver.ChromeService(executable_path=str(CHROMEDRIVER)), options=options
    )
    yield driver
    driver.quit()


@pytest.fixture
def report_page(tmp_path):
    run = write_sample_run(
        tmp_path / "run",
        failed=[("r18-imagenet", "cifar10", "linear-probe", seed) for seed in (0, 1, 2)],
        diverged=[("lite0-imagenet", "fashion-mnist", "full-finetune", 1)],
    )
    page = tmp_path / "report.html"
    page.write_text(
        render_report(load_records(run), "html", envs={str(run): load_env(run)}), encoding="utf-8"
    )
    return page


def first_column(table):
    return [
        row.find_element("xpath", "./td[1]").text
        for row in table.find_elements("css selector", "tbody tr")
    ]


def column(table, index):
    return [
        row.find_element("xpath", f"./td[{index}]").text
        for row in table.find_elements("css selector", "tbody tr")
    ]


def test_report_renders_tables_images_and_sorts_in_chromium(browser, report_page, tmp_path):
    browser.get(report_page.as_uri())

    assert browser.find_element("tag name", "h1").text == "tlbench report: quickstart"
    linear_probe = browser.find_elements("css selector", "table.sortable")[0]
    assert first_column(linear_probe) == [
        "scratch-r18 (random-init features)",
        "r18-imagenet",
        "lite0-imagenet",
    ]
    assert column(linear_probe, 3)[1] == "failed"
    bold = linear_probe.find_elements("css selector", "tbody b")
    assert [b.text.split(" ±")[0] for b in bold] == ["89.5", "83.8"]  # lite0 wins both datasets

    images = browser.find_elements("css selector", "figure img")
    assert len(images) == 3
    assert all(
        browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth", img) > 0
        for img in images
    )

    cifar10 = linear_probe.find_elements("css selector", "thead th")[2]
    cifar10.click()
    assert first_column(linear_probe) == [
        "scratch-r18 (random-init features)",
        "lite0-imagenet",
        "r18-imagenet",
    ]  # 27.1, 83.8, failed
    cifar10.click()
    assert first_column(linear_probe) == [
        "lite0-imagenet",
        "scratch-r18 (random-init features)",
        "r18-imagenet",
    ]  # failed stays last

    suite = browser.find_element("css selector", "pre.suite").text
    assert 'name = "quickstart"' in suite

    screenshot = tmp_path / "report.png"
    assert browser.save_screenshot(str(screenshot))
    assert screenshot.read_bytes().startswith(b"\x89PNG")
    if os.environ.get("TLBENCH_SCREENSHOT"):
        shutil.copyfile(screenshot, os.environ["TLBENCH_SCREENSHOT"])


def test_screenshot_command_writes_a_png_of_the_rendered_report(report_page, tmp_path):
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.skip(
            f"needs {CHROMIUM} and {CHROMEDRIVER} (Debian packages chromium, chromium-driver)"
        )
    from tlbench.report.screenshot import main

    out = tmp_path / "shot.png"
    assert main([str(report_page), str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main([str(tmp_path / "missing.html"), str(out)]) == 2
