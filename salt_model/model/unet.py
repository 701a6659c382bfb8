"""SaltUNet: ResNet18/34 U-Net with scSE, hypercolumn, an empty-mask head and optional deep supervision.

The recipe of the top TGS Salt solutions (4th place SeuTao; Heng CherKeng's public baseline; 1st place
b.e.s. & phalanx): a ResNet34 encoder without the first max-pool (see ``encoder.py``), decoder blocks
with scSE (Roy et al. 2018), a hypercolumn that concatenates every decoder stage upsampled to the
input size before the final conv (Hariharan et al., CVPR 2015, arXiv:1411.5752), an image-level
"mask is empty" classifier on the deepest features and optional deep supervision (per-stage logits).

The model returns logits only; the sigmoid is applied at prediction time.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from salt_model.config import ModelConfig
from salt_model.model.blocks import DecoderBlock
from salt_model.model.encoder import ResNetEncoder, scaled

# Input normalisation, inside the model so every caller feeds float pixels in [0, 1]. The TGS pixel
# mean is ~120/255 and the typical per-image std ~28/255; using the per-image std (not the larger
# dataset-wide one) puts a tile's own contrast at unit scale, as ImageNet normalisation does.
PIXEL_MEAN = 120.0 / 255.0
PIXEL_STD = 28.0 / 255.0


class SaltUNet(nn.Module):
    """forward(x (B, 1, H, W) float in [0, 1]) -> (mask_logits (B, 1, H, W), empty_logits (B,) or None),
    plus a list of deep-supervision logits, each (B, 1, H, W), when training with cfg.deep_supervision.

    Any H, W works (decoder sizes follow the skips); 128x128 (101 reflect-padded) is the main one.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.register_buffer("mean", torch.tensor(PIXEL_MEAN).view(1, 1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(PIXEL_STD).view(1, 1, 1, 1), persistent=False)
        self.encoder = ResNetEncoder(cfg.encoder, cfg.width, in_channels=1, stem=cfg.stem)
        c1, c2, c3, c4 = self.encoder.out_channels
        d = scaled(64, cfg.width)  # every decoder stage has d channels (64 at width 1, as in Heng's U-Net)
        # Skips, deepest first: layer3, layer2, layer1 (H/8, H/4, H/2 with the imagenet stem; H/4, H/2, H
        # with the full stem), then the normalised input (H) when layer1 is below full resolution.
        self.input_skip = self.encoder.strides[0] > 1
        blocks = [DecoderBlock(c4, c3, d, cfg.scse), DecoderBlock(d, c2, d, cfg.scse)]
        blocks.append(DecoderBlock(d, c1, d, cfg.scse))
        if self.input_skip:
            blocks.append(DecoderBlock(d, 1, d, cfg.scse))
        self.decoder = nn.ModuleList(blocks)
        head_in = d * len(self.decoder) if cfg.hypercolumn else d
        self.dropout = nn.Dropout(cfg.dropout)
        k = cfg.head_kernel  # 3, or 1: a 1x1 conv over the hypercolumn (~9x fewer MACs in that layer)
        self.head = nn.Sequential(
            nn.Conv2d(head_in, d, k, padding=k // 2), nn.ReLU(inplace=True), nn.Conv2d(d, 1, 1)
        )
        self.empty_head = None
        if cfg.empty_head:
            # one Linear, or the 1st-place classifier GAP -> Linear(c4, N) -> ELU -> Linear(N, 1)
            n = cfg.empty_hidden
            classifier = (
                [nn.Linear(c4, n), nn.ELU(inplace=True), nn.Linear(n, 1)] if n else [nn.Linear(c4, 1)]
            )
            self.empty_head = nn.Sequential(
                nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(cfg.dropout), *classifier
            )
        self.aux_heads = None
        if cfg.deep_supervision:
            self.aux_heads = nn.ModuleList([nn.Conv2d(d, 1, 1) for _ in self.decoder])

    def forward(self, x: torch.Tensor):
        if x.ndim != 4 or x.shape[1] != 1 or not x.is_floating_point():
            raise ValueError(
                f"SaltUNet expects a float tensor (B, 1, H, W) with pixels in [0, 1], got "
                f"{x.dtype} {tuple(x.shape)} (convert uint8 images with x.float() / 255)"
            )
        size = x.shape[-2:]
        x = (x - self.mean) / self.std  # (B, 1, H, W)
        f1, f2, f3, f4 = self.encoder(x)  # (B, c1, H/2, W/2) ... (B, c4, H/16, W/16); full stem: H ... H/8
        skips = (f3, f2, f1, x) if self.input_skip else (f3, f2, f1)
        stages, y = [], f4
        for block, skip in zip(self.decoder, skips, strict=True):
            y = block(y, skip)  # (B, d, *skip's H, W): the size follows the skip, never a fixed factor
            stages.append(y)
        if self.cfg.hypercolumn:
            y = torch.cat([_resize(s, size) for s in stages], dim=1)  # (B, len(stages) * d, H, W)
        mask_logits = self.head(self.dropout(y))  # (B, 1, H, W)
        empty_logits = None if self.empty_head is None else self.empty_head(f4).squeeze(1)  # (B,)
        if self.aux_heads is not None and self.training:
            # one (B, 1, H, W) logit map per decoder stage, upsampled to the input size
            aux = [_resize(head(s), size) for head, s in zip(self.aux_heads, stages, strict=True)]
            return mask_logits, empty_logits, aux
        return mask_logits, empty_logits


def _resize(x: torch.Tensor, size: torch.Size) -> torch.Tensor:
    if x.shape[-2:] == size:
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)
