"""Every command's --help, the shipped configs' models on a real batch, and the precision paths: bf16
autocast on a CPU (what GPU users run) and a real CUDA run where a GPU is at hand."""

from __future__ import annotations

import re
import sys

import numpy as np
import pytest
import torch

from salt_model.config import load_config
from salt_model.data.loading import load_split
from salt_model.model import build_model
from salt_model.training.fold_loop import train_fold
from salt_model.training.losses import compute_loss
from tests.conftest import TINY
from tests.processes import REPO, run_in_one_process

ENTRY_POINTS = [
    "orchestrator.train",
    "orchestrator.tune",
    "orchestrator.predict",
    "orchestrator.report",
    "salt_model.train",
    *sorted(  # the bench scripts, not their library modules
        f"bench.{p.stem}"
        for p in (REPO / "bench").glob("*.py")
        if re.search(r'^if __name__ == "__main__":', p.read_text(), re.M)
    ),
]


def test_every_command_prints_its_help_and_exits_0():
    cases = {module: ([sys.executable, "-m", module, "--help"], None) for module in ENTRY_POINTS}
    seen = run_in_one_process(cases)
    assert sorted(seen) == sorted(ENTRY_POINTS)
    for module, (code, stdout, stderr) in seen.items():
        assert code == 0, f"{module} --help exited {code}: {stderr[-2000:]}"
        assert stdout.startswith("usage: ") and "--help" in stdout, f"{module}: {stdout[:300]!r}"
        assert "Traceback" not in stderr, f"{module}: {stderr[-2000:]}"


@pytest.mark.parametrize("name", ["cpu.yaml", "tgs.yaml"])
def test_shipped_configs_build_their_model_and_train_one_batch(name):
    config = load_config(REPO / "configs" / name)
    if config.model.encoder_weights is not None:  # a local file users provide; the shapes are the test
        config = config.with_overrides({"model.encoder_weights": None})
    torch.manual_seed(0)
    model = build_model(config.model).train()
    size = config.data.pad  # tiles are reflect-padded to this size
    x = torch.rand(2, 1, size, size)
    y = torch.zeros(2, 1, size, size)
    y[0, :, 40:90, 30:80] = 1  # one tile with salt, one empty
    epoch = config.train.epochs - 1  # the last epoch's loss (Lovasz after the switch)
    loss, parts = compute_loss(model(x), y, epoch, config.train)
    assert torch.isfinite(loss), (name, parts)
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads), name
    assert sum(bool(g.abs().sum() > 0) for g in grads) > len(grads) // 2, "most weights got no gradient"


def test_one_epoch_with_bf16_autocast_on_the_cpu(tiny_config, tiny_data_root, monkeypatch):
    from salt_model.training import fold_loop

    config = tiny_config.with_overrides(
        {"train.epochs": 1, "train.precision": "bf16", "train.eval_tta": False}
    )
    seen = set()

    def watched(cfg):  # the fold's model, its first convolution's output dtypes recorded
        model = build_model(cfg)
        first = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
        first.register_forward_hook(lambda module, args, output: seen.add(output.dtype))
        return model

    monkeypatch.setattr(fold_loop, "build_model", watched)
    data = load_split(tiny_data_root, "train")
    data = data.subset(np.arange(12))  # bf16 on a CPU is slow: one batch of 8 training tiles, 4 held out
    result = train_fold(config, data, 0, device="cpu")
    assert torch.bfloat16 in seen, f"the first convolution ran in {seen}, not bf16"
    last = result.history[-1]
    assert np.isfinite(last["train_loss"]) and 0 <= last["val_map"] <= 1


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")
def test_one_epoch_on_the_gpu(tiny_data_root):
    config = load_config(None, [*TINY, "train.epochs=1"])
    data = load_split(tiny_data_root, "train")
    result = train_fold(config, data, 0, device="cuda")
    assert np.isfinite(result.history[-1]["train_loss"]) and result.history[-1]["val_map"] >= 0
