"""Where and how computation runs at inference and training: device, autocast, loader workers."""

import os

import torch

from agpnet.errors import AgpnetError


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' -> cuda when available, else cpu; anything else as given (checked: one AgpnetError line)."""
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


def loader_workers(num_workers: int | None, device: torch.device) -> int:
    """DataLoader workers: as configured, else min(4, CPUs) on CUDA and 0 (main process) on CPU."""
    if num_workers is not None:
        return num_workers
    return min(4, os.cpu_count() or 1) if device.type == "cuda" else 0


def autocast(amp: str, device: torch.device) -> torch.autocast:
    """bf16 autocast for amp="bf16", or for amp="auto" on CUDA; a disabled context otherwise."""
    enabled = amp == "bf16" or (amp == "auto" and device.type == "cuda")
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)
