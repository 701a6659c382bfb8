"""U-Net decoder pieces: conv-bn-relu, scSE attention and a decoder block that follows its skip's size.

scSE: Roy, Navab & Wachinger, "Concurrent Spatial and Channel Squeeze & Excitation in Fully
Convolutional Networks", MICCAI 2018 (arXiv:1803.02579); used in most top TGS decoders.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class ConvBnRelu(nn.Sequential):
    """kxk conv (no bias) -> BatchNorm -> ReLU; keeps H, W."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int = 3):
        super().__init__(
            nn.Conv2d(in_ch, out_ch, kernel_size, padding=kernel_size // 2, bias=False),
            nn.BatchNorm2d(out_ch),
            nn.ReLU(inplace=True),
        )


class SCSE(nn.Module):
    """x * channel gate (cSE, from a global pool) + x * spatial gate (sSE, from a 1x1 conv)."""

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        hidden = max(channels // reduction, 1)
        self.cse = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),  # (B, C, 1, 1)
            nn.Conv2d(channels, hidden, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, channels, 1),
            nn.Sigmoid(),
        )
        self.sse = nn.Sequential(nn.Conv2d(channels, 1, 1), nn.Sigmoid())  # (B, 1, H, W)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.cse(x) + x * self.sse(x)  # (B, C, H, W)


class DecoderBlock(nn.Module):
    """Upsample x to skip's size, concatenate, two conv-bn-relu, optional scSE.

    forward: x (B, in_ch, h, w), skip (B, skip_ch, H, W) -> (B, out_ch, H, W). The size comes from the
    skip tensor, never a fixed factor, so odd inputs (101 -> 51 -> 26 -> 13 -> 7) line up exactly.
    """

    def __init__(self, in_ch: int, skip_ch: int, out_ch: int, scse: bool = True):
        super().__init__()
        self.conv1 = ConvBnRelu(in_ch + skip_ch, out_ch)
        self.conv2 = ConvBnRelu(out_ch, out_ch)
        self.attention = SCSE(out_ch) if scse else nn.Identity()

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)  # (B, in_ch, H, W)
        x = torch.cat([x, skip], dim=1)  # (B, in_ch + skip_ch, H, W)
        return self.attention(self.conv2(self.conv1(x)))  # (B, out_ch, H, W)
