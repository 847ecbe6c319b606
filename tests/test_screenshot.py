"""Finding the browser for report screenshots: environment variables first, then the usual
command names on PATH, else one line that says what to install. Fake executables stand in for
Chromium here; tests/test_html_chromium.py drives the real one."""

import pytest

from tlbench.errors import UserError
from tlbench.report import screenshot
from tlbench.report.screenshot import find_browser


@pytest.fixture
def install(tmp_path, monkeypatch):
    """``install(name, where=PATH dir)`` puts an executable there; PATH holds only that dir."""
    path_dir = tmp_path / "bin"
    path_dir.mkdir()
    monkeypatch.setenv("PATH", str(path_dir))
    monkeypatch.delenv("TLBENCH_CHROMIUM", raising=False)
    monkeypatch.delenv("TLBENCH_CHROMEDRIVER", raising=False)

    def put(name: str, where=path_dir):
        path = where / name
        path.write_text("#!/bin/sh\n")
        path.chmod(0o755)
        return path

    return put


def test_browser_is_found_on_path_under_any_usual_name(install):
    chromium = install("chromium-browser")
    driver = install("chromedriver")
    assert find_browser() == screenshot.Browser(chromium=chromium, chromedriver=driver)


def test_environment_variables_win_over_path(install, tmp_path, monkeypatch):
    install("chromium")
    install("chromedriver")
    elsewhere = tmp_path / "opt"
    elsewhere.mkdir()
    chrome = install("chrome", where=elsewhere)
    driver = install("driver", where=elsewhere)
    monkeypatch.setenv("TLBENCH_CHROMIUM", str(chrome))
    monkeypatch.setenv("TLBENCH_CHROMEDRIVER", str(driver))
    assert find_browser() == screenshot.Browser(chromium=chrome, chromedriver=driver)


def test_no_browser_is_one_line_naming_what_to_install(install):
    install("chromedriver")
    with pytest.raises(UserError) as info:
        find_browser()
    message = str(info.value)
    assert "\n" not in message
    assert "none of chromium, chromium-browser, google-chrome is on PATH" in message
    assert "$TLBENCH_CHROMIUM" in message
    assert "$TLBENCH_CHROMEDRIVER" not in message, (
        "chromedriver was found; only Chromium is missing"
    )


def test_an_environment_variable_naming_no_executable_is_reported(install, tmp_path, monkeypatch):
    install("chromium")
    install("chromedriver")
    monkeypatch.setenv("TLBENCH_CHROMEDRIVER", str(tmp_path / "missing"))
    with pytest.raises(UserError, match=r"\$TLBENCH_CHROMEDRIVER='.*missing' is not an executable"):
        find_browser()


def test_module_constants_name_the_browser_found_or_a_path_that_does_not_exist(install):
    assert not screenshot.CHROMIUM.exists()
    chromium = install("google-chrome")
    assert screenshot.CHROMIUM == chromium


def test_screenshot_command_without_a_browser_exits_2_with_one_line(install, tmp_path, capsys):
    pytest.importorskip("selenium", reason="selenium is not installed")
    report = tmp_path / "report.html"
    report.write_text("<h1>report</h1>")
    assert screenshot.main([str(report), str(tmp_path / "out.png")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: screenshots need Chromium") and err.count("\n") == 1
    assert not (tmp_path / "out.png").exists()
