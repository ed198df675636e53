"""What a run ran on: package versions, device and machine (for the run record and reports)."""

import os
import platform
import sys
from importlib import metadata

import torch

from agpnet.errors import AgpnetError

PACKAGES = ("agpnet", "torch", "timm", "numpy", "scipy", "scikit-learn", "pandas", "papermill")


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' -> cuda when available, else cpu; anything else as given."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise AgpnetError(f"--device {name}: not a device; expected auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise AgpnetError(f"--device {name}: CUDA is not available on this machine; use --device cpu")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise AgpnetError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device


def describe_environment(device: torch.device | None = None) -> dict:
    versions = {"python": platform.python_version()}
    for package in PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    gpu = None
    if device is not None and device.type == "cuda":
        gpu = torch.cuda.get_device_name(device)
    return {
        **versions,
        "device": str(device) if device is not None else None,
        "gpu": gpu,
        "machine": f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs",
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "command": " ".join(sys.argv),
    }
