"""The published site as a reader's browser sees it: headless Chromium, offline, from disk.

Every page is visited by following its links from the front page; each link must land on a file
of the site (and on an existing anchor), each image must decode, and no page may log a console
error. Sorting and filtering are driven by clicks and typing. Screenshots of the leaderboard and
of a cell page are saved in the test's temporary folder (their paths are printed; set
TLBENCH_SCREENSHOT_DIR to also copy them there).
"""

from __future__ import annotations

import os
import shutil
from collections import deque
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

from tlbench.report.screenshot import CHROMEDRIVER, CHROMIUM, FLAGS

CHROMIUM_FLAGS = (*FLAGS[:-1], "--window-size=1400,1200", "--allow-file-access-from-files")


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.skip(
            f"needs {CHROMIUM} and {CHROMEDRIVER}: apt-get install -y chromium chromium-driver"
        )
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    profile = tmp_path_factory.mktemp("chromium-profile")
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(
        service=webdriver.ChromeService(executable_path=str(CHROMEDRIVER)), options=options
    )
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    from test_publish import other_machine, publish, week1, week2

    root = tmp_path_factory.mktemp("published")
    results = root / "results"
    week1(results), week2(results), other_machine(results)
    code, output = publish(results, "-o", root / "site")
    assert code == 0, output
    return root / "site"


def console_errors(driver) -> list[str]:
    return [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def local_path(url: str) -> Path:
    return Path(unquote(urlsplit(url).path))


def test_every_page_link_image_and_script_works_in_chromium(browser, site):
    start = (site / "index.html").resolve()
    queue, seen, problems, anchors, ids = deque([start]), {start}, [], [], {}
    browser.get_log("browser")  # start from an empty console
    while queue:
        page = queue.popleft()
        browser.get(page.as_uri())
        problems += [f"{page.name}: console: {m}" for m in console_errors(browser)]
        ids[page] = set(
            browser.execute_script(
                "return Array.from(document.querySelectorAll('[id]'), e => e.id);"
            )
        )
        images = browser.execute_script(
            "return Array.from(document.images).map(i => [i.src, i.complete && i.naturalWidth]);"
        )
        problems += [
            f"{page.name}: image {src} did not render" for src, width in images if not width
        ]
        links = browser.execute_script(
            "return Array.from(document.querySelectorAll('a[href], link[href], script[src]'))"
            ".map(e => e.href || e.src);"
        )
        for url in links:
            parts = urlsplit(url)
            if parts.scheme not in ("file", "data"):
                problems.append(f"{page.name}: link leaves the site: {url}")
                continue
            if parts.scheme == "data":
                continue
            target = local_path(url)
            if not target.is_file() or site.resolve() not in target.parents:
                problems.append(f"{page.name}: {url} is not a file of the site")
            elif parts.fragment:
                anchors.append((target, parts.fragment, page.name))
            if target.suffix == ".html" and target.is_file() and target not in seen:
                seen.add(target)
                queue.append(target)
    for target, fragment, source in anchors:
        if fragment not in ids.get(target, set()):
            problems.append(f"{source}: {target.name}#{fragment} has no such anchor")
    assert problems == []
    assert len(seen) == len(list(site.rglob("*.html")))  # every page is reachable


def leaderboard_models(browser) -> list[str]:
    return browser.execute_script(
        "return Array.from(document.querySelectorAll('#leaderboard tbody tr'))"
        ".filter(r => !r.hidden).map(r => r.cells[1].querySelector('a').textContent);"
    )


def header(browser, text: str):
    return next(
        th
        for th in browser.find_elements("css selector", "#leaderboard thead th")
        if th.text == text
    )


def test_the_leaderboard_sorts_by_a_clicked_column_and_filters_by_typing(browser, site, tmp_path):
    board = site / "suites" / "quickstart" / "index.html"
    browser.get(board.resolve().as_uri())
    ranked = ["lite0-96", "lite0-imagenet", "lite0-scratch", "lite0-scratch (2)"]
    assert leaderboard_models(browser) == ranked

    header(browser, "fashion-mnist").click()  # scores: best first; no cell ("—") last
    assert leaderboard_models(browser) == [
        "lite0-96",
        "lite0-imagenet",
        "lite0-scratch",
        "lite0-scratch (2)",
    ]
    # The digits scores as the page shows them, read before sorting: best first after the click.
    column = [th.text for th in browser.find_elements("css selector", "#leaderboard thead th")]
    scores = dict(
        zip(
            leaderboard_models(browser),
            browser.execute_script(
                "return Array.from(document.querySelectorAll('#leaderboard tbody tr'))"
                f".map(r => parseFloat(r.cells[{column.index('digits')}].textContent));"
            ),
            strict=True,
        )
    )
    by_digits = sorted(scores, key=scores.get, reverse=True)
    header(browser, "digits").click()
    assert leaderboard_models(browser) == by_digits
    header(browser, "digits").click()  # reversed: worst first
    assert leaderboard_models(browser) == by_digits[::-1]
    header(browser, "model").click()
    assert leaderboard_models(browser) == sorted(ranked)
    header(browser, "#").click()
    assert leaderboard_models(browser) == ranked

    search = browser.find_element("css selector", "input.filter")
    search.send_keys("scratch")
    assert leaderboard_models(browser) == ["lite0-scratch", "lite0-scratch (2)"]
    assert browser.find_element("css selector", ".count").text == "2 of 4 shown"
    search.send_keys(" (2)")
    assert leaderboard_models(browser) == ["lite0-scratch (2)"]
    search.clear()
    search.send_keys("efficientnet_lite0.in1k")  # the reference filters too
    assert leaderboard_models(browser) == ["lite0-96", "lite0-imagenet"]
    assert console_errors(browser) == []


def save_full_page(browser, url: str, out: Path) -> Path:
    browser.get(url)
    height = browser.execute_script("return document.documentElement.scrollHeight")
    browser.set_window_size(1400, min(max(height, 800), 16000))
    assert browser.save_screenshot(str(out))
    browser.set_window_size(1400, 1200)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    copy_to = os.environ.get("TLBENCH_SCREENSHOT_DIR")
    if copy_to:
        Path(copy_to).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(out, Path(copy_to) / out.name)
    print(f"screenshot: {out}")
    return out


def test_screenshots_of_the_leaderboard_and_of_a_cell_page(browser, site, tmp_path):
    board = site / "suites" / "quickstart" / "index.html"
    save_full_page(browser, board.resolve().as_uri(), tmp_path / "publish-leaderboard.png")
    browser.get(board.resolve().as_uri())
    row = "//tr[td//a[starts-with(normalize-space(.), 'lite0-96')]]"
    browser.find_element("xpath", f"{row}/td[3]//a").click()  # lite0-96 on digits: its cell page
    assert browser.find_element("tag name", "h1").text == "lite0-96 on digits with linear-probe"
    gallery = browser.find_elements("css selector", ".gallery img")
    assert gallery and all(
        browser.execute_script("return arguments[0].naturalWidth", img) > 0 for img in gallery
    )
    save_full_page(browser, browser.current_url, tmp_path / "publish-cell.png")
    assert console_errors(browser) == []
