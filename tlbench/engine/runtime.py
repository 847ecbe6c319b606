"""Device, precision, GPU settings, seeding, out-of-memory retry and cost accounting shared by
every strategy.

GPU settings (``configure_runtime``, applied once per process; docs/running.md, GPUs):

- precision ``auto``: bf16 where it is native (CUDA compute capability 8.0 or later: A100, H100,
  RTX 30xx on), fp16 with a ``GradScaler`` on older GPUs (V100, T4: their bf16 is emulated,
  although ``torch.cuda.is_bf16_supported()`` says yes), fp32 on CPU;
- ``cudnn.benchmark`` on (inputs have one size per cell), off with ``--deterministic``;
- TF32 for matmuls and convolutions on by default (``TLBENCH_TF32=off`` turns it off);
- ``--deterministic`` (``TLBENCH_DETERMINISTIC=1``): ``torch.use_deterministic_algorithms``
  and ``CUBLAS_WORKSPACE_CONFIG=:4096:8``, benchmark off.

Each record's ``runtime`` and the run's env.json say which were in force.
"""

from __future__ import annotations

import contextlib
import logging
import os
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
DETERMINISTIC_ENV = "TLBENCH_DETERMINISTIC"
TF32_ENV = "TLBENCH_TF32"
CUBLAS_WORKSPACE = ":4096:8"
logger = logging.getLogger("tlbench.runtime")


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


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bf16 natively: CUDA compute capability 8.0 or later."""
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return False
    return torch.cuda.get_device_capability(device) >= (8, 0)


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` means bf16 where the GPU computes it natively (compute capability >= 8.0), fp16
    (with a ``GradScaler`` in training, ``grad_scaler``) on older GPUs, fp32 elsewhere: on CPU
    reduced precision changes numbers and is only worth it when asked for."""
    if precision != "auto":
        return precision
    if torch.device(device).type == "cuda":
        return "bf16" if native_bf16(device) else "fp16"
    return "fp32"


_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(device: torch.device, precision: str):
    dtype = _AUTOCAST_DTYPES.get(precision)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


def grad_scaler(device: torch.device, precision: str) -> torch.amp.GradScaler:
    """The loss scaler a training loop needs: enabled for fp16 on CUDA (whose small exponent
    range underflows gradients without it), a no-op otherwise. Use it through ``backward_step``."""
    device = torch.device(device)
    enabled = precision == "fp16" and device.type == "cuda"
    return torch.amp.GradScaler(device.type if enabled else "cpu", enabled=enabled)


def backward_step(loss: torch.Tensor, optimizer, scaler: torch.amp.GradScaler | None) -> None:
    """``loss.backward(); optimizer.step()``, through ``scaler`` when it is enabled (a step
    whose scaled gradients overflowed is skipped and the scale lowered, as AMP does)."""
    backward(loss, scaler)
    optimizer_step(optimizer, scaler)


def backward(loss: torch.Tensor, scaler: torch.amp.GradScaler | None) -> None:
    """Accumulate ``loss``'s gradients (scaled when ``scaler`` is enabled): one call per
    micro-batch, then one ``optimizer_step`` per optimiser step."""
    if scaler is None or not scaler.is_enabled():
        loss.backward()
    else:
        scaler.scale(loss).backward()


def optimizer_step(optimizer, scaler: torch.amp.GradScaler | None) -> None:
    """Step on the accumulated gradients, through ``scaler`` when it is enabled."""
    if scaler is None or not scaler.is_enabled():
        optimizer.step()
        return
    scaler.step(optimizer)
    scaler.update()


# -- process-wide GPU settings ---------------------------------------------------------------


def _flag(name: str, default: bool) -> bool:
    value = os.environ.get(name, "").strip().lower()
    if not value:
        return default
    return value not in ("0", "off", "false", "no")


def runtime_settings() -> dict:
    """The settings ``configure_runtime`` applies, from the environment (so worker processes,
    Ray actors and Slurm jobs inherit the run's choice)."""
    deterministic = _flag(DETERMINISTIC_ENV, False)
    return {
        "deterministic": deterministic,
        "cudnn_benchmark": not deterministic,
        "tf32": _flag(TF32_ENV, True),
    }


def configure_runtime() -> dict:
    """Apply ``runtime_settings()`` to this process (idempotent) and return them."""
    settings = runtime_settings()
    if settings["deterministic"]:
        # cuBLAS reads it when its handle is created: before the first CUDA matmul.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = settings["cudnn_benchmark"]
    torch.backends.cuda.matmul.allow_tf32 = settings["tf32"]
    torch.backends.cudnn.allow_tf32 = settings["tf32"]
    return settings


def gpu_info(device: torch.device) -> dict:
    """What a record says about the GPU: name, compute capability, native bf16."""
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return {}
    major, minor = torch.cuda.get_device_capability(device)
    return {
        "gpu": torch.cuda.get_device_name(device),
        "compute_capability": f"{major}.{minor}",
        "bf16_native": (major, minor) >= (8, 0),
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
    }


def memory_format(device: torch.device) -> torch.memory_format:
    # channels_last pays on CUDA tensor cores and on CPU too: oneDNN's NHWC kernels trained
    # efficientnet-lite0 at 64 px 1.56x faster here (2.5x for a frozen-prefix suffix).
    return torch.channels_last


def to_host(tensor: torch.Tensor) -> torch.Tensor:
    """A CPU copy of ``tensor`` that does not wait for the device: a CUDA tensor is copied
    asynchronously into pinned memory, so the next batch's forward is queued before this one's
    copy ends (``.cpu()`` would wait for it). Call ``wait_for_host_copies`` before reading."""
    if tensor.device.type != "cuda":
        return tensor.cpu()
    host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
    return host.copy_(tensor, non_blocking=True)


def wait_for_host_copies(device: torch.device) -> None:
    """Block until the copies ``to_host`` queued on ``device``'s current stream have landed."""
    if device.type == "cuda":
        torch.cuda.current_stream(device).synchronize()


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


# The largest batch found to fit, per (model, input size, ...) key, for this process: the search
# for it runs once, and later cells of the same model start there instead of failing again.
_FITTED: dict = {}


def fitted_batch(key, requested: int) -> int:
    """The batch to start with for ``key``: ``requested``, or less when an earlier call with
    the same key ran out of memory at ``requested``."""
    if key is None:
        return requested
    return min(requested, _FITTED.get(key, requested))


def remember_fitted(key, batch_size: int) -> None:
    """Record that ``key`` ran out of memory above ``batch_size`` (later ``fitted_batch``
    calls with ``key`` start at most there)."""
    if key is not None:
        _FITTED[key] = min(int(batch_size), _FITTED.get(key, int(batch_size)))


def accumulation_steps(requested: int, fitted: int) -> int:
    """Micro-batches of ``fitted`` per optimiser step that keep the effective batch at
    ``requested`` (so an out-of-memory retry leaves the recipe, learning rate included, as it was)."""
    return max(1, -(-int(requested) // max(1, int(fitted))))


def with_oom_retry(
    fn: Callable[[int], T], batch_size: int, *, minimum: int = 1, key=None
) -> tuple[T, int]:
    """Call ``fn(batch_size)``, halving the batch size on out-of-memory until it fits.

    With ``key`` (e.g. the model's fingerprint and input size), the batch that fits is
    remembered for the process and later calls with the same key start there. Returns the
    result and the batch size that worked (recorded in the cell's cost).
    """
    batch_size = fitted_batch(key, batch_size)
    while True:
        try:
            result = fn(batch_size)
        except Exception as exc:
            if not is_oom(exc) or batch_size <= minimum:
                raise
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            smaller = max(minimum, batch_size // 2)
            logger.info("out of memory at batch %d; retrying at %d", batch_size, smaller)
            batch_size = smaller
            remember_fitted(key, batch_size)
            continue
        return result, batch_size


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
    (another instruction set, thread count, the depthwise patch, TF32, a GPU without native bf16)
    explains a difference in floats."""
    from tlbench.engine.depthwise import enabled as depthwise_enabled

    device = torch.device(device)
    info = {
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "depthwise_grad_patch": device.type == "cpu" and depthwise_enabled(),
        "precision_auto": resolve_precision("auto", device),
        "deterministic": torch.are_deterministic_algorithms_enabled(),
    }
    if device.type == "cuda":
        info.update(
            cudnn_benchmark=torch.backends.cudnn.benchmark,
            tf32=torch.backends.cuda.matmul.allow_tf32,
            **gpu_info(device),
        )
    return info
