"""Model tests: shapes, torchvision names, weight loading, blocks, and a tiny overfit sanity check."""

import itertools

import pytest
import torch

from salt_model.config import ModelConfig, TrainConfig
from salt_model.model import (
    SCSE,
    DecoderBlock,
    ResNetEncoder,
    SaltUNet,
    build_model,
    load_torchvision_weights,
)
from salt_model.training.losses import compute_loss

torch.set_num_threads(2)


def _bn(prefix, n):
    return {
        f"{prefix}.weight": (n,),
        f"{prefix}.bias": (n,),
        f"{prefix}.running_mean": (n,),
        f"{prefix}.running_var": (n,),
        f"{prefix}.num_batches_tracked": (),
    }


def torchvision_layout(name, in_ch=3, fc=True):
    """Key -> shape of torchvision's resnet18/34 state_dict, written out from its BasicBlock layout."""
    keys = {"conv1.weight": (64, in_ch, 7, 7), **_bn("bn1", 64)}
    in_c = 64
    blocks = {"resnet18": (2, 2, 2, 2), "resnet34": (3, 4, 6, 3)}[name]
    for i, (n, c) in enumerate(zip(blocks, (64, 128, 256, 512), strict=True)):
        for b in range(n):
            p = f"layer{i + 1}.{b}"
            keys[f"{p}.conv1.weight"] = (c, in_c if b == 0 else c, 3, 3)
            keys.update(_bn(f"{p}.bn1", c))
            keys[f"{p}.conv2.weight"] = (c, c, 3, 3)
            keys.update(_bn(f"{p}.bn2", c))
            if b == 0 and i > 0:
                keys[f"{p}.downsample.0.weight"] = (c, in_c, 1, 1)
                keys.update(_bn(f"{p}.downsample.1", c))
        in_c = c
    if fc:
        keys.update({"fc.weight": (1000, 512), "fc.bias": (1000,)})
    return keys


def tiny(**kw):
    return ModelConfig(**{"encoder": "resnet18", "width": 0.25, **kw})


@pytest.mark.parametrize("encoder", ["resnet18", "resnet34"])
@pytest.mark.parametrize("hyper,empty,deep", list(itertools.product([True, False], repeat=3)))
def test_output_shapes(encoder, hyper, empty, deep):
    cfg = ModelConfig(
        encoder=encoder,
        width=0.25,
        hypercolumn=hyper,
        empty_head=empty,
        deep_supervision=deep,
        scse=hyper,
        dropout=0.1,
    )
    model = SaltUNet(cfg)
    x = torch.rand(2, 1, 32, 32)
    out = model.train()(x)
    assert len(out) == (3 if deep else 2)
    assert out[0].shape == (2, 1, 32, 32)
    assert (out[1].shape == (2,)) if empty else (out[1] is None)
    if deep:
        assert len(out[2]) == 4 and all(a.shape == (2, 1, 32, 32) for a in out[2])
    with torch.no_grad():
        out = model.eval()(x)
    assert len(out) == 2 and out[0].shape == (2, 1, 32, 32)


@pytest.mark.parametrize("size", [128, 96, 101, 75])
def test_any_input_size(size):
    model = SaltUNet(tiny(deep_supervision=True)).eval()
    with torch.no_grad():
        mask, empty = model(torch.rand(1, 1, size, size))
    assert mask.shape == (1, 1, size, size) and empty.shape == (1,)


def test_encoder_strides_drop_maxpool():
    feats = ResNetEncoder("resnet34", 0.25)(torch.rand(1, 1, 128, 128))
    assert [f.shape[-1] for f in feats] == [64, 32, 16, 8]
    assert [f.shape[1] for f in feats] == [16, 32, 64, 128]


def test_channels_last():
    model = SaltUNet(tiny()).to(memory_format=torch.channels_last).eval()
    x = torch.rand(2, 1, 64, 64).to(memory_format=torch.channels_last)
    with torch.no_grad():
        mask, _ = model(x)
        ref, _ = model.to(memory_format=torch.contiguous_format)(x.contiguous())
    assert torch.allclose(mask, ref, atol=1e-4)


def test_bad_input_raises():
    model = SaltUNet(tiny())
    with pytest.raises(ValueError, match="float"):
        model(torch.zeros(1, 1, 64, 64, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\)"):
        model(torch.rand(1, 3, 64, 64))


@pytest.mark.parametrize("name,params,keys", [("resnet18", 60, 120), ("resnet34", 108, 216)])
def test_encoder_names_match_torchvision(name, params, keys):
    enc = ResNetEncoder(name, 1.0)
    state = enc.state_dict()
    expected = torchvision_layout(name, in_ch=1, fc=False)
    assert len(list(enc.named_parameters())) == params
    assert len(state) == keys == len(expected)
    assert {k: tuple(v.shape) for k, v in state.items()} == expected
    assert state["layer4.2.conv2.weight" if name == "resnet34" else "layer4.1.conv2.weight"].shape == (
        512,
        512,
        3,
        3,
    )
    assert state["layer2.0.downsample.1.running_var"].shape == (128,)
    assert not any(k.startswith("fc.") for k in state)
    assert sum(p.numel() for p in enc.parameters()) == {"resnet18": 11_170_240, "resnet34": 21_278_400}[name]


def test_width_scales_channels():
    enc = ResNetEncoder("resnet34", 0.25)
    assert enc.out_channels == (16, 32, 64, 128)
    assert ResNetEncoder("resnet18", 0.05).out_channels == (8, 8, 16, 24)
    assert set(enc.state_dict()) == set(ResNetEncoder("resnet34", 1.0).state_dict())


def _fake_torchvision(name, tmp_path, drop_nbt=False):
    g = torch.Generator().manual_seed(0)
    state = {
        k: (torch.tensor(7) if not s else torch.randn(s, generator=g))
        for k, s in torchvision_layout(name).items()
        if not (drop_nbt and k.endswith("num_batches_tracked"))
    }
    path = tmp_path / f"{name}.pth"
    torch.save(state, path)
    return state, path


@pytest.mark.parametrize("drop_nbt", [False, True])
def test_load_torchvision_round_trip(tmp_path, drop_nbt):
    state, path = _fake_torchvision("resnet34", tmp_path, drop_nbt)
    model = build_model(ModelConfig(encoder="resnet34", width=1.0, encoder_weights=str(path)))
    loaded = model.encoder.state_dict()
    assert torch.equal(loaded["conv1.weight"], state["conv1.weight"].sum(dim=1, keepdim=True))
    assert loaded["conv1.weight"].shape == (64, 1, 7, 7)
    for k, v in loaded.items():
        if k == "conv1.weight":
            continue
        if k.endswith("num_batches_tracked") and drop_nbt:
            assert v.item() == 0
        else:
            assert torch.equal(v, state[k]), k


def test_load_rejects_width(tmp_path):
    _, path = _fake_torchvision("resnet18", tmp_path)
    with pytest.raises(ValueError, match=r"resnet18\.pth.*width 0\.5.*only fit width 1\.0"):
        load_torchvision_weights(ResNetEncoder("resnet18", 0.5), path)


def test_load_rejects_mismatched_file(tmp_path):
    _, path = _fake_torchvision("resnet18", tmp_path)
    with pytest.raises(ValueError, match=r"missing keys \['layer1\.2\.bn1\.bias'"):
        load_torchvision_weights(ResNetEncoder("resnet34", 1.0), path)
    state = torch.load(path, weights_only=True)
    state["layer1.0.conv1.weight"] = torch.zeros(64, 64, 5, 5)
    state["extra.weight"] = torch.zeros(1)
    torch.save(state, path)
    with pytest.raises(
        ValueError, match=r"unexpected keys \['extra\.weight'\].*layer1\.0\.conv1\.weight: file"
    ):
        load_torchvision_weights(ResNetEncoder("resnet18", 1.0), path)
    (tmp_path / "junk.pth").write_text("not a checkpoint")
    with pytest.raises(ValueError, match="junk.pth"):
        load_torchvision_weights(ResNetEncoder("resnet18", 1.0), tmp_path / "junk.pth")


def test_scse_preserves_shape():
    x = torch.randn(2, 24, 9, 7)
    assert SCSE(24).eval()(x).shape == x.shape


@pytest.mark.parametrize("scse", [True, False])
def test_decoder_follows_skip_size(scse):
    block = DecoderBlock(16, 8, 12, scse=scse)
    out = block(torch.randn(2, 16, 7, 7), torch.randn(2, 8, 13, 13))
    assert out.shape == (2, 12, 13, 13)
    out = block(torch.randn(2, 16, 26, 26), torch.randn(2, 8, 51, 51))
    assert out.shape == (2, 12, 51, 51)


def test_overfits_single_batch():
    torch.manual_seed(0)
    model = SaltUNet(tiny(empty_head=True)).train()
    x = torch.rand(4, 1, 32, 32)
    yy, xx = torch.meshgrid(torch.arange(32), torch.arange(32), indexing="ij")
    masks = torch.stack(
        [
            (yy > 15).float(),
            ((xx - 16) ** 2 + (yy - 10) ** 2 < 50).float(),
            torch.zeros(32, 32),
            (xx < 10).float(),
        ]
    ).unsqueeze(1)
    x = (x * 0.3 + masks * 0.4).clamp(0, 1)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    cfg = TrainConfig(loss_switch_epoch=4)  # = epochs: BCE only
    losses = []
    for _ in range(30):
        loss, _ = compute_loss(model(x), masks, epoch=0, cfg=cfg)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] / 10, losses


def test_full_resolution_stem():
    """model.stem=full: 3x3 stride-1 conv1, no pooling, so layer1 sees the whole 128x128 tile."""
    feats = ResNetEncoder("resnet34", 0.25, stem="full")(torch.rand(1, 1, 128, 128))
    assert [f.shape[-1] for f in feats] == [128, 64, 32, 16]
    model = SaltUNet(tiny(stem="full", deep_supervision=True)).eval()
    assert model.encoder.conv1.weight.shape[-2:] == (3, 3) and model.encoder.conv1.stride == (1, 1)
    for size in (128, 101):
        with torch.no_grad():
            mask, empty = model(torch.rand(2, 1, size, size))
        assert mask.shape == (2, 1, size, size) and empty.shape == (2,)
    # layer names are torchvision's, so only the stem differs from the 7x7 model's state_dict
    full = SaltUNet(tiny(stem="full")).encoder.state_dict()
    default = SaltUNet(tiny()).encoder.state_dict()
    assert set(full) == set(default)
    assert [k for k in full if full[k].shape != default[k].shape] == ["conv1.weight"]
    with pytest.raises(ValueError, match=r"model.stem='tiny'.*\['imagenet', 'full'\]"):
        ModelConfig(stem="tiny").validate()


def test_full_stem_loads_imagenet_layers_but_not_conv1(tmp_path):
    state, path = _fake_torchvision("resnet34", tmp_path)
    with pytest.warns(UserWarning, match="conv1.*bn1.*full"):
        model = build_model(
            ModelConfig(encoder="resnet34", width=1.0, stem="full", encoder_weights=str(path))
        )
    loaded = model.encoder.state_dict()
    assert loaded["conv1.weight"].shape == (64, 1, 3, 3)
    for k, v in loaded.items():
        if k.startswith(("conv1.", "bn1.")):
            assert not torch.equal(v, state[k].sum(dim=1, keepdim=True) if k == "conv1.weight" else state[k])
        else:
            assert torch.equal(v, state[k]), k
