"""The test session itself: it leaves no temporary directory behind."""

from __future__ import annotations

import os
import subprocess
import sys


def test_a_test_session_removes_its_cache_directory(tmp_path, repo_root):
    env = {k: v for k, v in os.environ.items() if k != "TLBENCH_CACHE"}
    env["TMPDIR"] = str(tmp_path)
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
    result = subprocess.run(
        [*command, "tests/test_mypy_baseline.py"],
        cwd=repo_root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-2000:]
    assert not list(tmp_path.glob("tlbench-test-cache-*"))
