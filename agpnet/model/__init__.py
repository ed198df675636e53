"""AGPNet model: frozen ViT encoder, ViT decoder, attention-guided perturbation (docs/method.md)."""

from agpnet.model.agpnet import AGPNet, build_model
from agpnet.model.config import AGPNetConfig

__all__ = ["AGPNet", "AGPNetConfig", "build_model"]
