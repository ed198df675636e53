"""Where and how computation runs at inference and training: device, autocast, loader workers."""

import os

import torch


def loader_workers(num_workers: int | None, device: torch.device) -> int:
    """DataLoader workers: as configured, else min(4, CPUs) on CUDA and 0 (main process) on CPU."""
    if num_workers is not None:
        return num_workers
    return min(4, os.cpu_count() or 1) if device.type == "cuda" else 0


def autocast(amp: str, device: torch.device) -> torch.autocast:
    """bf16 autocast for amp="bf16", or for amp="auto" on CUDA; a disabled context otherwise."""
    enabled = amp == "bf16" or (amp == "auto" and device.type == "cuda")
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)
