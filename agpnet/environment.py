"""What a run ran on, and when: package versions, device, machine and timestamps (for the run
record, sweeps and reports). Torch is imported by the functions that need it only, so that
the torch-free commands (sweep, report, --help) start fast."""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

PACKAGES = ("agpnet", "torch", "timm", "numpy", "scipy", "scikit-learn", "pandas", "papermill")


def timestamp() -> str:
    """Local time with its UTC offset, to the second (ISO 8601), e.g. 2026-11-28T20:21:09+00:00."""
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


def package_version(name: str) -> str | None:
    """The installed version of a distribution, or None."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


PACKAGE_DIR = Path(__file__).resolve().parent


def source_revision(source: Path = PACKAGE_DIR) -> str | None:
    """The git commit of the agpnet code that runs, with "+dirty" when its checkout has changes;
    None outside a git checkout (an installed wheel) or without git."""
    def git(*args: str) -> str:
        done = subprocess.run(["git", "-C", str(source), *args], capture_output=True, text=True, timeout=10,
                              check=True)
        return done.stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no", "--", ".")
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("+dirty" if dirty else "")


def machine() -> str:
    return f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs"


def describe_environment(device: torch.device | None = None) -> dict:
    import torch

    versions = {"python": platform.python_version(), **{p: package_version(p) for p in PACKAGES},
                "agpnet_commit": source_revision()}
    gpu = gpu_index = None
    if device is not None and device.type == "cuda":
        gpu = torch.cuda.get_device_name(device)
        index = device.index if device.index is not None else torch.cuda.current_device()
        gpu_index = _physical_gpu_index(index)
    try:
        fraction = float(os.environ["AGPNET_GPU_FRACTION"])
    except (KeyError, ValueError):  # not a sweep cell, or not a number: nothing to record
        fraction = None
    return {
        **versions,
        "device": str(device) if device is not None else None,
        "gpu": gpu,
        "gpu_index": gpu_index,
        "gpu_fraction": fraction,  # a sweep cell's share of its GPU (Ray)
        "executor": os.environ.get("AGPNET_EXECUTOR"),  # the sweep executor of a cell ("local", "ray")
        "hostname": platform.node(),
        "machine": machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "command": " ".join(sys.argv),
    }


def _physical_gpu_index(index: int) -> str:
    """The machine's index of visible CUDA device `index` (CUDA_VISIBLE_DEVICES, as Ray sets it,
    renumbers them)."""
    visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    return visible[index] if index < len(visible) else str(index)
