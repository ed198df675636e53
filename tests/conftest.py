"""Shared test settings: a tiny ViT at 64 px so that end-to-end runs take seconds on 2 cores."""

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach for the network

TINY_MODEL = {
    "backbone": "vit_tiny_patch16_224",
    "backbone_kwargs": {"depth": 2, "embed_dim": 32, "num_heads": 2, "patch_size": 8},
    "image_size": 64,
    "blocks": [1, 2],
    "decoder_depth": 1,
    "decoder_heads": 2,
    "smoothing_sigma": 1.0,
}


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors: one thread is faster than several, and leaves the other core to the rest."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def tiny_model_fields() -> dict:
    return dict(TINY_MODEL)


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory):
    """A small synthetic dataset (MVTec layout, 64 px) shared by the end-to-end tests."""
    from agpnet.data.synth import write_synthetic_dataset

    return write_synthetic_dataset(
        tmp_path_factory.mktemp("synth"), seed=0, image_size=64, n_train=8, n_test=6
    )
