"""bench/throughput.py times enough steps for a stable figure: warm-up, then min steps and min seconds."""

from __future__ import annotations

import json

import pytest


@pytest.mark.slow
def test_throughput_times_min_steps_and_seconds(tiny_data_root, tmp_path):
    from bench.throughput import main

    out = tmp_path / "throughput.json"
    args = ["--data", str(tiny_data_root), "--device", "cpu", "--out", str(out)]
    args += ["--set", "model.encoder=resnet18", "--set", "model.width=0.125", "--set", "train.threads=1"]
    args += ["--batch-size", "4", "--warmup", "2", "--min-steps", "4", "--min-seconds", "1.5"]
    args += ["--aug-tiles", "40", "--infer-batch-size", "4"]
    assert main(args) == 0
    result = json.loads(out.read_text())
    for name in ("model_step", "pipeline", "inference_tta"):
        fig = result["figures"][name]
        assert fig["steps"] >= 4 and len(fig["step_s"]) == fig["steps"], name
        assert fig["wall_s"] >= 1.5 and fig["images"] == 4 * fig["steps"], name
        assert fig["wall_s"] == pytest.approx(sum(fig["step_s"]), rel=0.01), name
        assert fig["images_per_s_p10"] <= fig["images_per_s"] <= fig["images_per_s_p90"], name
    assert result["load_avg"]["before"] and result["args"]["min_seconds"] == 1.5
