"""Type-check tlbench with mypy against a baseline that may only shrink.

    python tools/mypy_baseline.py            # fails when any module has more errors than its baseline
    python tools/mypy_baseline.py --update   # records fewer errors after a fix (never more)

``tools/mypy-baseline.json`` holds the number of mypy errors per file when the checker was
introduced. A file may keep its old errors, but a change that adds one (or a new file with any)
fails ``make test``. When a file has fewer errors than its baseline, the check passes and says
so; ``--update`` then lowers the recorded counts, so the improvement cannot be lost again. The
configuration is ``[tool.mypy]`` in pyproject.toml; the mypy release is pinned in the ``lint``
extra, since another release counts differently.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BASELINE = ROOT / "tools" / "mypy-baseline.json"
ERROR = re.compile(r"^(?P<path>[^:\s]+\.pyi?):\d+(?::\d+)?: error: ")


def count_errors(output: str) -> Counter[str]:
    """Errors per file in mypy's output (notes are not errors)."""
    counts: Counter[str] = Counter()
    for line in output.splitlines():
        match = ERROR.match(line)
        if match:
            counts[match["path"]] += 1
    return counts


def compare(baseline: dict[str, int], current: Counter[str]) -> tuple[list[str], list[str]]:
    """(lines for files that gained errors, lines for files that lost some)."""
    grew, shrank = [], []
    for path in sorted(set(baseline) | set(current)):
        before, now = baseline.get(path, 0), current.get(path, 0)
        if now > before:
            grew.append(f"{path}: {now} mypy errors, baseline {before}")
        elif now < before:
            shrank.append(f"{path}: {now} mypy errors, baseline {before}")
    return grew, shrank


def run_mypy() -> str:
    command = [sys.executable, "-m", "mypy", "--no-error-summary", "--no-pretty"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    if result.returncode not in (0, 1):  # 2: mypy itself failed (bad configuration, crash)
        sys.exit(f"mypy failed (exit code {result.returncode}):\n{result.stderr or result.stdout}")
    return result.stdout


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--update", action="store_true", help="lower the baseline to the current counts"
    )
    parser.add_argument(
        "--init",
        action="store_true",
        help="write the baseline from scratch (only when introducing or upgrading mypy)",
    )
    args = parser.parse_args(argv)
    output = run_mypy()
    current = count_errors(output)
    if args.init:
        _write(current)
        print(f"mypy baseline: {sum(current.values())} errors in {len(current)} files, written")
        return 0
    baseline = json.loads(BASELINE.read_text()) if BASELINE.exists() else {}
    grew, shrank = compare(baseline, current)
    if grew:
        print("mypy: more errors than the baseline allows (tools/mypy-baseline.json):")
        for line in grew:
            print(f"  {line}")
        paths = {line.split(":", 1)[0] for line in grew}
        print("\nThe errors of those files:")
        for line in output.splitlines():
            match = ERROR.match(line)
            if match and match["path"] in paths:
                print(f"  {line}")
        print(
            "\nFix them (or add a `# type: ignore[code]` with a reason); the baseline never grows."
        )
        return 1
    if shrank and args.update:
        _write({path: current.get(path, 0) for path in baseline})
        print(f"mypy baseline lowered: {sum(current.values())} errors in {len(current)} files")
        return 0
    total, allowed = sum(current.values()), sum(baseline.values())
    print(f"mypy: {total} errors, baseline {allowed}: no module gained any")
    if shrank:
        print("fewer errors than the baseline in:")
        for line in shrank:
            print(f"  {line}")
        print("run `python tools/mypy_baseline.py --update` to keep it that way")
    return 0


def _write(counts: dict[str, int] | Counter[str]) -> None:
    kept = {path: count for path, count in sorted(counts.items()) if count > 0}
    BASELINE.write_text(json.dumps(kept, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(main())
