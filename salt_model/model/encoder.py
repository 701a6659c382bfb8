"""ResNet18/34 encoder with torchvision's parameter names, for a 1-channel 128x128 U-Net.

He et al., "Deep Residual Learning for Image Recognition", CVPR 2016 (BasicBlock ResNets). Parameter
names match torchvision's ``resnet18``/``resnet34`` exactly (``conv1.weight``, ``bn1.*``,
``layer1.0.conv1.weight``, ``layer2.0.downsample.0.weight``, ...; there is no ``fc``), so ImageNet
weights load by name with ``load_torchvision_weights``.

Stems (``stem``):

- ``imagenet``: torchvision's 7x7 stride-2 conv1, with the initial 3x3 max-pool dropped, as in the
  ResNet34 U-Net of the 4th-place TGS solution (SeuTao; it follows Heng CherKeng's public ResNet34
  U-Net baseline): a 128x128 tile gives features at strides 2, 4, 8, 16 (64, 32, 16 and 8 pixels).
  The max-pool has no parameters, so every name and shape is torchvision's.
- ``full``: a 3x3 stride-1 conv1 and no pooling, so layer1 works at the full 128x128 resolution and the
  features come at strides 1, 2, 4, 8 (the full-resolution encoders several top TGS solutions used at
  this small input size). Names are unchanged; only ``conv1.weight`` has another shape, so ImageNet
  weights load for layer1..layer4 while conv1 and bn1 keep their fresh initialisation.

``width`` scales every channel count (64 * width, rounded to a multiple of 8, at least 8) for
CPU-sized runs; only width 1.0 can load ImageNet weights.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
import torch.nn as nn

from salt_model.io import load_torch_dict

LAYERS = {"resnet18": (2, 2, 2, 2), "resnet34": (3, 4, 6, 3)}
STEMS = ("imagenet", "full")


def scaled(channels: int, width: float) -> int:
    """channels * width rounded to a multiple of 8, at least 8 (64 -> 16 at width 0.25)."""
    return max(8, int(round(channels * width / 8)) * 8)


class BasicBlock(nn.Module):
    """Two 3x3 convs with an identity (or 1x1-conv ``downsample``) shortcut; torchvision's names."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.downsample = None
        if stride != 1 or in_ch != out_ch:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False), nn.BatchNorm2d(out_ch)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNetEncoder(nn.Module):
    """ResNet18/34 trunk without max-pool and fc; returns layer1..layer4 features.

    forward: (B, 1, H, W) -> [(B, c1, H/2, W/2), (B, c2, H/4, W/4), (B, c3, H/8, W/8), (B, c4, H/16, W/16)]
    with the imagenet stem (sizes round up for odd inputs: 101 -> 51, 26, 13, 7), or strides 1, 2, 4, 8
    with the full stem; ``strides`` says which.
    """

    def __init__(
        self, name: str = "resnet34", width: float = 1.0, in_channels: int = 1, stem: str = "imagenet"
    ):
        super().__init__()
        if name not in LAYERS:
            raise ValueError(f"encoder {name!r} is not supported; choose one of {list(LAYERS)}")
        if stem not in STEMS:
            raise ValueError(f"encoder stem {stem!r} is not supported; choose one of {list(STEMS)}")
        if not 0 < width <= 4:
            raise ValueError(f"encoder width={width!r} is out of range; expected a multiplier in (0, 4]")
        self.name, self.width, self.stem = name, width, stem
        stem_ch = scaled(64, width)
        if stem == "full":
            self.conv1 = nn.Conv2d(in_channels, stem_ch, 3, stride=1, padding=1, bias=False)
            self.strides = (1, 2, 4, 8)
        else:
            self.conv1 = nn.Conv2d(in_channels, stem_ch, 7, stride=2, padding=3, bias=False)
            self.strides = (2, 4, 8, 16)
        self.bn1 = nn.BatchNorm2d(stem_ch)
        self.relu = nn.ReLU(inplace=True)
        channels = [scaled(c, width) for c in (64, 128, 256, 512)]
        in_ch = stem_ch
        for i, (blocks, out_ch) in enumerate(zip(LAYERS[name], channels, strict=True)):
            stride = 1 if i == 0 else 2
            layer = [BasicBlock(in_ch, out_ch, stride)] + [
                BasicBlock(out_ch, out_ch) for _ in range(blocks - 1)
            ]
            self.add_module(f"layer{i + 1}", nn.Sequential(*layer))
            in_ch = out_ch
        self.out_channels = tuple(channels)
        for m in self.modules():  # torchvision's initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.relu(self.bn1(self.conv1(x)))  # (B, c0, H/s, W/s), s = strides[0]; no max-pool
        features = []
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = layer(x)
            features.append(x)
        return features


def load_torchvision_weights(encoder: ResNetEncoder, path: str | Path) -> ResNetEncoder:
    """Loads a local torchvision ImageNet ResNet state_dict (.pth) into ``encoder``; nothing is downloaded.

    ``fc.*`` is dropped and conv1's RGB filters are folded into one grayscale channel by summing over the
    input-channel axis (a gray image replicated to RGB gives the same response). Old torchvision files
    lack ``num_batches_tracked``; those counters are set to 0. A ``full`` stem's 3x3 stride-1 conv1 has
    no ImageNet counterpart: conv1 and bn1 are skipped (they keep their initialisation, with a warning)
    and layer1..layer4 load.
    """
    path = Path(path)
    if encoder.width != 1.0:
        raise ValueError(
            f"cannot load {path} into a {encoder.name} encoder of width {encoder.width}: ImageNet weights "
            "only fit width 1.0 (set model.width=1.0 or model.encoder_weights=null)"
        )
    if not path.is_file():
        raise ValueError(f"encoder weights {path}: no such file (expected a local torchvision .pth)")
    state = load_torch_dict(path, "encoder weights", "torch state_dict")
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    if "conv1.weight" in state and state["conv1.weight"].ndim == 4 and state["conv1.weight"].shape[1] == 3:
        state["conv1.weight"] = state["conv1.weight"].sum(
            dim=1, keepdim=True
        )  # (64, 3, 7, 7) -> (64, 1, 7, 7)
    expected = encoder.state_dict()
    if encoder.stem == "full":
        skipped = sorted(k for k in state if k.startswith(("conv1.", "bn1.")))
        state = {k: v for k, v in state.items() if k not in skipped}
        state.update({k: v for k, v in expected.items() if k.startswith(("conv1.", "bn1."))})
        warnings.warn(
            f"encoder weights {path}: conv1 and bn1 ({len(skipped)} tensors) not loaded: the full "
            "stem's 3x3 stride-1 conv1 has no ImageNet counterpart; layer1..layer4 are loaded",
            stacklevel=2,
        )
    for key in expected:
        if key.endswith("num_batches_tracked") and key not in state:
            state[key] = torch.zeros_like(expected[key])
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = sorted(
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in set(expected) & set(state)
        if state[k].shape != expected[k].shape
    )
    if missing or unexpected or mismatched:
        raise ValueError(
            f"encoder weights {path} do not fit a {encoder.name} encoder: missing keys {missing}, "
            f"unexpected keys {unexpected}, mismatched shapes {mismatched} "
            f"(is it a torchvision {encoder.name} state_dict?)"
        )
    encoder.load_state_dict(state, strict=True)
    return encoder
