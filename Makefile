# Two commands from a fresh clone to a comparison table: `make demo`, then `make test`.
# `setup` installs what the demo needs; `make test` adds the `test` and `lint` extras.
# `setup` is shared by both and re-running it reuses what is installed (a stamp file tracks it).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.tlbench-installed
# torch is pinned here, not in pyproject.toml: this exact build lies on the CI machines' disk.
TORCH_PIN := torch==2.14.1 torchvision==0.29.1

# Quiet unless something fails: pip's errors still print, its progress and tips do not.
PIP := $(BIN)/python -m pip --quiet --disable-pip-version-check --no-input
INSTALL := $(PIP) install --no-warn-script-location

.PHONY: setup demo test test-fast test-deps lint typecheck reference bench clean-venv browser wheel

setup: $(STAMP) fashion-mnist

# tlbench/__init__.py holds the version: a bump re-installs, so the installed metadata follows.
$(STAMP): pyproject.toml tlbench/__init__.py plugins/tlbench-peft/pyproject.toml plugins/tlbench-trackers/pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(INSTALL) --upgrade pip
	@$(INSTALL) $(TORCH_PIN)
	@$(INSTALL) -e '.[peft,hf,wds,photos]' -e plugins/tlbench-peft -e 'plugins/tlbench-trackers[all]'
	@touch $(STAMP)

# Wheels of tlbench and tlbench-peft in dist/, built with the venv's setuptools (no download).
wheel: setup
	@$(PIP) wheel --no-deps --no-build-isolation --wheel-dir dist . plugins/tlbench-peft

# The Debian package carrying Fashion-MNIST: installed when we are root, otherwise we say how.
fashion-mnist:
	@if dpkg -s dataset-fashion-mnist >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ]; then (apt-get install -y -qq dataset-fashion-mnist || (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist)) >/dev/null; \
	else echo "note: fashion-mnist needs the Debian package: sudo apt-get install dataset-fashion-mnist"; fi

# Headless Chromium for the HTML report test (skipped with a message when absent).
browser:
	@if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ]; then (apt-get install -y -qq chromium chromium-driver || (apt-get update -qq && apt-get install -y -qq chromium chromium-driver)) >/dev/null; \
	else echo "note: the HTML report test needs: sudo apt-get install chromium chromium-driver"; fi

# Linear probe, partial unfreezing and full fine-tuning of two source models on two datasets for one
# seed, under a reduced budget (suites/quickstart-demo.toml: 2 epochs, 6 from scratch; under-trained
# cells are marked): 12 cells, under 5 minutes of run time on 2 CPU cores. The converged quickstart
# with 3 seeds and its trivial baselines is `make reference` (about 25 minutes estimated on quiet
# cores; the published run took 45 on a loaded machine).
DEMO := --executor process --workers 2
demo: setup
	$(BIN)/tlbench run suites/quickstart-demo.toml $(DEMO)

# What the tests need on top of setup (pytest, the optional executors and dataset formats, ruff,
# mypy): the `test` and `lint` extras of pyproject.toml, installed once (a stamp file tracks it).
TEST_STAMP := $(VENV)/.tlbench-test-installed
LINTED := tlbench tests benchmarks plugins tools

$(TEST_STAMP): $(STAMP) pyproject.toml
	@$(INSTALL) -e '.[test,lint]'
	@touch $(TEST_STAMP)

test-deps: $(TEST_STAMP)

# The full suite, as CI runs it; the 25 slowest tests are listed at the end of the output.
test: setup browser test-deps
	$(BIN)/ruff check $(LINTED)
	$(BIN)/ruff format --check $(LINTED)
	$(BIN)/python tools/mypy_baseline.py
	$(BIN)/python -m pytest -q --durations=25

# The suite without the tests marked slow (each over 10 s alone on 2 cores): for quick feedback.
test-fast: setup test-deps
	$(BIN)/python -m pytest -q --durations=10 -m "not slow"

lint: setup test-deps
	$(BIN)/ruff format --check $(LINTED)
	$(BIN)/ruff check $(LINTED)

# mypy against tools/mypy-baseline.json: the errors per module may only shrink (CONTRIBUTING.md).
typecheck: setup test-deps
	$(BIN)/python tools/mypy_baseline.py

# Regenerate the published reference run and its reports under results/reference/.
# The screenshots need Selenium (the test extra) and Chromium.
reference: setup browser test-deps
	rm -rf results/reference/quickstart
	$(BIN)/tlbench run suites/quickstart.toml --executor process --workers 2 --out results/reference/quickstart
	$(BIN)/tlbench report results/reference/quickstart --format md -o results/reference/quickstart/report.md
	$(BIN)/tlbench report results/reference/quickstart --format html -o results/reference/quickstart/report.html --plots results/reference/quickstart/plots
	$(BIN)/python -m tlbench.report.screenshot results/reference/quickstart/report.html results/reference/quickstart/report.png
	rm -rf results/reference/site
	$(BIN)/tlbench publish results/reference/quickstart -o results/reference/site
	$(BIN)/python -m tlbench.report.screenshot results/reference/site/suites/quickstart/index.html results/reference/leaderboard.png

# Every benchmark of docs/benchmarks.md (about an hour on 2 CPU cores; run it on a quiet machine).
# `make bench BENCH_ARGS=--quick` checks every script on a tiny configuration in a few minutes.
bench: setup
	$(BIN)/python benchmarks/run_all.py $(BENCH_ARGS)

clean-venv:
	rm -rf $(VENV)
