"""Where and how computation runs at inference and training: device, autocast, loader workers,
and whether training is compiled."""

import contextlib
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


# Decoding is what the GPU waits for (MVTec-AD on an H200 host: README "Measured speed").
MIN_LOADER_WORKERS = 4  # the default before it was measured; fewer only on a machine with fewer CPUs
MAX_LOADER_WORKERS = 16


def loader_workers(num_workers: int | None, device: torch.device) -> int:
    """DataLoader workers: as configured; else on CUDA one per usable CPU but one (left to the main
    process), at least MIN_LOADER_WORKERS (or the machine's CPUs) and at most MAX_LOADER_WORKERS;
    on the CPU 0 (decoding in the main process, whose threads the model needs)."""
    if num_workers is not None:
        return num_workers
    if device.type != "cuda":
        return 0
    return max(min(MIN_LOADER_WORKERS, machine_cpus()), min(MAX_LOADER_WORKERS, usable_cpus() - 1))


def usable_cpus() -> int:
    """CPUs this process may use: AGPNET_CPUS when a sweep gave its cell a share of the machine
    (`--cpus-per-cell`), else the machine's CPUs."""
    share = os.environ.get("AGPNET_CPUS", "")
    if share:
        if not share.isdigit() or int(share) < 1:
            raise AgpnetError(f"environment variable AGPNET_CPUS={share!r}: expected a whole number >= 1")
        return int(share)
    return machine_cpus()


def machine_cpus() -> int:
    """The CPUs this process is allowed to run on."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


# Training images (training-set size x epochs) from which `compile: auto` compiles on CUDA: about
# the break-even measured on an H200 at batch 8 (README "Measured speed": 37 s of compilation and
# warm-up against 1.8 ms saved per image).
COMPILE_MIN_IMAGES = 20_000


def use_compile(setting: bool | None, device: torch.device, images: int) -> bool:
    """Whether training runs compiled: as configured (True/False); for None (auto) on a CUDA GPU
    that torch.compile supports when it still trains at least COMPILE_MIN_IMAGES images (`images` =
    training-set size x epochs left)."""
    if setting is not None:
        return setting
    return device.type == "cuda" and images >= COMPILE_MIN_IMAGES and compiler_supports(device)


def compiler_supports(device: torch.device) -> bool:
    """torch.compile's GPU code generator (Triton) needs compute capability 7.0 or newer."""
    return torch.cuda.get_device_capability(device) >= (7, 0)


@contextlib.contextmanager
def exact_fp32():
    """fp32 convolutions and matrix products without TF32 on CUDA (cuDNN runs fp32 convolutions
    in TF32, with a 10-bit mantissa, unless told not to); the flags are restored afterwards. The
    CPU has no TF32: nothing changes there."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def autocast(amp: str, device: torch.device) -> torch.autocast:
    """bf16 autocast for amp="bf16", or for amp="auto" on CUDA; a disabled context otherwise."""
    enabled = amp == "bf16" or (amp == "auto" and device.type == "cuda")
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)
