"""Scale on CPU: peak memory against the number of images, and the feed rate against timm's loader.

On a generated folder of 256 px JPEGs (procedural, 10 classes) of each size:
- **peak memory** of a ``tlbench run`` subprocess (the linear probe, one seed, ``--model`` at
  ``--px``, a fresh cache: decoding, preprocessing, extraction and the probe): ``ru_maxrss``, and
  sampled every 0.2 s over the run and its DataLoader workers the proportional set size and its
  anonymous part (``ru_maxrss`` counts pages a forked worker shares with its parent, and the
  memory-mapped stores' pages, which the kernel can drop);
- **feed rate**: images/s delivered as normalised float batches ready for the model (no forward
  pass), tlbench's data path (``PreparedData.batches`` over every split: the first pass decodes
  into the store and preprocesses, later passes read the store) against timm's own loader
  (``timm.data.create_loader`` on ``timm.data.ImageDataset`` of the same folder, same eval
  transform, batch and workers; it decodes and transforms on every pass).

    .venv/bin/python benchmarks/bench_scale.py                 # 5k, 10k, 20k images at 224 px
    .venv/bin/python benchmarks/bench_scale.py --quick         # 300, 600, 1200 images at 64 px
    .venv/bin/python benchmarks/bench_scale.py --no-feed       # memory only
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import common
import numpy as np

CLASSES = 10


def write_images(root: Path, count: int, px: int = 256) -> list[Path]:
    """``count`` JPEGs, class k striped at frequency k+1 over a random smooth background."""
    from PIL import Image

    rng = np.random.default_rng(0)
    grid = np.linspace(0, 2 * np.pi, px, dtype=np.float32)
    paths = []
    for i in range(count):
        label = i % CLASSES
        path = root / f"class{label}" / f"{i:06d}.jpg"
        paths.append(path)
        if path.exists():
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        angle = rng.uniform(0, np.pi)
        wave = np.sin((label + 1) * (np.cos(angle) * grid[None] + np.sin(angle) * grid[:, None]))
        tint = rng.uniform(40, 215, 3)
        image = tint + 40 * wave[..., None] + rng.normal(0, 12, (px, px, 3))
        Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(path, quality=90)
    return paths


def folder_of(root: Path, paths: list[Path], count: int) -> Path:
    """A folder of the first ``count`` images (hard links: no copy, same files)."""
    folder = root / f"n{count}"
    for path in paths[:count]:
        link = folder / path.parent.name / path.name
        if not link.exists():
            link.parent.mkdir(parents=True, exist_ok=True)
            os.link(path, link)
    return folder


def peak_rss_of_run(folder: Path, model: str, px: int, work: Path) -> dict:
    """Memory and time of a linear-probe ``tlbench run`` on ``folder``: ``peak_rss_gib``
    (``ru_maxrss`` from wait4: the largest resident set of the run or of one DataLoader worker),
    and sampled every 0.2 s over the run and its workers, ``peak_pss_gib`` (proportional set
    size: pages shared by forked workers or with the page cache counted once) and
    ``peak_anon_gib`` (its anonymous part: memory the processes own; the rest is libraries and
    the memory-mapped stores, which the kernel can drop); ``run_s`` and ``run_rc``."""
    work.mkdir(parents=True, exist_ok=True)
    suite = work / "scale.toml"
    suite.write_text(
        f'name = "scale"\nseeds = [0]\n[[models]]\nname = "{model}"\ninput_size = {px}\n'
        f'[[datasets]]\nname = "imagefolder"\nroot = "{folder}"\n'
        '[[strategies]]\nname = "linear-probe"\n'
    )
    command = [sys.executable, "-m", "tlbench", "run", str(suite), "--out", str(work / "run")]
    command += ["--cache-dir", str(work / "cache"), "--device", "cpu", "-q"]
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    peak_pss = peak_anon = 0
    while True:
        pid, status, usage = os.wait4(process.pid, os.WNOHANG)
        if pid:
            break
        rollups = [_rollup_kib(p) for p in _tree(process.pid)]
        peak_pss = max(peak_pss, sum(r.get("Pss", 0) for r in rollups))
        peak_anon = max(peak_anon, sum(r.get("Pss_Anon", 0) for r in rollups))
        time.sleep(0.2)
    return {
        "peak_rss_gib": usage.ru_maxrss / 2**20,
        "peak_pss_gib": peak_pss / 2**20,
        "peak_anon_gib": peak_anon / 2**20,
        "run_s": time.perf_counter() - start,
        "run_rc": os.waitstatus_to_exitcode(status),
    }


def _tree(pid: int) -> list[int]:
    """``pid`` and its descendants (Linux /proc)."""
    found, todo = [], [pid]
    while todo:
        found.append(todo.pop())
        for children in Path(f"/proc/{found[-1]}/task").glob("*/children"):
            try:
                todo += [int(child) for child in children.read_text().split()]
            except OSError:  # the task ended meanwhile
                pass
    return found


def _rollup_kib(pid: int) -> dict[str, int]:
    """The ``kB`` fields of /proc/PID/smaps_rollup (empty once the process is gone)."""
    try:
        lines = Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]
    except OSError:
        return {}
    return {line.split(":")[0]: int(line.split()[1]) for line in lines if line.endswith("kB")}


def tlbench_feed(folder: Path, src, cache_dir: Path, batch: int, passes: int) -> list[float]:
    """Images/s of each pass over every split of the folder through tlbench's data path; the
    first pass includes decoding into the store and preprocessing."""
    from tlbench.cache import Cache
    from tlbench.components import BuildContext
    from tlbench.data import prepare
    from tlbench.datasetlib import local

    store = Cache(cache_dir)
    rates = []
    start = time.perf_counter()
    target = local.imagefolder(None, {"root": str(folder)}, BuildContext(cache=store, device="cpu"))
    data = prepare(target, src, {}, {}, seed=0, cache=store)
    for _ in range(passes):
        count = 0
        for split in ("train", "val", "test"):
            for x, _ in data.batches(split, batch):
                count += len(x)
        rates.append(count / (time.perf_counter() - start))
        start = time.perf_counter()
    return rates


def timm_feed(folder: Path, src, batch: int, workers: int, passes: int) -> list[float]:
    """Images/s of each pass of timm's own loader over the folder (eval transform)."""
    from timm.data import ImageDataset, create_loader

    config = src.data_config
    loader = create_loader(
        ImageDataset(str(folder)),
        input_size=tuple(config["input_size"]),
        batch_size=batch,
        is_training=False,
        use_prefetcher=False,
        interpolation=config.get("interpolation", "bilinear"),
        mean=config["mean"],
        std=config["std"],
        crop_pct=config.get("crop_pct"),
        crop_mode=config.get("crop_mode"),
        num_workers=workers,
        persistent_workers=workers > 0,
    )
    rates = []
    for _ in range(passes):
        start, count = time.perf_counter(), 0
        for x, _ in loader:
            count += len(x)
        rates.append(count / (time.perf_counter() - start))
    return rates


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[5000, 10000, 20000])
    parser.add_argument("--px", type=int, default=224)
    parser.add_argument("--model", default="efficientnet_lite0.in1k")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--passes", type=int, default=2)
    parser.add_argument(
        "--root", type=Path, default=None, help="image folder (default: a temp dir)"
    )
    parser.add_argument("--no-rss", action="store_true", help="feed rates only")
    parser.add_argument("--no-feed", action="store_true", help="memory of the run only")
    parser.add_argument("--quick", action="store_true", help="300, 600, 1200 images at 64 px")
    args = parser.parse_args()
    if args.quick:
        args.sizes, args.px = [300, 600, 1200], 64
    start_stamp = common.stamp()
    workers = min(8, max(0, (os.cpu_count() or 1) - 1))
    with tempfile.TemporaryDirectory(prefix="tlbench-scale-") as tmp:
        root = args.root or Path(tmp) / "images"
        paths = write_images(root / "all", max(args.sizes))
        src = common.source(args.model, args.px, common.cache("scale"))
        rows, results = [], {}
        for size in args.sizes:
            folder = folder_of(root, paths, size)
            memory = (
                {}
                if args.no_rss
                else peak_rss_of_run(folder, args.model, args.px, Path(tmp) / f"run{size}")
            )
            if memory.get("run_rc"):
                print(f"{size} images: tlbench run exited {memory['run_rc']}", file=sys.stderr)
            ours, theirs = [float("nan")], [float("nan")]
            if not args.no_feed:
                ours = tlbench_feed(folder, src, Path(tmp) / f"feed{size}", args.batch, args.passes)
                theirs = timm_feed(folder, src, args.batch, workers, args.passes)
            rows.append(
                [size]
                + [
                    memory.get(k, float("nan"))
                    for k in ("peak_rss_gib", "peak_pss_gib", "peak_anon_gib", "run_s")
                ]
                + [ours[0], ours[-1], theirs[-1], ours[-1] / theirs[-1]]
            )
            results[size] = {**memory, "tlbench_img_s": ours, "timm_img_s": theirs}
            # One line per size as it finishes: a long run stopped early keeps what it measured.
            print(f"{size} images: {results[size]}", file=sys.stderr, flush=True)
    common.print_table(
        f"Scale: {args.model} at {args.px} px, linear probe, CPU ({os.cpu_count()} cores, "
        f"load {os.getloadavg()[0]:.1f}); feed rate at batch {args.batch}, {workers} workers",
        [
            "images",
            "peak RSS GiB",
            "peak PSS GiB",
            "peak anon PSS GiB",
            "run s",
            "tlbench 1st pass img/s",
            "tlbench later img/s",
            "timm loader img/s",
            "later/timm",
        ],
        rows,
    )
    common.log_result("scale", args, results, start_stamp=start_stamp)


if __name__ == "__main__":
    main()
