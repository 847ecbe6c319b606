"""Device, precision, seeding, out-of-memory retry and cost accounting shared by every strategy."""

from __future__ import annotations

import contextlib
import random
import resource
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np
import torch

from tlbench.errors import UserError

T = TypeVar("T")
PRECISIONS = ("auto", "fp32", "bf16")


DEVICE_FORMS = "auto, cpu, cuda, cuda:N or mps"


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """The one device resolver: ``auto`` picks CUDA when present, else CPU; anything else must
    name a device this machine has (``UserError`` naming what was expected otherwise)."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise UserError(f"--device {device!r}: expected one of {DEVICE_FORMS}") from None
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"--device {device!r}: CUDA is not available here")
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise UserError(
                f"--device {device!r}: this machine has {torch.cuda.device_count()} CUDA devices"
            )
    elif resolved.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"--device {device!r}: MPS is not available here")
    elif resolved.type not in ("cpu", "cuda", "mps"):
        raise UserError(f"--device {device!r}: expected one of {DEVICE_FORMS}")
    return resolved


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` means bf16 where the hardware is fast at it (CUDA with bf16), fp32 elsewhere:
    on CPU bf16 autocast changes numbers and is only worth it when asked for."""
    if precision != "auto":
        return precision
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return "bf16"
    return "fp32"


def autocast(device: torch.device, precision: str):
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def memory_format(device: torch.device) -> torch.memory_format:
    # channels_last pays on CUDA tensor cores and on CPU too: oneDNN's NHWC kernels trained
    # efficientnet-lite0 at 64 px 1.56x faster here (2.5x for a frozen-prefix suffix).
    return torch.channels_last


def seed_everything(seed: int) -> None:
    """Seed every generator a cell may draw from: Python's, NumPy's and torch's (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def count_params(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total


def is_oom(exc: BaseException) -> bool:
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def with_oom_retry(fn: Callable[[int], T], batch_size: int, *, minimum: int = 1) -> tuple[T, int]:
    """Call ``fn(batch_size)``, halving the batch size on out-of-memory until it fits.

    Returns the result and the batch size that worked (recorded in the cell's cost).
    """
    while True:
        try:
            return fn(batch_size), batch_size
        except Exception as exc:
            if not is_oom(exc) or batch_size <= minimum:
                raise
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            batch_size = max(minimum, batch_size // 2)


def peak_rss_mb() -> float:
    """Peak resident memory of this process, in MiB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes.
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory of the device's allocator on CUDA, of the process elsewhere, in MiB."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return peak_rss_mb()


@dataclass
class CostMeter:
    """Wall seconds per phase, images processed in training, peak memory."""

    device: torch.device
    precision: str
    phases: dict[str, float] = field(
        default_factory=lambda: {"features_s": 0.0, "train_s": 0.0, "eval_s": 0.0}
    )
    train_images: int = 0
    batch_size: int | None = None
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            self.phases[name] = self.phases.get(name, 0.0) + time.perf_counter() - start

    def peak_mem_mb(self) -> float:
        return peak_memory_mb(self.device)

    def as_dict(
        self,
        model: torch.nn.Module | None = None,
        *,
        trainable: int | None = None,
        total: int | None = None,
    ) -> dict:
        if model is not None:
            trainable, total = count_params(model)
        train_s = self.phases.get("train_s", 0.0)
        cost = {
            "trainable_params": trainable,
            "total_params": total,
            "phases": {k: round(v, 3) for k, v in self.phases.items()},
            "peak_mem_mb": round(self.peak_mem_mb(), 1),
            "throughput_img_s": round(self.train_images / train_s, 1)
            if train_s > 0 and self.train_images
            else None,
            "device": str(self.device),
            "precision": self.precision,
        }
        if self.batch_size is not None:
            cost["batch_size"] = self.batch_size
        cost.update(self.extra)
        return cost


def runtime_info(device: torch.device) -> dict:
    """How this process computes a cell's numbers, recorded with every record: a difference here
    (another instruction set, thread count, the depthwise patch) explains a difference in floats."""
    from tlbench.engine.depthwise import enabled as depthwise_enabled

    return {
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "depthwise_grad_patch": device.type == "cpu" and depthwise_enabled(),
    }
