"""The salt U-Net: ResNet encoder (torchvision names), scSE decoder, hypercolumn, empty-mask head."""

from __future__ import annotations

from salt_model.config import ModelConfig
from salt_model.model.blocks import SCSE, ConvBnRelu, DecoderBlock
from salt_model.model.encoder import ResNetEncoder, load_torchvision_weights
from salt_model.model.unet import SaltUNet

__all__ = [
    "SCSE",
    "ConvBnRelu",
    "DecoderBlock",
    "ResNetEncoder",
    "SaltUNet",
    "build_model",
    "load_torchvision_weights",
]


def build_model(cfg: ModelConfig) -> SaltUNet:
    """Builds SaltUNet and, when cfg.encoder_weights is set, loads that local torchvision file into it."""
    model = SaltUNet(cfg)
    if cfg.encoder_weights is not None:
        load_torchvision_weights(model.encoder, cfg.encoder_weights)
    return model
