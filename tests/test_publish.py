"""`tlbench publish`: merging runs into leaderboards, pages per cell with the errors a model made,
bad input, and a site whose every link resolves. Offline and fast: the run directories are built
from the real records of the reference run (results/reference/quickstart), with per-example
predictions on scikit-learn's digits written through ``tlbench.predictions``."""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import numpy as np
import pytest
from click.testing import CliRunner

from tlbench.components import TargetData
from tlbench.predictions import Predictions, write_predictions
from tlbench.publish.command import publish_command
from tlbench.splits import make_splits

REFERENCE = Path(__file__).resolve().parent.parent / "results" / "reference" / "quickstart"
STRATEGIES = ("linear-probe", "full-finetune")


# ---------------------------------------------------------------- building run directories


def reference_records() -> list[dict]:
    lines = (REFERENCE / "cells.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def pick(model: str, dataset: str, strategy: str, seed: int = 0) -> dict:
    """One reference record (the reference run has 3 seeds; the tests build their own)."""
    found = [
        r
        for r in reference_records()
        if (r["model"], r["dataset"], r["strategy"], r["seed"]) == (model, dataset, strategy, seed)
    ]
    assert len(found) == 1
    return copy.deepcopy(found[0])


def rehash(record: dict) -> dict:
    """A config hash over what the cell computes (the test needs equality, not the runner's
    exact formula)."""
    identity = [
        [record[f"{kind}_ref"] for kind in ("model", "dataset", "strategy")],
        record["options"],
        record["seed"],
        [record["model"], record["dataset"], record["strategy"]],
        record.get("versions"),
    ]
    record["config_hash"] = hashlib.sha256(
        json.dumps(identity, sort_keys=True).encode()
    ).hexdigest()
    return record


@functools.cache
def digits_target() -> TargetData:
    from tlbench.datasetlib.local import digits

    return digits(None, {})


def reseeded(record: dict, seed: int, top1: float | None = None, minute: int = 0) -> dict:
    """The same cell with another seed: its real digits split, a new config hash."""
    record = copy.deepcopy(record)
    record["seed"] = seed
    if record["dataset"] == "digits":
        record["split"] = make_splits(digits_target(), record["options"]["dataset"], seed).record
        record["dataset_card"]["split"] = record["split"]
    if top1 is not None:
        record["metrics"]["top1"] = top1
    record["finished_at"] = (
        record["finished_at"][:14] + f"{minute:02d}" + record["finished_at"][16:]
    )
    return rehash(record)


def add_predictions(run_dir: Path, record: dict) -> dict:
    """Store predictions for a digits record whose mistakes match its top-1: the real test
    split's indices and labels, deterministic wrong guesses with low true-class probability."""
    split = make_splits(digits_target(), record["options"]["dataset"], record["seed"])
    assert split.record["hashes"]["test"] == record["split"]["hashes"]["test"]
    labels = digits_target().train.labels[split.test]
    rng = np.random.default_rng(int(record["config_hash"][:8], 16))
    wrong = rng.choice(
        len(labels), round(len(labels) * (100 - record["metrics"]["top1"]) / 100), replace=False
    )
    pred = labels.copy()
    pred[wrong] = (labels[wrong] + rng.integers(1, 10, len(wrong))) % 10
    true_prob = rng.uniform(0.6, 1.0, len(labels))
    true_prob[wrong] = rng.uniform(0.01, 0.4, len(wrong))
    predictions = Predictions(
        index=split.test,
        label=labels.astype(np.int16),
        pred=pred.astype(np.int16),
        true_prob=true_prob.astype(np.float16),
        split_hash=record["split"]["hashes"]["test"],
    )
    record["predictions"] = write_predictions(run_dir, record["config_hash"], predictions)
    record["metrics"]["top1"] = round(predictions.top1, 3)
    return record


def write_run(
    run_dir: Path, records: list[dict], run_id: str, predictions: bool = True, suite_text=None
) -> Path:
    run_dir.mkdir(parents=True)
    lines = []
    for record in records:
        record = copy.deepcopy(record)
        record["run_id"] = run_id
        if predictions and record["dataset"] == "digits" and record["status"] == "ok":
            record = add_predictions(run_dir, record)
        else:  # as an older run recorded it: no per-example predictions
            record.pop("predictions", None)
        lines.append(json.dumps(record, sort_keys=True))
    (run_dir / "cells.jsonl").write_text("\n".join(lines) + "\n")
    env = json.loads((REFERENCE / "env.json").read_text())
    env["git_revision"] = hashlib.sha1(run_id.encode()).hexdigest()
    if suite_text is not None:
        env["suite"] = suite_text
    (run_dir / "env.json").write_text(json.dumps(env, indent=2))
    return run_dir


def top1(model: str, dataset: str, strategy: str = "linear-probe") -> float:
    """The reference run's test top-1 of one cell."""
    return pick(model, dataset, strategy)["metrics"]["top1"]


def interval(record: dict) -> float:
    """Half the leaderboard's 95% interval of a one-seed cell: the test set's binomial noise."""
    p, items = record["metrics"]["top1"] / 100, record["split"]["sizes"]["test"]
    return 1.959963984540054 * 100 * (p * (1 - p) / items) ** 0.5


def week1(results: Path) -> Path:
    """Both models on both datasets with two strategies; digits with three seeds."""
    records = []
    for model in ("lite0-imagenet", "lite0-scratch"):
        for dataset in ("digits", "fashion-mnist"):
            for strategy in STRATEGIES:
                record = pick(model, dataset, strategy)
                records.append(record)
                if dataset == "digits":
                    shift = {1: -0.6, 2: 0.4}
                    records += [
                        reseeded(record, s, record["metrics"]["top1"] + shift[s], minute=50 + s)
                        for s in (1, 2)
                    ]
    return write_run(results / "week1", records, "week1")


def week2(results: Path) -> Path:
    """A new model, and seed 0 of one week-1 cell run again (same config hash, newer)."""
    rerun = pick("lite0-imagenet", "digits", "linear-probe")
    rerun["finished_at"] = "2026-12-08T10:00:00+00:00"
    rerun["metrics"]["top1"] = 96.1
    records = [rerun]
    for dataset in ("digits", "fashion-mnist"):
        record = pick("lite0-imagenet", dataset, "linear-probe")
        record["model"] = "lite0-96"
        record["options"]["model"]["input_size"] = 96
        record["metrics"]["top1"] += 1.0
        record["finished_at"] = "2026-12-08T11:00:00+00:00"
        records.append(rehash(record))
    return write_run(results / "week2", records, "week2")


def other_machine(results: Path) -> Path:
    """The baseline cell again under the same ids and seed, but another model configuration."""
    record = pick("lite0-scratch", "digits", "linear-probe")
    record["options"]["model"]["input_size"] = 32
    record["metrics"]["top1"] = 80.0
    record["finished_at"] = "2026-12-09T09:00:00+00:00"
    return write_run(
        results / "elsewhere" / "run-x", [rehash(record)], "other-machine", predictions=False
    )


def stored(run_dir: Path, model: str, dataset: str, strategy: str) -> list[float]:
    """top1 per seed as a run directory recorded it (predictions round it to whole test items)."""
    records = [json.loads(line) for line in (run_dir / "cells.jsonl").read_text().splitlines()]
    mine = [
        r
        for r in records
        if (r["model"], r["dataset"], r["strategy"]) == (model, dataset, strategy)
    ]
    return [r["metrics"]["top1"] for r in sorted(mine, key=lambda r: r["seed"])]


def publish(*args: str | Path) -> tuple[int, str]:
    result = CliRunner().invoke(publish_command, [str(a) for a in args])
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.output


# ---------------------------------------------------------------- reading the site


class Page(HTMLParser):
    """Links, ids, tables and text of one page."""

    def __init__(self, path: Path):
        super().__init__()
        self.path = path
        self.links: list[str] = []
        self.anchors: list[tuple[str, str]] = []  # (href, text)
        self.ids: set[str] = set()
        self.tables: list[list[list[str]]] = []
        self.text: list[str] = []
        self._cell: list[str] | None = None
        self._anchor: list[str] | None = None
        self.feed(path.read_text(encoding="utf-8"))

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if "id" in attrs:
            self.ids.add(attrs["id"])
        for name in ("href", "src"):
            if attrs.get(name) and tag in ("a", "img", "link", "script"):
                self.links.append(attrs[name])
        if tag == "a":
            self._anchor = [attrs.get("href", "")]
        elif tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "br":
            self.handle_data(" ")

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.tables[-1][-1].append(" ".join("".join(self._cell).split()))
            self._cell = None
        elif tag == "a" and self._anchor is not None:
            self.anchors.append((self._anchor[0], "".join(self._anchor[1:]).strip()))
            self._anchor = None

    def handle_data(self, data):
        self.text.append(data)
        for collecting in (self._cell, self._anchor):
            if collecting is not None:
                collecting.append(data)

    @property
    def body(self) -> str:
        return " ".join(" ".join(self.text).split())

    def href(self, text: str) -> Path:
        """The file the first link reading ``text`` points to."""
        href = next(h for h, t in self.anchors if t == text)
        return (self.path.parent / unquote(urlsplit(href).path)).resolve()


def table_rows(page: Page, first_header: str) -> list[list[str]]:
    """Body rows of the first table whose first column is headed ``first_header``."""
    for table in page.tables:
        if table and table[0] and table[0][0] == first_header:
            return table[1:]
    raise AssertionError(f"no table headed {first_header!r} in {page.path}")


def mean_of(cell: str) -> str:
    """The mean of a leaderboard cell, without its interval, rank and gain: ``94.7``."""
    return number(cell).split(" ±")[0]


def number(cell: str) -> str:
    """The value of a leaderboard cell, without its rank and gain: ``94.7 ± 0.4``."""
    return re.match(r"[\d.]+( ± [\d.]+)?|\S+", cell).group(0)


def broken_links(site: Path) -> list[str]:
    broken = []
    pages = {path: Page(path) for path in site.rglob("*.html")}
    for path, page in pages.items():
        for link in page.links:
            parts = urlsplit(link)
            if parts.scheme == "data":
                continue
            if parts.scheme or parts.netloc:
                broken.append(f"{path.relative_to(site)}: external link {link}")
                continue
            target = (path.parent / unquote(parts.path)).resolve() if parts.path else path
            if not target.is_file() or site.resolve() not in target.parents:
                broken.append(f"{path.relative_to(site)}: {link} -> missing file")
            elif parts.fragment and parts.fragment not in pages[target].ids:
                broken.append(f"{path.relative_to(site)}: {link} -> no id {parts.fragment}")
    return broken


def cell_page(site: Path, model: str, dataset: str, strategy: str) -> Page:
    for path in (site / "suites" / "quickstart" / "cells").glob("*.html"):
        heading = re.search(r"<h1>(.*?)</h1>", path.read_text()).group(1)
        if heading == f"{model} on {dataset} with {strategy}":
            return Page(path)
    raise AssertionError(f"no cell page for {model} {dataset} {strategy}")


# ---------------------------------------------------------------- the published fixture


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    root = tmp_path_factory.mktemp("publish")
    results = root / "results"
    week1(results), week2(results), other_machine(results)
    code, output = publish(results, "-o", root / "site", "--title", "Transfer leaderboard")
    assert code == 0, output
    return root / "site", output


def test_the_leaderboard_merges_runs_and_ranks_models_with_gains_over_scratch(published):
    site, _ = published
    page = Page(site / "suites" / "quickstart" / "index.html")
    rows = table_rows(page, "#")
    models = [row[1].split()[0] for row in rows]
    assert sorted(models) == ["lite0-96", "lite0-imagenet", "lite0-scratch", "lite0-scratch"]
    by_model = {row[1]: row for row in rows}
    imagenet = next(row for name, row in by_model.items() if name.startswith("lite0-imagenet"))
    # digits: seed 0 from week 2 (96.1 supersedes 94.7), seeds 1 and 2 from week 1.
    seeds = [
        96.1,
        *stored(site.parent / "results" / "week1", "lite0-imagenet", "digits", "linear-probe")[1:],
    ]
    assert imagenet[2].startswith(f"{np.mean(seeds):.1f} ± ")
    # A linear probe on a random-init model measures random-init features: no gain, no reference.
    scratch = next(
        row
        for name, row in by_model.items()
        if name.startswith("lite0-scratch random-init features")
    )
    assert scratch[-1] == "—"
    # Gain on fashion-mnist: over the network trained from scratch (the random-init model's
    # full fine-tuning), whatever the leaderboard's strategy.
    scratch_top1 = top1("lite0-scratch", "fashion-mnist", "full-finetune")
    gain = top1("lite0-imagenet", "fashion-mnist") - scratch_top1
    assert imagenet[3].endswith(f"{gain:+.1f}")
    assert "linear-probe" in page.body and "Strategy:" in page.body
    assert "lite0-scratch / full-finetune" in page.body  # the legend names the reference


def test_the_trained_from_scratch_cell_is_the_reference_on_every_leaderboard(published):
    site, _ = published
    page = Page(site / "suites" / "quickstart" / "strategy-full-finetune.html")
    rows = {row[1].split()[0]: row for row in table_rows(page, "#")}
    assert rows["lite0-scratch"][1].startswith("lite0-scratch trained from scratch")
    assert rows["lite0-scratch"][-1] == "reference"
    gain = top1("lite0-imagenet", "fashion-mnist", "full-finetune") - top1(
        "lite0-scratch", "fashion-mnist", "full-finetune"
    )
    assert rows["lite0-imagenet"][3].endswith(f"{gain:+.1f}")
    probe = cell_page(site, "lite0-imagenet", "fashion-mnist", "linear-probe")
    assert "points over lite0-scratch / full-finetune (trained from scratch)" in probe.body
    features = cell_page(site, "lite0-scratch", "fashion-mnist", "linear-probe")
    assert "random-init features" in features.body and "points over" not in features.body


def test_a_rerun_of_the_same_cell_supersedes_the_older_record(published):
    site, _ = published
    page = cell_page(site, "lite0-imagenet", "digits", "linear-probe")
    seeds = table_rows(page, "seed")
    assert [row[0] for row in seeds] == ["0", "1", "2"]
    assert seeds[0][2] == "96.10" and seeds[0][3] == "week2" and seeds[0][6] == "week1"
    assert "supersedes the one from run week1" in page.body


def test_the_same_ids_with_another_configuration_are_a_separate_row_with_a_note(published):
    site, _ = published
    page = Page(site / "suites" / "quickstart" / "index.html")
    published_size = pick("lite0-scratch", "digits", "linear-probe")["options"]["model"][
        "input_size"
    ]
    assert (
        "model lite0-scratch (2) is a separate row, never averaged with lite0-scratch: "
        f"options.input_size: {published_size} → 32" in page.body
    )
    rows = {
        row[1].split()[0] + (" (2)" if "(2)" in row[1] else ""): row
        for row in table_rows(page, "#")
    }
    assert mean_of(rows["lite0-scratch (2)"][2]) == "80.0"
    baseline = cell_page(site, "lite0-scratch", "digits", "linear-probe")
    recorded = stored(site.parent / "results" / "week1", "lite0-scratch", "digits", "linear-probe")
    assert [row[2] for row in table_rows(baseline, "seed")] == [f"{v:.2f}" for v in recorded]


def test_a_cell_page_shows_configuration_sweep_cost_environment_and_mistakes(published):
    site, _ = published
    page = cell_page(site, "lite0-imagenet", "digits", "linear-probe")
    body = page.body
    assert "dataset.protocol standard" in body
    sweep = table_rows(page, "l2")
    chosen = [row for row in sweep if row[-1] == "✓ chosen"]
    l2 = pick("lite0-imagenet", "digits", "linear-probe")["hparams"]["l2"]
    assert len(sweep) == 15 and [row[0] for row in chosen] == [f"{l2:.4g}"]
    assert "trainable_params 12,810" in body and "hardware.python 3.11.7" in body
    assert "plugin peft 0.1.0" in body
    # Seed 1: 94.108% of 359 test images -> 21 errors, all 21 in the gallery.
    section = page.path.read_text().split('id="seed-1"')[1].split("</section>")[0]
    assert "21 of 359 test items misclassified" in section
    images = re.findall(r'<img src="([^"]+)"', section)
    assert len(images) == 21
    assert all((page.path.parent / image).is_file() for image in images)
    assert "p(true) 0.0" in section and "true " in section
    matrix = re.search(r'<table class="confusion">(.*?)</table>', section, re.S).group(1)
    assert sum(int(n) for n in re.findall(r"<td[^>]*>(\d+)</td>", matrix)) == 359


def test_the_gallery_shows_the_most_confident_mistakes_first_and_is_capped(published):
    site, _ = published
    page = cell_page(site, "lite0-scratch", "digits", "full-finetune")
    probabilities = [float(p) for p in re.findall(r"p\(true\) ([\d.]+)", page.path.read_text())]
    first_seed = probabilities[: len(probabilities) // 3]
    assert first_seed == sorted(first_seed)
    thumbnails = list((site / "thumbs").rglob("*.png"))
    assert thumbnails and all(path.stat().st_size < 1500 for path in thumbnails)


def test_older_cells_without_predictions_say_so(published):
    site, _ = published
    page = cell_page(site, "lite0-imagenet", "fashion-mnist", "full-finetune")
    assert (
        "Per-example predictions were not stored (the run that recorded it did not store them)."
        in page.body
    )


def test_every_page_carries_provenance(published):
    site, _ = published
    for path in site.rglob("*.html"):
        text = Page(path).body
        assert "Published with tlbench" in text, path
        assert re.search(
            r"(week1|week2|other-machine) ?: tlbench 0\.1\.0, git [0-9a-f]{40}", text
        ), path


def test_every_internal_link_and_image_resolves(published):
    site, _ = published
    assert broken_links(site) == []
    # tlbench's one stylesheet and one script, the ones `tlbench report` inlines
    assert {p.name for p in (site / "assets").iterdir()} == {"tlbench.css", "tlbench.js"}


def test_the_site_references_nothing_outside_itself(published):
    site, _ = published
    for path in [*site.rglob("*.html"), *site.rglob("*.css"), *site.rglob("*.js")]:
        assert not re.search(r"(src|href)=\"(https?:)?//", path.read_text()), path
        assert "@import" not in path.read_text()


def test_model_dataset_and_run_pages_list_their_cells(published):
    site, output = published
    model = Page(site / "suites" / "quickstart" / "models" / "lite0-96.html")
    assert "Model card" in model.body and "weights_sha256" in model.body
    assert [row[0] for row in table_rows(model, "strategy")] == ["linear-probe"]
    dataset = Page(site / "suites" / "quickstart" / "datasets" / "digits.html")
    assert "scikit-learn load_digits" in dataset.body
    run = Page(site / "runs" / "week1.html")
    assert "superseded by run week2" in run.body and "Suite file" in run.body
    front = Page(site / "index.html")
    assert front.body.startswith("Transfer leaderboard") and "other-machine" in front.body
    assert "wrote" in output and "3 runs (quickstart)" in output


def test_the_csv_holds_the_numbers_behind_the_leaderboard(published):
    site, _ = published
    lines = (
        (site / "suites" / "quickstart" / "leaderboard-linear-probe.csv").read_text().splitlines()
    )
    assert lines[0].startswith("position,model,model_ref,dataset,strategy,metric,mean,ci95,n")
    assert any(
        line.split(",")[1:4] == ["lite0-96", "efficientnet_lite0.in1k", "digits"] for line in lines
    )


# ---------------------------------------------------------------- merging rules, one at a time


def test_same_cell_from_two_runs_is_one_entry_and_the_newest_wins(tmp_path):
    old = pick("lite0-imagenet", "digits", "linear-probe")
    new = copy.deepcopy(old)
    new["finished_at"], new["metrics"]["top1"] = "2027-01-01T00:00:00+00:00", 97.0
    # Given newest first: the order of the directories does not decide, the timestamps do.
    write_run(tmp_path / "b", [new], "run-b", predictions=False)
    write_run(tmp_path / "a", [old], "run-a", predictions=False)
    code, output = publish(tmp_path / "b", tmp_path / "a", "-o", tmp_path / "site")
    assert code == 0, output
    page = cell_page(tmp_path / "site", "lite0-imagenet", "digits", "linear-probe")
    assert [row[2:4] for row in table_rows(page, "seed")] == [["97.00", "run-b"]]
    assert "supersedes the one from run run-a" in page.body


def test_cells_whose_split_differs_are_never_averaged(tmp_path):
    first = pick("lite0-imagenet", "digits", "linear-probe")
    second = copy.deepcopy(first)
    second["split"]["hash"] = "f" * 64
    second["finished_at"], second["metrics"]["top1"] = "2027-01-01T00:00:00+00:00", 50.0
    write_run(tmp_path / "a", [first], "run-a", predictions=False)
    write_run(tmp_path / "b", [second], "run-b", predictions=False)
    code, output = publish(tmp_path, "-o", tmp_path / "site")
    assert code == 0, output
    page = Page(tmp_path / "site" / "suites" / "quickstart" / "index.html")
    values = sorted(mean_of(row[2]) for row in table_rows(page, "#"))
    assert values == ["50.0", "94.7"]  # two rows, no 72.4 average
    assert f"seed 0 recorded twice, with splits {first['split']['hash'][:10]}… and ffffffffff…" in (
        page.body
    )


def test_cells_whose_recipe_versions_differ_are_never_averaged(tmp_path):
    unversioned = pick("lite0-imagenet", "digits", "linear-probe")
    unversioned.pop("versions")  # as records were before recipe versions
    versioned = rehash({**copy.deepcopy(unversioned), "versions": {"strategy": "2", "model": "1"}})
    versioned["finished_at"], versioned["metrics"]["top1"] = "2027-01-01T00:00:00+00:00", 90.0
    write_run(tmp_path / "a", [unversioned], "run-a", predictions=False)
    write_run(tmp_path / "b", [versioned], "run-b", predictions=False)
    code, output = publish(tmp_path, "-o", tmp_path / "site")
    assert code == 0, output
    suite = tmp_path / "site" / "suites" / "quickstart"
    first = Page(suite / "index.html")
    second = Page(first.href("linear-probe (2)"))
    assert [mean_of(row[2]) for row in table_rows(first, "#")] == ["94.7"]
    assert [mean_of(row[2]) for row in table_rows(second, "#")] == ["90.0"]
    assert (
        "strategy linear-probe (2) is a separate leaderboard, never averaged with linear-probe: versions: unversioned → strategy 2"
        in first.body
    )
    assert "model lite0-imagenet (2) is a separate row" in second.body


def test_suites_with_different_names_get_separate_leaderboards(tmp_path):
    record = pick("lite0-imagenet", "digits", "linear-probe")
    renamed = rehash({**copy.deepcopy(record), "suite": "my-suite"})
    write_run(tmp_path / "a", [record], "run-a", predictions=False)
    write_run(tmp_path / "b", [renamed], "run-b", predictions=False)
    code, output = publish(tmp_path, "-o", tmp_path / "site")
    assert code == 0, output
    assert "(my-suite, quickstart)" in output or "(quickstart, my-suite)" in output
    for suite in ("quickstart", "my-suite"):
        page = Page(tmp_path / "site" / "suites" / suite / "index.html")
        assert [mean_of(row[2]) for row in table_rows(page, "#")] == ["94.7"]


def test_a_suite_whose_content_changed_shows_the_changed_strategy_separately(tmp_path):
    old = pick("lite0-imagenet", "digits", "full-finetune")
    new = copy.deepcopy(old)
    new["options"]["strategy"]["lr"] = [3e-4]
    new["finished_at"], new["metrics"]["top1"] = "2027-01-01T00:00:00+00:00", 98.0
    suite = (REFERENCE / "suite.toml").read_text()
    write_run(tmp_path / "a", [old], "run-a", predictions=False)
    write_run(
        tmp_path / "b",
        [rehash(new)],
        "run-b",
        predictions=False,
        suite_text=suite.replace('name = "full-finetune"', 'name = "full-finetune"\nlr = 3e-4'),
    )
    lr = old["options"]["strategy"]["lr"]  # None: the recipe's own grid (finetune_lr) was used
    before = "unset" if lr is None else json.dumps(lr)
    code, output = publish(tmp_path, "-o", tmp_path / "site", "--strategy", "full-finetune")
    assert code == 0, output
    page = Page(tmp_path / "site" / "suites" / "quickstart" / "index.html")
    assert "quickstart: full-finetune" in page.body
    assert (
        "strategy full-finetune (2) is a separate leaderboard, never averaged with full-finetune: "
        f"options.lr: {before} → [0.0003]" in page.body
    )
    assert "The runs used 2 different versions of the suite file" in page.body


def test_the_reference_is_the_trained_from_scratch_cell_even_when_it_scores_best(tmp_path):
    pretrained = pick("lite0-imagenet", "digits", "linear-probe")
    features = pick("lite0-scratch", "digits", "linear-probe")
    scratch = pick("lite0-scratch", "digits", "full-finetune")
    scratch["metrics"]["top1"] = pretrained["metrics"]["top1"] + 1.0  # the reference scores best
    features["metrics"]["top1"] = pretrained["metrics"]["top1"] - 5.0  # never the reference
    write_run(tmp_path / "a", [pretrained, features, scratch], "run-a", predictions=False)
    code, output = publish(tmp_path / "a", "-o", tmp_path / "site")
    assert code == 0, output
    board = Page(tmp_path / "site" / "suites" / "quickstart" / "strategy-full-finetune.html")
    rows = table_rows(board, "#")
    assert rows[0][1].startswith("lite0-scratch trained from scratch")
    assert rows[0][-1] == "reference"
    probe = table_rows(Page(tmp_path / "site" / "suites" / "quickstart" / "index.html"), "#")
    assert probe[0][1].startswith("lite0-imagenet") and probe[0][-1] == "-1.0"
    assert probe[1][1].startswith("lite0-scratch random-init features") and probe[1][-1] == "—"


def test_without_a_network_trained_from_scratch_there_is_no_gain_column(tmp_path):
    records = [pick(m, "digits", "linear-probe") for m in ("lite0-imagenet", "lite0-scratch")]
    write_run(tmp_path / "a", records, "run-a", predictions=False)
    code, output = publish(tmp_path / "a", "-o", tmp_path / "site")
    assert code == 0, output
    page = Page(tmp_path / "site" / "suites" / "quickstart" / "index.html")
    assert "no gain over training from scratch" in page.body
    assert all("gain" not in head for head in page.tables[0][0])


# ---------------------------------------------------------------- bad input


def test_a_truncated_line_is_reported_and_the_site_still_builds(tmp_path):
    run = write_run(
        tmp_path / "a",
        [pick("lite0-imagenet", "digits", "linear-probe")],
        "run-a",
        predictions=False,
    )
    with open(run / "cells.jsonl", "a") as fh:
        fh.write('{"config_hash": "abc", "model": "lite0-scr')
    code, output = publish(run, "-o", tmp_path / "site")
    assert code == 0
    assert f"warning: {run / 'cells.jsonl'}:2: skipped a truncated or garbled record" in output
    front = Page(tmp_path / "site" / "index.html")
    assert "Left out while building" in front.body and "cells.jsonl:2" in front.body


def test_records_that_are_not_cell_records_are_skipped_with_a_reason(tmp_path):
    run = write_run(
        tmp_path / "a",
        [pick("lite0-imagenet", "digits", "linear-probe")],
        "run-a",
        predictions=False,
    )
    with open(run / "cells.jsonl", "a") as fh:
        fh.write('[1, 2]\n{"suite": "quickstart"}\n{"schema": 9, "suite": "x"}\n')
    code, output = publish(run, "-o", tmp_path / "site")
    assert code == 0
    # The report's checks in the report's words (tlbench.report.records), left out of the site.
    assert "cells.jsonl:2: not a JSON object; left out of the site" in output
    assert (
        "cells.jsonl:3: lacks model, dataset, strategy, seed, status, not a tlbench cell record; "
        "left out of the site" in output
    )
    assert (
        "cells.jsonl:4: has schema 9; this tlbench reads schema 1; left out of the site" in output
    )


def test_a_record_the_report_counts_as_malformed_is_malformed_on_the_site_in_its_words(tmp_path):
    from tlbench.report.records import load_records
    from tlbench.safeio import TlbenchWarning

    good = pick("lite0-imagenet", "digits", "linear-probe")
    bad = reseeded(good, 1)
    bad["metrics"]["top1"] = None
    run = write_run(tmp_path / "a", [good, bad], "run-a", predictions=False)
    code, output = publish(run, "-o", tmp_path / "site")
    assert code == 0, output
    line = (
        f"{run / 'cells.jsonl'}:2 (lite0-imagenet / digits / linear-probe / seed 1): status 'ok' "
        "but metrics.top1 is None, expected a number in [0, 100]; counted as malformed, in no mean"
    )
    assert f"warning: {line}" in output
    with pytest.warns(TlbenchWarning, match=re.escape(line)):
        load_records(run)
    rows = table_rows(Page(tmp_path / "site" / "suites" / "quickstart" / "index.html"), "#")
    assert number(rows[0][2]) == f"{good['metrics']['top1']:.1f} ± {interval(good):.1f}"
    assert "(1 malformed)" in rows[0][2]


def test_paths_that_are_not_run_directories_are_reported_and_skipped(tmp_path):
    run = write_run(
        tmp_path / "a",
        [pick("lite0-imagenet", "digits", "linear-probe")],
        "run-a",
        predictions=False,
    )
    (tmp_path / "empty").mkdir()
    code, output = publish(run, tmp_path / "empty", tmp_path / "missing", "-o", tmp_path / "site")
    assert code == 0
    assert (
        f"warning: {tmp_path / 'empty'}: not a run directory and no cells.jsonl below it; skipped"
        in output
    )
    assert f"warning: {tmp_path / 'missing'}: no such file or directory; skipped" in output


def test_nothing_valid_to_publish_is_an_error_with_exit_code_2(tmp_path):
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "cells.jsonl").write_text('{"truncated\n')
    code, output = publish(tmp_path / "broken", "-o", tmp_path / "site")
    assert code == 2
    assert (
        output.strip().splitlines()[-1]
        == f"error: nothing to publish: no valid run directory in {tmp_path / 'broken'}"
    )
    assert not (tmp_path / "site").exists()


def test_a_missing_or_altered_predictions_file_is_named_on_the_cell_page(tmp_path):
    seeds = [pick("lite0-imagenet", "digits", "linear-probe")]
    seeds.append(reseeded(seeds[0], 1))
    run = write_run(tmp_path / "a", seeds, "run-a")
    records = [json.loads(line) for line in (run / "cells.jsonl").read_text().splitlines()]
    (run / records[0]["predictions"]["file"]).unlink()
    (run / records[1]["predictions"]["file"]).write_bytes(b"not what the record hashed")
    code, output = publish(run, "-o", tmp_path / "site")
    assert code == 0, output
    page = cell_page(tmp_path / "site", "lite0-imagenet", "digits", "linear-probe")
    assert (
        f"Per-example predictions were not found: {records[0]['predictions']['file']} is missing from run run-a."
        in page.body
    )
    assert "predictions file does not match its record's sha256" in page.body


def test_a_dataset_that_cannot_be_loaded_here_still_gets_its_confusion_matrix(tmp_path):
    record = pick("lite0-imagenet", "digits", "linear-probe")
    run = write_run(tmp_path / "a", [record], "run-a")
    stored = json.loads((run / "cells.jsonl").read_text())
    stored["dataset_ref"] = "no-such-dataset"
    (run / "cells.jsonl").write_text(json.dumps(stored) + "\n")
    code, output = publish(run, "-o", tmp_path / "site")
    assert code == 0, output
    page = cell_page(tmp_path / "site", "lite0-imagenet", "digits", "linear-probe")
    assert "No images: dataset 'no-such-dataset' is not registered here" in page.body
    assert (
        "warning: no images for digits cells: dataset 'no-such-dataset' is not registered here"
        in output
    )
    assert 'class="confusion"' in page.path.read_text()
    assert not (tmp_path / "site" / "thumbs").exists()


def test_an_unknown_metric_or_strategy_is_an_error(tmp_path):
    run = write_run(
        tmp_path / "a",
        [pick("lite0-imagenet", "digits", "linear-probe")],
        "run-a",
        predictions=False,
    )
    code, output = publish(run, "-o", tmp_path / "site", "--metric", "top5")
    assert (
        code == 2
        and "error: metric 'top5' is in no record; recorded metrics: top1, val_top1" in output
    )
    code, output = publish(run, "-o", tmp_path / "site", "--strategy", "lora")
    assert (
        code == 2 and "error: --strategy 'lora' is in no suite; strategies: linear-probe" in output
    )


def test_publishing_again_replaces_the_site_but_never_a_folder_it_did_not_write(tmp_path):
    run = write_run(
        tmp_path / "a",
        [pick("lite0-imagenet", "digits", "linear-probe")],
        "run-a",
        predictions=False,
    )
    site = tmp_path / "site"
    assert publish(run, "-o", site)[0] == 0
    (site / "stale.html").write_text("old")
    assert publish(run, "-o", site)[0] == 0
    assert not (site / "stale.html").exists() and (site / "index.html").is_file()
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    code, output = publish(run, "-o", mine)
    assert code == 2 and "not empty and not a site written by tlbench publish" in output
    assert (mine / "notes.txt").read_text() == "keep"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_the_reference_run_publishes(tmp_path):
    code, output = publish(REFERENCE, "-o", tmp_path / "site")
    assert code == 0, output
    page = Page(tmp_path / "site" / "suites" / "quickstart" / "index.html")
    rows = table_rows(page, "#")
    assert {row[1].split()[0] for row in rows} == {
        "lite0-imagenet",
        "lite0-scratch",
        "pixels",
        "random-features",
    }
    assert len(list((tmp_path / "site" / "suites" / "quickstart" / "cells").glob("*.html"))) == 16
    assert broken_links(tmp_path / "site") == []


def test_a_real_tiny_run_publishes_with_its_predictions(tmp_path, tlbench_run):
    suite = {
        "name": "tiny",
        "seeds": [0, 1],
        "models": [{"name": "scratch:resnet18", "id": "scratch", "input_size": 16}],
        "datasets": [{"name": "digits", "train_size": 200, "test_size": 100}],
        "strategies": [{"name": "linear-probe", "l2": [1e-2, 1.0]}],
    }
    records = tlbench_run(suite)
    run = tmp_path / "run"
    if not all("predictions" in r for r in records):  # runners before per-example predictions
        lines = [json.dumps(add_predictions(run, r)) for r in records]
        (run / "cells.jsonl").write_text("\n".join(lines) + "\n")
    code, output = publish(run, "-o", tmp_path / "site")
    assert code == 0, output
    page = Page(next((tmp_path / "site" / "suites" / "tiny" / "cells").glob("*.html")))
    assert "test items misclassified" in page.body and "Confusion matrix" in page.body
    assert broken_links(tmp_path / "site") == []


def test_a_failed_cell_is_shown_as_failed_ranks_last_and_merges_with_its_retry(tmp_path):
    ok = pick("lite0-imagenet", "fashion-mnist", "linear-probe")
    failed = copy.deepcopy(ok)
    for key in ("split", "model_card", "dataset_card"):
        failed.pop(key)  # it failed before loading its data
    failed.update(
        status="failed",
        metrics={},
        hparams={},
        finished_at="2026-11-29T04:00:00+00:00",
        error={"type": "OSError", "message": "disk full", "traceback": "Traceback: disk full"},
    )
    other = pick("lite0-scratch", "fashion-mnist", "linear-probe")
    write_run(tmp_path / "failed", [failed, other], "first-try", predictions=False)
    site = tmp_path / "site"
    assert publish(tmp_path / "failed", "-o", site)[0] == 0
    rows = table_rows(Page(site / "suites" / "quickstart" / "index.html"), "#")
    assert [(row[1].split()[0], row[2]) for row in rows] == [
        (
            "lite0-scratch",
            f"{other['metrics']['top1']:.1f} ± {interval(other):.1f} ¹ 1",
        ),  # ¹: one seed
        ("lite0-imagenet", "failed 2"),
    ]
    page = cell_page(site, "lite0-imagenet", "fashion-mnist", "linear-probe")
    assert "OSError: disk full" in page.body and "Traceback: disk full" in page.body
    assert "Per-example predictions were not stored (the cell did not finish)." in page.body

    write_run(tmp_path / "retry", [ok], "retry", predictions=False)  # later, with its split
    assert publish(tmp_path / "failed", tmp_path / "retry", "-o", site)[0] == 0
    page = cell_page(site, "lite0-imagenet", "fashion-mnist", "linear-probe")
    assert [row[1:4] for row in table_rows(page, "seed")] == [
        ["ok", f"{ok['metrics']['top1']:.2f}", "retry"]
    ]
    assert "supersedes the one from run first-try" in page.body


def test_the_gallery_holds_at_most_48_mistakes_lowest_true_probability_first(tmp_path):
    record = pick("lite0-scratch", "digits", "full-finetune")
    record["metrics"]["top1"] = 70.0  # 108 of 359 wrong
    write_run(tmp_path / "a", [record], "run-a")
    assert publish(tmp_path / "a", "-o", tmp_path / "site")[0] == 0
    page = cell_page(tmp_path / "site", "lite0-scratch", "digits", "full-finetune")
    text = page.path.read_text()
    probabilities = [float(p) for p in re.findall(r"p\(true\) ([\d.]+)", text)]
    assert "108 of 359 test items misclassified" in page.body
    assert "Most confident mistakes (48 of 108" in page.body
    assert len(probabilities) == 48 and probabilities == sorted(probabilities)
    assert len(re.findall(r'<img src="', text)) == 48


def test_copies_of_a_run_and_an_unreadable_env_are_handled(tmp_path):
    run = write_run(
        tmp_path / "a",
        [pick("lite0-imagenet", "digits", "linear-probe")],
        "run-a",
        predictions=False,
    )
    shutil.copytree(run, tmp_path / "backup" / "a")
    (run / "env.json").write_text("{not json")
    code, output = publish(run, tmp_path / "backup", "-o", tmp_path / "site")
    assert code == 0
    assert f"warning: {run / 'env.json'}: unreadable" in output
    assert {p.name for p in (tmp_path / "site" / "runs").iterdir()} == {
        "run-a.html",
        "run-a-2.html",
    }
    page = cell_page(tmp_path / "site", "lite0-imagenet", "digits", "linear-probe")
    assert len(table_rows(page, "seed")) == 1  # the same cell twice is one entry
    assert broken_links(tmp_path / "site") == []


def test_an_option_recorded_at_its_none_default_selects_the_default_dataset():
    # fashion-mnist records test_shift = None when no shift was asked for: the gallery must build
    # the plain dataset, not refuse the record's None as an invalid choice.
    from tlbench.publish.targets import publisher_options
    from tlbench.specs import Option

    shift = Option("test_shift", str, default=None, help="", choices=("invert", "rotate90"))
    assert publisher_options((shift,), {"test_shift": None}) == ({"test_shift": None}, "")
    assert publisher_options((shift,), {"test_shift": "invert"}) == ({"test_shift": "invert"}, "")
    assert publisher_options((shift,), {"test_shift": "sideways"})[1] == (
        "option 'test_shift' of the record is not valid here"
    )
