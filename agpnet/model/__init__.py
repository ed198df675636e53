"""AGPNet model: frozen ViT encoder, ViT decoder, attention-guided perturbation (docs/method.md)."""

from agpnet.config import AGPNetConfig
from agpnet.model.agpnet import AGPNet, build_model

__all__ = ["AGPNet", "AGPNetConfig", "build_model"]
