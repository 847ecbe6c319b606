"""tlbench's pytest plugin (tlbench.testing): opt-in, so a project that merely has tlbench
installed is offered none of its fixtures, and its fixtures are all named for tlbench."""

import re
import subprocess
import sys

import numpy as np


def test_digits_fixtures_hold_the_1797_scikit_learn_digits(
    tlbench_digits_images, tlbench_digits_target
):
    assert tlbench_digits_images.images.shape == (1797, 8, 8)
    assert tlbench_digits_images.images.dtype == np.uint8
    assert sorted(set(tlbench_digits_images.labels.tolist())) == list(range(10))
    assert tlbench_digits_target.name == "digits"
    assert tlbench_digits_target.train is tlbench_digits_images
    assert tlbench_digits_target.test is None


def _fixtures(cwd, *args) -> str:
    return subprocess.run(
        [sys.executable, "-m", "pytest", "--fixtures", "-p", "no:cacheprovider", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
    ).stdout


def test_a_foreign_pytest_session_is_offered_no_tlbench_fixture(tmp_path):
    # A project that merely has tlbench installed: no conftest, no tlbench tests.
    assert "tlbench" not in _fixtures(tmp_path)


def test_a_session_that_opts_in_is_offered_only_tlbench_named_fixtures(tmp_path):
    listing = _fixtures(tmp_path, "-p", "tlbench.testing")
    section = re.search(
        r"fixtures defined from tlbench\.testing -+\n(.*?)(?:\n-{3,}|\Z)", listing, re.S
    )
    assert section, f"tlbench's pytest plugin did not load:\n{listing[-2000:]}"
    names = set(re.findall(r"^(\w+)(?: \[\w+ scope\])? -- ", section.group(1), re.M))
    assert {"tlbench_run", "tlbench_digits_images", "tlbench_digits_target"} <= names
    generic = sorted(n for n in names if "tlbench" not in n)
    assert generic == [], f"tlbench.testing offers generically named fixtures: {generic}"
