"""Render an HTML report in headless Chromium and save a PNG of it, as a reader would see it.

    python -m tlbench.report.screenshot REPORT.html OUT.png

Needs Debian's ``chromium`` and ``chromium-driver`` and the ``selenium`` package (the ``dev``
extra). The flags keep Chromium off the network: the report is self-contained.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from tlbench.errors import UserError

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1400,2400",
)


def screenshot(report: Path, out: Path) -> Path:
    try:
        from selenium import webdriver
    except ImportError:
        raise UserError("screenshots need selenium: pip install 'tlbench[dev]'") from None
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        raise UserError(
            f"screenshots need {CHROMIUM} and {CHROMEDRIVER}: apt-get install chromium chromium-driver"
        )
    if not report.is_file():
        raise UserError(f"report {str(report)!r} does not exist")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    with tempfile.TemporaryDirectory() as profile:
        for flag in (*FLAGS, f"--user-data-dir={profile}"):
            options.add_argument(flag)
        driver = webdriver.Chrome(
            service=webdriver.ChromeService(executable_path=str(CHROMEDRIVER)), options=options
        )
        try:
            driver.get(report.resolve().as_uri())
            height = driver.execute_script("return document.body.scrollHeight")
            driver.set_window_size(1400, min(max(height, 800), 12000))
            driver.save_screenshot(str(out))
        finally:
            driver.quit()
    return out


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m tlbench.report.screenshot REPORT.html OUT.png", file=sys.stderr)
        return 2
    try:
        print(f"wrote {screenshot(Path(argv[0]), Path(argv[1]))}")
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
