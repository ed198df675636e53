"""Where computation runs: data-loader workers, and whether training is compiled."""

import pytest
import torch

from agpnet import runtime
from agpnet.config import RunConfig
from agpnet.errors import AgpnetError
from agpnet.runtime import (
    COMPILE_MIN_IMAGES,
    MAX_LOADER_WORKERS,
    MIN_LOADER_WORKERS,
    loader_workers,
    use_compile,
)
from agpnet.sweep import threads_env

CUDA, CPU = torch.device("cuda"), torch.device("cpu")


def test_loader_workers_use_the_cpus_a_cell_was_given(monkeypatch):
    """On CUDA, one decoding worker per usable CPU but one, never fewer than the old default of 4
    (unless the machine has fewer CPUs) nor more than 16; a sweep's --cpus-per-cell share
    (threads_env) sets the usable CPUs; the CPU device decodes in the main process."""
    for machine, share, expected in ((16, None, 15), (64, None, MAX_LOADER_WORKERS), (16, 1, MIN_LOADER_WORKERS),
                                     (16, 9, 8), (2, None, 2), (2, 1, 2), (1, None, 1)):
        monkeypatch.setattr(runtime, "machine_cpus", lambda machine=machine: machine)
        monkeypatch.delenv("AGPNET_CPUS", raising=False)
        for name, value in threads_env(share).items():
            monkeypatch.setenv(name, value)
        assert loader_workers(None, CUDA) == expected, (machine, share)
        assert loader_workers(6, CUDA) == 6  # as configured
        assert loader_workers(None, CPU) == 0
    monkeypatch.setenv("AGPNET_CPUS", "two")
    with pytest.raises(AgpnetError, match="AGPNET_CPUS='two': expected a whole number"):
        loader_workers(None, CUDA)


def test_compile_auto_compiles_long_cuda_runs_only(monkeypatch):
    """compile: auto (None) compiles on CUDA from COMPILE_MIN_IMAGES training images on, where
    torch.compile supports the GPU; never on the CPU; true/false are obeyed."""
    mvtec_500_epochs = 3629 * 500
    monkeypatch.setattr(runtime, "compiler_supports", lambda device: True)
    assert use_compile(None, CUDA, mvtec_500_epochs)
    assert not use_compile(None, CUDA, COMPILE_MIN_IMAGES - 1)
    assert not use_compile(None, CPU, mvtec_500_epochs)
    assert use_compile(True, CPU, 1) and not use_compile(False, CUDA, mvtec_500_epochs)
    monkeypatch.setattr(runtime, "compiler_supports", lambda device: False)  # a GPU older than Volta
    assert not use_compile(None, CUDA, mvtec_500_epochs)


def test_compile_field_reads_true_false_and_auto_only():
    """`--compile none` must not pass for "off": only true, false and auto (any case) are read."""
    base = {"dataset": "mvtec", "root": "data/synth", "setting": "multi-class"}
    assert RunConfig.from_flat(base).train.compile is None  # the default: auto
    for given, expected in (("auto", None), ("AUTO", None), ("true", True), ("false", False), (True, True),
                            (False, False), (None, None)):  # None: a record's JSON null
        assert RunConfig.from_flat({**base, "compile": given}).train.compile is expected, given
    for given in ("maybe", "none", "null"):
        with pytest.raises(AgpnetError, match=f"config field 'compile': got '{given}'; expected true, false or auto"):
            RunConfig.from_flat({**base, "compile": given})
