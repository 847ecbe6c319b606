"""The on-disk cache: corrupted entries are detected and recomputed, concurrent workers compute
a key once, and ``tlbench cache info|clear`` show and remove entries."""

from __future__ import annotations

import multiprocessing as mp

import torch
from click.testing import CliRunner

from tlbench.cache import Cache


def _expensive(seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    a = torch.randn(300, 300, generator=generator, dtype=torch.float64)
    for _ in range(20):
        a = torch.tanh(a @ a.T / 300)
    return a


def _compute_shared(root: str, log: str, barrier) -> None:
    def compute():
        with open(log, "a") as fh:  # one line per actual computation
            fh.write("computed\n")
        return {"value": _expensive(7)}

    barrier.wait()  # both processes ask for the key at the same moment
    value = Cache(root).get_or_compute("features", {"model": "m", "data": "d"}, compute)
    assert torch.equal(value["value"], _expensive(7))


def test_two_processes_asking_for_one_key_compute_it_once(tmp_path):
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(2)
    log = tmp_path / "computations.log"
    procs = [
        ctx.Process(target=_compute_shared, args=(str(tmp_path / "cache"), str(log), barrier))
        for _ in range(2)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    assert [p.exitcode for p in procs] == [0, 0]
    assert log.read_text().splitlines() == ["computed"]


def test_a_corrupted_entry_is_detected_and_recomputed(tmp_path):
    calls = []

    def compute():
        calls.append(1)
        return {"value": _expensive(3)}

    key = {"model": "m", "data": "d"}
    Cache(tmp_path).get_or_compute("features", key, compute)
    payload = next((tmp_path / "features").glob("*/*.pt"))
    blob = bytearray(payload.read_bytes())
    blob[len(blob) // 2] ^= 0xFF  # one flipped byte: still a file of the right size
    payload.write_bytes(bytes(blob))
    value = Cache(tmp_path).get_or_compute("features", key, compute)
    assert len(calls) == 2, "the sha256 mismatch forced a recompute"
    assert torch.equal(value["value"], _expensive(3))
    assert (
        Cache(tmp_path).get_or_compute("features", key, compute) is not None and len(calls) == 2
    ), "the repaired entry is a hit"


def test_cache_info_and_clear_commands(tmp_path):
    from tlbench.cli import cli

    Cache(tmp_path).get_or_compute("features", {"k": 1}, lambda: {"v": torch.ones(3)})
    Cache(tmp_path).get_or_compute("prep", {"k": 1}, lambda: {"v": torch.ones(3)})
    info = CliRunner().invoke(
        cli, ["cache", "info", "--cache-dir", str(tmp_path)], terminal_width=200
    )
    assert info.exit_code == 0 and "features" in info.output and "prep" in info.output
    cleared = CliRunner().invoke(
        cli, ["cache", "clear", "features", "--cache-dir", str(tmp_path), "--yes"]
    )
    assert cleared.exit_code == 0
    assert not (tmp_path / "features").exists() and (tmp_path / "prep").exists()
