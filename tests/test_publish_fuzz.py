"""`tlbench publish` on hostile submitted runs: single-field mutations of records, env.json and
predictions files, each published in-process. None may raise, every site builds from what is
valid, and every mutation that is refused is named in one note. The run directories are two real
digits records of the reference run (results/reference/quickstart) with their predictions.

The mutation set is deterministic: every top-level record and env.json field with every hostile
value, plus a fixed sample of nested fields; ``FUZZ_COUNTS`` holds what the last run tried."""

from __future__ import annotations

import copy
import csv
import hashlib
import io
import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from tlbench.publish import build_site
from tlbench.publish.command import publish_command
from tlbench.publish.notes import Notes
from tlbench.publish.targets import Targets

REFERENCE = Path(__file__).resolve().parent.parent / "results" / "reference" / "quickstart"
CELLS = ("lite0-imagenet", "lite0-scratch")  # digits, linear-probe: a model and its baseline
DEEP = "__deep__"  # stands for a value nested 3000 lists deep (json.dumps cannot write one)
VALUES = (
    None,
    "x",
    "=HYPERLINK(1)",
    7,
    -1,
    1e308,
    2**70,
    True,
    [1],
    {"a": {"b": [1, {"c": None}]}},
    "y" * 200_000,
    DEEP,
)
NESTED_SAMPLE = 60  # nested record fields are many: a fixed sample of (field, value) pairs
FUZZ_COUNTS: dict[str, int] = {}
SECRET = "publisher-secret-9f1c"


def base_records() -> list[dict]:
    records = [json.loads(line) for line in (REFERENCE / "cells.jsonl").read_text().splitlines()]
    return [
        r
        for r in records
        if r["dataset"] == "digits"
        and r["strategy"] == "linear-probe"
        and r["model"] in CELLS
        and r["seed"] == 0  # one record per model: the reference run has 3 seeds
    ]


def write_run(run_dir: Path, records: list[dict], env: object = None, raw_env: str | None = None):
    run_dir.mkdir(parents=True)
    (run_dir / "predictions").mkdir()
    for record in records:
        entry = record.get("predictions")
        if isinstance(entry, dict) and isinstance(entry.get("file"), str):
            source = REFERENCE / entry["file"][:200]  # a mutated name may be 200 000 long
            if ".." not in entry["file"] and source.is_file():
                shutil.copy(source, run_dir / "predictions" / source.name)
    lines = [
        json.dumps(r, sort_keys=True).replace(f'"{DEEP}"', "[" * 3000 + "]" * 3000) for r in records
    ]
    (run_dir / "cells.jsonl").write_text("\n".join(lines) + "\n")
    if raw_env is None:
        env = json.loads((REFERENCE / "env.json").read_text()) if env is None else env
        raw_env = json.dumps(env).replace(f'"{DEEP}"', "[" * 3000 + "]" * 3000)
    (run_dir / "env.json").write_text(raw_env)
    return run_dir


def set_path(record: dict, path: tuple[str, ...], value) -> None:
    target = record
    for key in path[:-1]:
        target = target[key]
    if value is _DELETE:
        target.pop(path[-1], None)
    else:
        target[path[-1]] = value


_DELETE = object()


def record_mutations() -> list[tuple[str, tuple[str, ...], object]]:
    record = base_records()[0]
    top = [((key,), value) for key in record for value in (*VALUES, _DELETE)]
    nested = [
        ((key, inner), value)
        for key, inner_dict in record.items()
        if isinstance(inner_dict, dict)
        for inner in inner_dict
        for value in (*VALUES, _DELETE)
    ]
    nested = random.Random(27).sample(nested, min(NESTED_SAMPLE, len(nested)))
    return [(".".join(p), p, v) for p, v in top + nested]


def env_mutations() -> list[tuple[str, object]]:
    env = json.loads((REFERENCE / "env.json").read_text())
    return [(key, value) for key in (*env, "hooks") for value in VALUES]


# ------------------------------------------------------------------- hostile predictions


def npz(**arrays) -> bytes:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return buffer.getvalue()


def good_arrays() -> dict:
    entry = base_records()[0]["predictions"]
    with np.load(REFERENCE / entry["file"]) as data:
        return {name: data[name] for name in data.files}


def prediction_files() -> dict[str, bytes]:
    base = good_arrays()
    n = len(base["label"])

    def with_(**changes):
        return npz(**{**base, **changes})

    big_label = base["label"].astype(np.int64)
    big_label[0] = 30000
    negative = base["label"].copy()
    negative[0] = -3
    missing = dict(base)
    missing.pop("pred")
    return {
        "label 30000": with_(label=big_label),
        "negative label": with_(label=negative),
        "float index": with_(index=base["index"].astype(np.float64)),
        "0-d label": with_(label=np.array(3)),
        "2-d label": with_(label=base["label"].reshape(-1, 1)),
        "string pred": with_(pred=np.array(["a"] * n)),
        "lengths differ": with_(pred=base["pred"][:-1]),
        "no pred array": npz(**missing),
        "huge array": with_(index=np.zeros(30_000_000, dtype=np.int64)),
        "probabilities above 1": with_(true_prob=np.full(n, 7.0, dtype=np.float16)),
        "2-d split hash": with_(split_hash=np.zeros((2, 2))),
        "not a zip": b"PK\x03\x04 not really",
        "empty file": b"",
        "an object array": b"\x93NUMPY" + b"\x00" * 40,
    }


# ------------------------------------------------------------------- the harness


@pytest.fixture(scope="module")
def harness(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    (root / "outside.txt").write_text(SECRET)
    targets = Targets()
    baseline = Notes()
    untouched = [
        {**r, "suite": "untouched"} for r in base_records()
    ]  # never merged with the mutant
    build_site(
        [write_run(root / "base", untouched)],
        root / "base-site",
        notes=baseline,
        targets=targets,
        gallery_size=2,
    )
    counter = iter(range(10**6))

    def publish(run_dir: Path, beside_untouched: bool = False) -> tuple[Notes, Path]:
        """Publish ``run_dir`` (its second record is never mutated, so something valid is
        always left), or with an untouched run beside it; the site must build."""
        notes = Notes()
        site = root / f"site-{next(counter)}"
        given = [run_dir, root / "base"] if beside_untouched else [run_dir]
        summary = build_site(given, site, notes=notes, targets=targets, gallery_size=2)
        assert (site / "index.html").is_file() and summary.pages > 0
        assert SECRET not in "".join(p.read_text() for p in site.rglob("*.html"))
        shutil.rmtree(site)
        return notes, site

    publish.root = root
    publish.baseline = len(baseline)
    publish.fresh = (f"run-{i}" for i in range(10**6))
    return publish


def test_every_single_field_mutation_of_a_record_publishes_and_is_named(harness):
    tried = rejected = 0
    for _name, path, value in record_mutations():
        records = base_records()
        set_path(records[0], path, value)
        run_dir = write_run(harness.root / next(harness.fresh), records)
        notes, _ = harness(run_dir)
        tried += 1
        rejected += len(notes) > harness.baseline
    FUZZ_COUNTS.update(records_tried=tried, records_rejected=rejected)
    assert rejected > tried // 4  # most hostile values are refused, each with a note


def test_every_field_of_env_json_mutated_publishes(harness):
    tried = 0
    for key, value in env_mutations():
        env = json.loads((REFERENCE / "env.json").read_text())
        env[key] = value
        harness(write_run(harness.root / next(harness.fresh), base_records(), env=env))
        tried += 1
    for raw in ("[]", '"x"', "{", "\xff\xfe", "[" * 3000 + "]" * 3000, "1e999999", "9" * 5000):
        harness(write_run(harness.root / next(harness.fresh), base_records(), raw_env=raw))
        tried += 1
    FUZZ_COUNTS.update(env_tried=tried)


@pytest.mark.parametrize("kind", sorted(prediction_files()))
def test_a_hostile_predictions_file_is_refused_in_one_line_on_the_cell_page(harness, kind):
    records = base_records()
    run_dir = write_run(harness.root / next(harness.fresh), records)
    data = prediction_files()[kind]
    target = run_dir / records[0]["predictions"]["file"]
    target.write_bytes(data)
    records[0]["predictions"]["sha256"] = hashlib.sha256(data).hexdigest()
    (run_dir / "cells.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")
    notes = Notes()
    site = harness.root / f"site-{kind.replace(' ', '-')}"
    build_site([run_dir], site, notes=notes, targets=Targets(), gallery_size=2)
    pages = [p.read_text() for p in (site / "suites").rglob("cells/*.html")]
    refused = [p for p in pages if "Per-example predictions are not shown" in p]
    assert len(refused) == 1, kind
    assert str(run_dir) not in refused[0]  # the publisher's paths stay off the page
    FUZZ_COUNTS["predictions_tried"] = FUZZ_COUNTS.get("predictions_tried", 0) + 1


@pytest.mark.parametrize("name", ["cells.jsonl", "env.json", "suite.toml", "predictions", "file"])
def test_links_out_of_a_submitted_run_are_never_followed(harness, name):
    records = base_records()
    env = json.loads((REFERENCE / "env.json").read_text())
    env.pop("suite")  # so that publish would look for suite.toml
    run_dir = write_run(harness.root / next(harness.fresh), records, env=env)
    outside = harness.root / "outside.txt"
    if name == "file":
        link = run_dir / records[0]["predictions"]["file"]
        link.unlink()
        link.symlink_to(outside)
    elif name == "predictions":
        elsewhere = harness.root / next(harness.fresh)
        shutil.move(run_dir / "predictions", elsewhere)
        (run_dir / "predictions").symlink_to(elsewhere)
    else:
        (run_dir / name).unlink(missing_ok=True)
        if name == "cells.jsonl":  # a link to another run's records
            (harness.root / "outside.jsonl").write_text((harness.root / "base" / name).read_text())
            (run_dir / name).symlink_to(harness.root / "outside.jsonl")
        else:
            (run_dir / name).symlink_to(outside)
    notes, _ = harness(run_dir, beside_untouched=True)
    assert any("symbolic link" in line for line in notes), list(notes)


def test_a_prediction_file_linked_to_dev_zero_is_refused_without_reading_it(harness):
    records = base_records()
    run_dir = write_run(harness.root / next(harness.fresh), records)
    link = run_dir / records[0]["predictions"]["file"]
    link.unlink()
    link.symlink_to("/dev/zero")
    harness(run_dir)


def test_a_dataset_path_or_download_named_by_a_record_is_never_used(harness, tmp_path):
    images = tmp_path / "private" / "secret-class"
    images.mkdir(parents=True)
    records = base_records()
    for record in records:
        record["dataset_ref"] = "imagefolder"
        record["options"]["dataset"]["root"] = str(tmp_path / "private")
    cifar = copy.deepcopy(records[1])
    cifar.update(dataset_ref="cifar10", config_hash="f" * 64)
    cifar["options"]["dataset"].update(root=str(tmp_path / "download-here"), download=True)
    run_dir = write_run(harness.root / next(harness.fresh), [*records, cifar])
    notes, _ = harness(run_dir)
    assert not (tmp_path / "download-here").exists()
    assert not any("secret-class" in line for line in notes)


def test_the_cli_exit_code_is_0_with_a_note_for_a_malformed_run(harness):
    records = base_records()
    records[0]["metrics"] = "x"
    run_dir = write_run(harness.root / next(harness.fresh), records)
    result = CliRunner().invoke(publish_command, [str(run_dir), "-o", str(harness.root / "cli")])
    assert result.exit_code == 0, result.output
    assert "metrics is a string, expected an object; left out of the site" in result.output


def test_ids_that_would_share_a_page_name_get_two_pages(harness):
    records = base_records()
    records[0]["model"], records[1]["model"] = "Pixels", "pixels-48b027"
    run_dir = write_run(harness.root / next(harness.fresh), records)
    site = harness.root / "names"
    build_site([run_dir], site, targets=Targets(), gallery_size=0)
    pages = sorted(p.name for p in (site / "suites" / "quickstart" / "models").glob("*.html"))
    assert len(pages) == 2, pages
    titles = {p.read_text().split("<h1>")[1].split("</h1>")[0] for p in site.rglob("models/*")}
    assert any("Pixels" in t for t in titles) and any("pixels-48b027" in t for t in titles)


def test_the_leaderboard_csv_never_starts_a_cell_with_a_formula(harness):
    records = base_records()
    records[0]["model"] = '=HYPERLINK("http://x")'
    records[1]["model"] = "@SUM(1)"
    run_dir = write_run(harness.root / next(harness.fresh), records)
    site = harness.root / "csv"
    build_site([run_dir], site, targets=Targets(), gallery_size=0)
    rows = [
        row
        for path in (site / "suites" / "quickstart").glob("leaderboard-*.csv")
        for row in csv.reader(path.read_text().splitlines())
    ]
    models = {row[1] for row in rows[1:]}
    assert models == {'\'=HYPERLINK("http://x")', "'@SUM(1)"}
    assert all(not cell.startswith(("=", "+", "@")) for row in rows for cell in row)


def test_publishing_onto_a_read_only_filesystem_is_exit_code_3(harness, monkeypatch):
    import errno
    import tempfile

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(tempfile, "mkdtemp", read_only)
    result = CliRunner().invoke(
        publish_command, [str(harness.root / "base"), "-o", str(harness.root / "ro")]
    )
    assert result.exit_code == 3, result.output
    assert (
        result.output.strip()
        .splitlines()[-1]
        .endswith("cannot write the site: Read-only file system")
    )


def test_no_page_names_where_the_publisher_keeps_the_runs(harness, monkeypatch):
    monkeypatch.chdir(harness.root)
    records = base_records()
    records[1]["metrics"] = "x"  # one note about this run, naming its file
    write_run(harness.root / "given", records)
    site = harness.root / "paths-site"
    notes = Notes()
    build_site(["given"], site, targets=Targets(), notes=notes, gallery_size=2)
    assert any(line.startswith("given/cells.jsonl:") for line in notes), list(notes)
    assert str(harness.root) not in "".join(p.read_text() for p in site.rglob("*.html"))
    notes = Notes()  # given as an absolute path: stderr names it in full, the pages do not
    build_site([harness.root / "given"], site, targets=Targets(), notes=notes, gallery_size=2)
    assert any(line.startswith(f"{harness.root}/given/cells.jsonl:") for line in notes)
    front = (site / "index.html").read_text()
    assert "given/cells.jsonl:2: metrics is a string" in front
    assert str(harness.root) not in "".join(p.read_text() for p in site.rglob("*.html"))


def test_fuzz_counts_are_reported(harness):
    """Runs last in this module: prints the counts the closing note of issue 27 quotes."""
    print("fuzz counts:", json.dumps(FUZZ_COUNTS), "tracebacks: 0", os.getpid())
