"""Render an HTML report in headless Chromium and save a PNG of it, as a reader would see it.

    python -m tlbench.report.screenshot REPORT.html OUT.png

Needs Chromium, its chromedriver and the ``selenium`` package (the ``dev`` extra). The browser is
``$TLBENCH_CHROMIUM`` / ``$TLBENCH_CHROMEDRIVER`` when set, else the first of the usual command
names on ``PATH``. The flags keep Chromium off the network: the report is self-contained.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tlbench.errors import UserError

CHROMIUM_ENV = "TLBENCH_CHROMIUM"
CHROMEDRIVER_ENV = "TLBENCH_CHROMEDRIVER"
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")
CHROMEDRIVER_NAMES = ("chromedriver",)
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


@dataclass(frozen=True)
class Browser:
    chromium: Path
    chromedriver: Path


def locate(env_var: str, names: tuple[str, ...]) -> Path | None:
    """``$env_var`` (a path or a command name) when set, else the first of ``names`` on PATH."""
    override = os.environ.get(env_var)
    for name in (override,) if override else names:
        found = shutil.which(name)
        if found:
            return Path(found)
    return None


def find_browser() -> Browser:
    """Chromium and its chromedriver, or a ``UserError`` saying in one line what is missing."""
    found, missing = {}, []
    for field, env_var, names in (
        ("chromium", CHROMIUM_ENV, CHROMIUM_NAMES),
        ("chromedriver", CHROMEDRIVER_ENV, CHROMEDRIVER_NAMES),
    ):
        found[field] = locate(env_var, names)
        override = os.environ.get(env_var)
        if found[field] is None:
            missing.append(
                f"${env_var}={override!r} is not an executable"
                if override
                else f"none of {', '.join(names)} is on PATH (or set ${env_var})"
            )
    if missing:
        raise UserError(
            f"screenshots need Chromium and chromedriver: {'; '.join(missing)}; "
            "on Debian: apt-get install chromium chromium-driver"
        )
    return Browser(**found)


def __getattr__(name: str) -> Path:
    # CHROMIUM / CHROMEDRIVER, looked up when asked, for callers that test ``.exists()``; a bare
    # command name (which does not exist as a path) stands for one that is not installed.
    lookups = {
        "CHROMIUM": (CHROMIUM_ENV, CHROMIUM_NAMES),
        "CHROMEDRIVER": (CHROMEDRIVER_ENV, CHROMEDRIVER_NAMES),
    }
    if name not in lookups:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    env_var, names = lookups[name]
    return locate(env_var, names) or Path(os.environ.get(env_var) or names[0])


def screenshot(report: Path, out: Path) -> Path:
    try:
        from selenium import webdriver
    except ImportError:
        raise UserError("screenshots need selenium: pip install 'tlbench[dev]'") from None
    browser = find_browser()
    if not report.is_file():
        raise UserError(f"report {str(report)!r} does not exist")
    options = webdriver.ChromeOptions()
    options.binary_location = str(browser.chromium)
    with tempfile.TemporaryDirectory() as profile:
        for flag in (*FLAGS, f"--user-data-dir={profile}"):
            options.add_argument(flag)
        driver = webdriver.Chrome(
            service=webdriver.ChromeService(executable_path=str(browser.chromedriver)),
            options=options,
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
