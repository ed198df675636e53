"""Where computation runs: data-loader workers."""

import pytest
import torch

from agpnet.errors import AgpnetError


def test_loader_workers_use_the_cpus_a_cell_was_given(monkeypatch):
    """On CUDA, one decoding worker per usable CPU but one (at most 16); a sweep's --cpus-per-cell
    share (threads_env) bounds them; the CPU device decodes in the main process."""
    from agpnet.runtime import MAX_LOADER_WORKERS, loader_workers
    from agpnet.sweep import threads_env

    cuda = torch.device("cuda")
    for share, expected in ((1, 1), (4, 3), (64, MAX_LOADER_WORKERS)):
        for name, value in threads_env(share).items():
            monkeypatch.setenv(name, value)
        assert loader_workers(None, cuda) == expected
    assert loader_workers(6, cuda) == 6  # as configured
    assert loader_workers(None, torch.device("cpu")) == 0
    monkeypatch.delenv("AGPNET_CPUS")
    assert 1 <= loader_workers(None, cuda) <= MAX_LOADER_WORKERS
    monkeypatch.setenv("AGPNET_CPUS", "two")
    with pytest.raises(AgpnetError, match="AGPNET_CPUS='two': expected a whole number"):
        loader_workers(None, cuda)


def test_compile_auto_compiles_long_cuda_runs_only():
    """compile: auto (None) compiles on CUDA from COMPILE_MIN_IMAGES training images on; never on
    the CPU; true/false are obeyed."""
    from agpnet.runtime import COMPILE_MIN_IMAGES, use_compile

    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    mvtec_500_epochs = 3629 * 500
    assert use_compile(None, cuda, mvtec_500_epochs)
    assert not use_compile(None, cuda, COMPILE_MIN_IMAGES - 1)
    assert not use_compile(None, cpu, mvtec_500_epochs)
    assert use_compile(True, cpu, 1) and not use_compile(False, cuda, mvtec_500_epochs)


def test_compile_field_reads_auto_true_and_false():
    from agpnet.config import RunConfig

    base = {"dataset": "mvtec", "root": "data/synth", "setting": "multi-class"}
    assert RunConfig.from_flat(base).train.compile is None  # the default: auto
    for given, expected in (("auto", None), ("true", True), ("false", False), (True, True), (False, False)):
        assert RunConfig.from_flat({**base, "compile": given}).train.compile is expected
    with pytest.raises(AgpnetError, match="config field 'compile': got 'maybe'; expected true, false or auto"):
        RunConfig.from_flat({**base, "compile": "maybe"})
