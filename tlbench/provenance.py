"""What produced a number: package versions, the git revision and the hardware.

``capture()`` is what ``env.json`` records about the machine (``tlbench.rundir`` writes it);
``hardware()`` names everything a result's last digits depend on.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

CORE_PACKAGES = (
    "tlbench",
    "torch",
    "torchvision",
    "timm",
    "numpy",
    "pandas",
    "scikit-learn",
    "pluggy",
    "safetensors",
    "peft",
)
# CPU features that change which kernels torch (oneDNN, MKL) runs, and so the last bits of floats.
_CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile", "amx_bf16")
# Environment variables that change threading or the BLAS kernel choice.
_ENV_KNOBS = (
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "OPENBLAS_CORETYPE",
    "ONEDNN_MAX_CPU_ISA",
    "ATEN_CPU_CAPABILITY",
    "TLBENCH_DEPTHWISE_GRAD",
)


def capture() -> dict:
    """Package versions, git revision and hardware, as ``env.json`` records them."""
    return {
        "packages": package_versions(CORE_PACKAGES),
        "git_revision": git_revision(),
        "hardware": hardware(),
    }


def package_versions(names: Iterable[str]) -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    versions = {}
    for name in names:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            continue
    return versions


def git_revision() -> str | None:
    root = Path(__file__).resolve().parent.parent
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if rev.returncode != 0:
        return None
    return rev.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def cpu_description() -> dict:
    """The CPU model and the instruction-set features that decide which kernels run."""
    info: dict = {"model": platform.processor() or platform.machine()}
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return info
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name":
            info["model"] = value.strip()
        elif key == "flags":
            flags = set(value.split())
            info["flags"] = [f for f in _CPU_FLAGS if f in flags]
            break
    return info


def hardware() -> dict:
    """What a number's last digits depend on: CPU model and instruction set, the kernels torch
    dispatches to, threads, the GPU, and the environment knobs that change any of these."""
    info: dict = {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu": cpu_description(),
        "cpu_count": os.cpu_count(),
        "python": sys.version.split()[0],
        "env": {k: os.environ[k] for k in _ENV_KNOBS if k in os.environ},
    }
    try:
        import torch

        from tlbench.engine.depthwise import enabled as depthwise_enabled
    except ImportError:
        return info
    info["torch_threads"] = torch.get_num_threads()
    info["torch_interop_threads"] = torch.get_num_interop_threads()
    info["torch_cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    info["mkldnn"] = torch.backends.mkldnn.is_available()
    info["depthwise_grad_patch"] = depthwise_enabled()
    if torch.cuda.is_available():
        info["cuda"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        info["cuda_version"] = torch.version.cuda
        info["cudnn_version"] = torch.backends.cudnn.version()
    return info
